#!/usr/bin/env bash
# Multi-GPU check (issue 6), on one machine with NPROC (default 2) GPUs:
#  1. the tiny pipeline (SFT, then DPO from its output; 3 steps each) on 1 GPU with NPROC accumulation steps, then
#     under each accelerate config on NPROC GPUs with the same global batch and row order, one launch per stage
#     (accelerate takes one DeepSpeed config per process, so `align pipeline` cannot run both under DeepSpeed);
#  2. bench/multi_gpu_compare.py: step losses against the 1-GPU run, each final checkpoint loaded by stock
#     transformers (JetMoeForCausalLM + AutoTokenizer) and generating;
#  3. full-parameter SFT steps of the JetMoE-8B shape (random weights) under ZeRO-3 with gradient checkpointing:
#     tokens/s per GPU and peak memory (bench/jetmoe8b_zero3_sft.py).
# Usage: bash bench/multi_gpu_check.sh [CONFIG ...]   (default: multi_gpu deepspeed_zero2 deepspeed_zero3 fsdp)
# Environment: NPROC, RUNS (output folder, default runs/multi_gpu_check), PYTHON (python3), SKIP_8B=1,
# B8_ARGS (extra arguments for the 8B run, e.g. "--batch 2 --moe_backend torch"), TINY_TIMEOUT / B8_TIMEOUT (s).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false  # the tiny runs need nothing from the hub
NPROC=${NPROC:-2}
RUNS=${RUNS:-runs/multi_gpu_check}
PYTHON=${PYTHON:-python3}
CONFIGS=("$@")
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(multi_gpu deepspeed_zero2 deepspeed_zero3 fsdp)
mkdir -p "$RUNS"
TRAINING=(--max_steps 3 --logging_steps 1 --train_sampling_strategy sequential --per_device_train_batch_size 2)
PORT=29600

# timed NAME SECONDS COMMAND...: run with a time limit, log to $RUNS/NAME.log, print exit status and duration.
timed() {
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" >"$RUNS/$name.log" 2>&1
  echo "$name: exit $?, $((SECONDS - start)) s"
}

launch() {  # launch NAME CONFIG SECONDS ARGS...: accelerate launch on NPROC GPUs
  local name=$1 config=$2 limit=$3
  shift 3
  PORT=$((PORT + 1))
  timed "$name" "$limit" "$PYTHON" -m accelerate.commands.launch \
    --config_file "recipes/accelerate_configs/$config.yaml" --num_processes "$NPROC" --main_process_port "$PORT" "$@"
}

# The 1-GPU reference runs alongside the first config: tiny models, and only their losses are compared.
timed reference "${TINY_TIMEOUT:-240}" env CUDA_VISIBLE_DEVICES=0 "$PYTHON" -m align pipeline \
  recipes/tiny/pipeline.yaml "${TRAINING[@]}" --gradient_accumulation_steps "$NPROC" --output_dir "$RUNS/reference" &
for config in "${CONFIGS[@]}"; do
  launch "$config-sft" "$config" "${TINY_TIMEOUT:-240}" -m align sft recipes/tiny/sft.yaml "${TRAINING[@]}" \
    --gradient_accumulation_steps 1 --output_dir "$RUNS/$config/sft"
  launch "$config-dpo" "$config" "${TINY_TIMEOUT:-240}" -m align dpo recipes/tiny/dpo.yaml "${TRAINING[@]}" \
    --gradient_accumulation_steps 1 --model.name_or_path "$RUNS/$config/sft" --output_dir "$RUNS/$config/dpo"
done
wait
"$PYTHON" bench/multi_gpu_compare.py "$RUNS" reference "${CONFIGS[@]}" 2>"$RUNS/compare.log" | tee "$RUNS/compare.md"

if [ "${SKIP_8B:-0}" != 1 ]; then
  # shellcheck disable=SC2086  # B8_ARGS is a list of arguments
  launch jetmoe8b deepspeed_zero3 "${B8_TIMEOUT:-420}" bench/jetmoe8b_zero3_sft.py --out "$RUNS/jetmoe8b.json" \
    ${B8_ARGS:-}
  cat "$RUNS/jetmoe8b.json" 2>/dev/null || tail -n 30 "$RUNS/jetmoe8b.log"
fi
