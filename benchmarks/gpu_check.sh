#!/usr/bin/env bash
# What only a GPU can check, in one go (under 8 minutes on one H100):
#
#     bash benchmarks/gpu_check.sh            # from the repository root, with r1lab installed
#     PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
#
# 1. the GPU-only tests (pytest -m gpu: bf16 log-probs and sampling on CUDA, SDPA flash and
#    memory-efficient kernels against eager attention, FSDP on one GPU with and without CPU
#    offload, resumed; a bf16 FSDP step; vLLM rollouts where vllm is installed);
# 2. one GRPO step of a random Qwen2.5-0.5B-shape model (benchmarks/gpu_step.py): fp32, bf16-mixed, bf16
#    (bf16 weights) and FSDP with bf16-mixed, each its peak GPU memory and tokens/s.
# Then a summary. Without CUDA every part says so and the script exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
LOG=$(mktemp -d)
start=$SECONDS

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU here; nothing to check (the gpu tests skip, the step needs a GPU)"
    exit 0
fi
"$PYTHON" -c "import torch; print('gpu_check:', torch.cuda.get_device_name(), '| torch', torch.__version__, \
'| CUDA', torch.version.cuda, '| bf16', torch.cuda.is_bf16_supported())"

echo "== 1/2 GPU-only tests (limit 300 s)"
timeout 300 "$PYTHON" -m pytest -m gpu tests -q -rs -p no:cacheprovider 2>&1 | tee "$LOG/tests.txt"
tests_rc=${PIPESTATUS[0]}

echo "== 2/2 Qwen2.5-0.5B-shape GRPO step (limit 160 s)"
timeout 160 "$PYTHON" benchmarks/gpu_step.py 2>&1 | tee "$LOG/step.txt"
step_rc=${PIPESTATUS[0]}

echo
echo "== summary ($((SECONDS - start)) s)"
echo "tests: $(grep -E '[0-9]+ (passed|failed|skipped)' "$LOG/tests.txt" | tail -1) (exit $tests_rc)"
grep -E '^  (fp32|bf16|fsdp)' "$LOG/step.txt" || echo "step: no results (exit $step_rc)"
[ "$tests_rc" = 0 ] && [ "$step_rc" = 0 ]
