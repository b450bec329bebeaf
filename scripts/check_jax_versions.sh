#!/usr/bin/env bash
# The other supported jax versions (pyproject: >=0.10.2,<0.13) on Python 3.12 (jax >= 0.11 has no 3.11
# wheels): for each, a venv with that version's CUDA plugin (.venv-jax011, .venv-jax012; only these checks
# use them), then the tiny main job, tests/test_lowering.py and the compile tests that still see what a new
# XLA changes at little cost (a CPU-only FFI kernel refused by the GPU compiler, the one-H100 fit of the
# tiny preset's programs). .ci/run installs while the main suite runs (--install) and
# checks after its compile step (--check); without a flag the script does both. The versions' checks run
# side by side.
# Usage: scripts/check_jax_versions.sh [--install | --check] [VERSION ...]   (default: 0.11.2 0.12.0.1)
set -euo pipefail
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu
install=1 check=1
case "${1:-}" in
  --install) check=0; shift ;;
  --check) install=0; shift ;;
esac
versions=("$@")
[ $# -gt 0 ] || versions=(0.11.2 0.12.0.1)
py312=
for c in python3.12 "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python; do
  # pyenv's shim exists but fails unless 3.12 is selected: take the first that runs as 3.12
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py312=$c; break; fi
done
[ -n "$py312" ] || { echo "error: check_jax_versions: no Python 3.12 (python3.12 or pyenv's)" >&2; exit 1; }
check_one() {  # the checks of one installed version (its venv), run from the repository root
  local jv=$1 v=$2 start=$SECONDS got out
  [ -x "$v/bin/python" ] || { echo "error: check_jax_versions: no $v: run it with --install first" >&2; return 1; }
  got=$("$v/bin/python" -c "import importlib.metadata as m; print(m.version('jax'))")
  [ "$got" = "$jv" ] || { echo "error: check_jax_versions: $v has jax $got, not $jv" >&2; return 1; }
  out=$(mktemp -d)
  "$v/bin/python" run.py --config configs/tiny.py train.out_dir="$out/tiny"
  # one pytest worker each: the versions run side by side on the machine's cores
  "$v/bin/python" -m pytest -q -p no:cacheprovider -n 0 tests/test_lowering.py
  PGOLF_TEST_FULL_OPT=1 "$v/bin/python" -m pytest -q -p no:cacheprovider -n 0 -m compile tests/test_compile.py \
    -k 'ffi or tiny_fits'
  rm -rf "$out"
  echo "jax $jv: $((SECONDS - start)) s"
}

logs=() pids=()
for jv in "${versions[@]}"; do
  v=".venv-jax$(echo "$jv" | cut -d. -f1-2 | tr -d .)"  # 0.12.0.1 -> .venv-jax012
  if [ "$install" = 1 ]; then
    [ -x "$v/bin/python" ] || "$py312" -m venv "$v"
    "$v/bin/pip" install -q --no-compile -e '.[test]' "jax==$jv" "jax-cuda13-plugin==$jv" "jax-cuda13-pjrt==$jv"
  fi
  [ "$check" = 1 ] || continue
  # The versions' checks are mostly single-threaded XLA compiles: they run concurrently, one log each.
  log=$(mktemp)
  check_one "$jv" "$v" >"$log" 2>&1 &
  logs+=("$log") pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || failed=1
  cat "${logs[$i]}"
  rm -f "${logs[$i]}"
done
[ "$failed" = 0 ] || { echo "error: check_jax_versions: a version's checks failed (its log above)" >&2; exit 1; }
