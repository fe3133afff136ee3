#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one command on a CUDA machine (the device tool runs it as is).
# Needs trl/datasets wheels in .whl/ where the image lacks them (see docs/benchmarks.md).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:.
else
  export PYTHONPATH=.
fi
OUT=${OUT:-benchmarks/results}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -5
python3 benchmarks/bench_generation.py --model qwen3-4b-random --batch 64 --n-prompts 128 --new 128 --single 2 2>&1 | grep -v Warning
python3 benchmarks/bench_extract.py --model qwen3-4b-random --batch 16 --length 512 --n 128 2>&1 | grep -v Warning
python3 benchmarks/bench_rl_step.py --model qwen3-4b-random --prompts-per-step 2 --group 8 --new 128 --steps 3 2>&1 | grep -vE "Warning|warn" | tail -8
cp benchmarks/results/*-gpu.json "$OUT"/ 2>/dev/null || true
