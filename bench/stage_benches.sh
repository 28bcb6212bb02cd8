#!/usr/bin/env bash
# The end-to-end stage runs recorded in docs/benchmarks.md ("End-to-end stages"), from the repository root of a
# machine with 2 GPUs. `single`: LoRA SFT and LoRA DPO, ours against stock, one GPU each, side by side. `zero3`:
# full SFT under DeepSpeed ZeRO-3 on both GPUs, each side its own launch. Tables and logs go to OUT_DIR.
#   bash bench/stage_benches.sh single OUT_DIR
#   bash bench/stage_benches.sh zero3 OUT_DIR
set -u
part=${1:?single or zero3}
out=${2:?OUT_DIR}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
bench="bench/bench_stages.py --steps 14 --warmup 3"

run() {  # name, command...: the command's table, or the end of its log if it failed
    local name=$1
    shift
    "$@" --out "$out/$name.json" >"$out/$name.log" 2>&1
    echo "== $name (exit $?)"
    grep -A5 '^| side' "$out/$name.log" || tail -5 "$out/$name.log"
}

case $part in
single)
    # Stock at the micro-batch the recipes shipped before issue 11 (SFT 4 rows, DPO 2 pairs) and, for DPO, at 8
    # pairs, both sides (the recipe's 16 does not fit stock on one GPU: 115 GiB at 8); then ours as shipped.
    (export CUDA_VISIBLE_DEVICES=0
     run sft_lora python3 $bench --stage sft --mode lora --stock-set per_device_train_batch_size=4
     run sft_lora_ours_4rows python3 $bench --stage sft --mode lora --side ours --set per_device_train_batch_size=4) &
    (export CUDA_VISIBLE_DEVICES=1
     run dpo_lora python3 $bench --stage dpo --mode lora --set per_device_train_batch_size=8 \
         --stock-set per_device_train_batch_size=8
     run dpo_lora_ours_16pairs python3 $bench --stage dpo --mode lora --side ours
     run dpo_lora_stock_2pairs python3 $bench --stage dpo --mode lora --side stock --stock-set per_device_train_batch_size=2) &
    wait ;;
zero3)
    # One launch a side: a DeepSpeed engine does not give its GPU memory back within the process.
    launch="accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml --num_processes 2"
    run sft_full_zero3_ours $launch $bench --stage sft --mode full --side ours
    run sft_full_zero3_stock timeout 300 $launch $bench --stage sft --mode full --side stock \
        --stock-set per_device_train_batch_size=4 ;;
esac
