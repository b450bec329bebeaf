#!/usr/bin/env bash
# The other supported jax versions (pyproject: >=0.10.2,<0.13) on Python 3.12 (jax >= 0.11 has no 3.11
# wheels): for each, a venv with that version's CUDA plugin (.venv-jax011, .venv-jax012; only these checks
# use them), then the tiny main job, tests/test_lowering.py and the cheapest compile tests that still see
# what a new XLA changes (the baseline at 8 H100s: SPMD, collectives, memory, FLOPs; the CPU-only FFI case).
# ~2 min a version once installed. Not in .ci/run yet: with it CI would pass 30 minutes (issue 26 note).
# Usage: scripts/check_jax_versions.sh [VERSION ...]   (default: 0.11.2 0.12.0.1)
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
versions=("$@")
[ $# -gt 0 ] || versions=(0.11.2 0.12.0.1)
py312=
for c in python3.12 "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python; do
  # pyenv's shim exists but fails unless 3.12 is selected: take the first that runs as 3.12
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py312=$c; break; fi
done
[ -n "$py312" ] || { echo "error: check_jax_versions: no Python 3.12 (python3.12 or pyenv's)" >&2; exit 1; }
for jv in "${versions[@]}"; do
  start=$SECONDS
  v=".venv-jax$(echo "$jv" | cut -d. -f1-2 | tr -d .)"  # 0.12.0.1 -> .venv-jax012
  [ -x "$v/bin/python" ] || "$py312" -m venv "$v"
  "$v/bin/pip" install -q -e '.[test]' "jax==$jv" "jax-cuda13-plugin==$jv" "jax-cuda13-pjrt==$jv"
  out=$(mktemp -d)
  "$v/bin/python" run.py --config configs/tiny.py train.out_dir="$out/tiny"
  "$v/bin/python" -m pytest -q tests/test_lowering.py
  PGOLF_TEST_FULL_OPT=1 "$v/bin/python" -m pytest -q -m compile tests/test_compile.py -k 'baseline_sp1024-8 or ffi'
  echo "jax $jv: $((SECONDS - start)) s"
done
