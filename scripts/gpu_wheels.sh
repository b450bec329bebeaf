#!/usr/bin/env bash
# Wheels for the packages the lent H200 image lacks (python 3.12, x86_64), into .whl/ (ignored by
# git): zstandard, brotli, pyppmd, python-minifier. Run here before a device call; carry `.whl` and set
# WHEELS=.whl for scripts/gpu_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl zstandard==0.25.0 brotli pyppmd python-minifier==3.4.0
ls -la .whl
