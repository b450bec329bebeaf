#!/usr/bin/env bash
# One call on a GPU machine (issue 17): the GPU tests, then our train step against the reference's
# train_gpt.py on the same GPU at the challenge's per-GPU shapes; then (issue 26) the baseline's train
# step compiled on the GPU beside run.py compile's deviceless compile of it (memory_analysis of both),
# the GPU's true XLA target config and a 3-step profiler trace. Everything is printed and kept in
# OUT_DIR (default $OUT, else gpu_check_out): tests.txt, bench_*.txt, env.txt, compile_check.txt,
# compile_vs_device.json, target_config_{real,shipped}.txtpb, trace/.
#
#   scripts/gpu_check.sh [OUT_DIR]
#
# Environment (all optional):
#   PGOLF_REFERENCE_TRAIN_GPT   the reference train_gpt.py (openai/parameter-golf): timed with
#                               torch.compile and bf16 autocast on the same shapes
#   WHEELS                      a folder of wheels for packages the machine lacks (zstandard, brotli,
#                               python-minifier: scripts/gpu_wheels.sh fetches them), installed to /tmp/site
#   PGOLF_SHARED_DATA           a folder holding nlp-corpus/docs_selected.jsonl (the tests' sample data)
#   STEPS                       timed steps per bench (default 5, after 2 warm-up steps)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check_out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
STEPS=${STEPS:-5}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import sys, jax, flax, optax; print('python', sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1
} 2>&1 | tee "$OUT/env.txt"

echo "== GPU tests"
python3 -m pytest -q -x tests/test_gpu.py tests/test_export.py -p no:cacheprovider 2>&1 | tee "$OUT/tests.txt"

REF=()
if [ -n "${PGOLF_REFERENCE_TRAIN_GPT:-}" ]; then REF=(--vs-torch-reference "$PGOLF_REFERENCE_TRAIN_GPT" --torch-compile); fi
# The baseline on one of the 8 GPUs: 524,288 tokens a step = 8 micro-steps of 64 x 1024 (65,536).
echo "== bench baseline_sp1024 (8 x 64 x 1024 tokens a step)"
python3 run.py bench --config configs/baseline_sp1024.py --batch 64 --seq 1024 --micro 8 --steps "$STEPS" \
  --warmup 2 --no-xla-flops --parts "${REF[@]}" 2>&1 | tee "$OUT/bench_baseline.txt"
# record_1809 on one of 8 GPUs: its 786,432-token step is 48 x 2048 per GPU, one micro-step.
echo "== bench record_1809 (48 x 2048 tokens a step, one GPU's share)"
python3 run.py bench --config configs/record_1809.py --batch 48 --seq 2048 --micro 1 --steps "$STEPS" \
  --warmup 2 --no-xla-flops 2>&1 | tee "$OUT/bench_record_1809.txt"
# The deviceless compile (the CUDA plugin the GPU image carries) against the real one, same program.
echo "== compile on the GPU vs deviceless, real target config, 3-step trace"
python3 scripts/gpu_compile_check.py "$OUT" configs/baseline_sp1024.py configs/record_1809.py 2>&1 \
  | tee "$OUT/compile_check.txt"
echo "== done: $OUT"
