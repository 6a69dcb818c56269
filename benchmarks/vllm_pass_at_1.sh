#!/usr/bin/env bash
# Done-when of issue 16: R1-Zero on the micro base model raises held-out pass@1 with
# rollout_backend=vllm as with the native sampler (docs/vllm.md, "Does it learn?").
#
#     make install install-vllm
#     bash benchmarks/vllm_pass_at_1.sh              # seed 0, 100 steps, each backend in turn
#     STEPS=100 bash benchmarks/vllm_pass_at_1.sh 0 1 # more seeds
#     PARALLEL=1 bash benchmarks/vllm_pass_at_1.sh    # both backends at once (2 cores)
#
# The base model is runs/micro/base/final, pretrained here with .venv if missing, with
# PRETRAIN_ARGS added to recipes/micro/pretrain.yaml (e.g. PRETRAIN_ARGS=num_examples=30000 for
# a third of the corpus: 330 steps instead of 986). Each run is
# `r1lab grpo recipes/micro/r1_zero.yaml` with seed, max_steps and output_dir set, one thread;
# the vLLM runs add rollout_backend=vllm and run in .venv-vllm. Held-out pass@1 is r1lab's own
# evaluation (the native sampler, same for both backends) at step 0, every EVAL_EVERY (50) steps
# and at the last step.
# Runs go to runs/vllm_pass_at_1/<backend>-seed<S>/; the summary prints at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
STEPS=${STEPS:-100}
SEEDS=("${@:-0}")
ROOT=runs/vllm_pass_at_1

if [ ! -f runs/micro/base/final/config.json ]; then
    echo "== pretraining the micro base model (runs/micro/base/final)"
    # shellcheck disable=SC2086  # PRETRAIN_ARGS: key=value words
    .venv/bin/r1lab pretrain recipes/micro/pretrain.yaml ${PRETRAIN_ARGS:-}
fi

run() {  # backend seed python-env extra-args...
    local backend=$1 seed=$2 venv=$3
    shift 3
    local out=$ROOT/$backend-seed$seed
    echo "== $backend, seed $seed, $STEPS steps -> $out"
    local start=$SECONDS
    "$venv/bin/r1lab" grpo recipes/micro/r1_zero.yaml seed="$seed" max_steps="$STEPS" eval_every="${EVAL_EVERY:-50}" \
        save_every=0 threads=1 progress=false output_dir="$out" overwrite=true "$@"
    echo "$backend seed $seed: $((SECONDS - start)) s" >> "$ROOT/times.txt"
}

mkdir -p "$ROOT"
for seed in "${SEEDS[@]}"; do
    if [ "${PARALLEL:-0}" = 1 ]; then  # both backends at once, one thread each (times then overlap)
        run native "$seed" .venv > "$ROOT/native-seed$seed.log" 2>&1 &
        run vllm "$seed" .venv-vllm rollout_backend=vllm > "$ROOT/vllm-seed$seed.log" 2>&1 &
        wait
    else
        run native "$seed" .venv
        run vllm "$seed" .venv-vllm rollout_backend=vllm
    fi
done

.venv/bin/python - "$ROOT" <<'PY'
import json, sys
from pathlib import Path

root = Path(sys.argv[1])
for run in sorted(p for p in root.iterdir() if (p / "metrics.jsonl").is_file()):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if any(k.endswith("/pass@1") for k in r)]
    for key in sorted(k for k in evals[0] if k.endswith("/pass@1")):
        points = " -> ".join(f"{100 * r[key]:.1f} (step {r['step']})" for r in evals if key in r)
        print(f"{run.name}: {key} % {points}")
PY
cat "$ROOT/times.txt"
