"""Full-parameter SFT steps of the real JetMoE-8B shape (random weights) under DeepSpeed ZeRO-3, with gradient
checkpointing and bf16, through our SFT trainer (router losses included): does it fit, and how fast is it?

    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml --num_processes 2 \\
        bench/jetmoe8b_zero3_sft.py --steps 6 --warmup_steps 2 --batch 4 --seq_len 2048 --out RESULT.json

The config is align/assets/jetmoe-8b/config.json (24 layers, hidden 2048, 8 experts top-2, 16 KV heads x 128,
ffn 5632, vocab 32000); no hub access. The model is built sharded (`zero.Init`), so no rank ever holds all
8.5B parameters. Rows are random token ids of exactly `seq_len`, so every step trains on `batch * seq_len` tokens
per GPU; tokens/s per GPU is measured over the steps after `warmup_steps` (Triton compilation, ZeRO-3's trace).
"""

import argparse
import json
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTConfig

from align.model.tokenizer import load_tokenizer
from align.training.distributed import prepare_for_sharding
from align.training.sft import sft_trainer
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

CONFIG = "align/assets/jetmoe-8b"
TOKENIZER = "recipes/tiny/tokenizer"  # only for its pad token: the rows are token ids already


class StepClock(TrainerCallback):
    """Wall time at the end of each optimizer step, after the GPU has finished it."""

    def __init__(self):
        self.ends = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4, help="rows per GPU per step")
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--moe_backend", default="auto")
    parser.add_argument("--config", default=CONFIG, help="a folder with a JetMoE config.json (another shape)")
    parser.add_argument("--out", default="runs/jetmoe8b_zero3_sft.json")
    cli = parser.parse_args()

    args = SFTConfig(  # created first: it tells transformers that ZeRO-3 is on, so the model is built sharded
        output_dir="runs/jetmoe8b_zero3_sft", max_steps=cli.steps, per_device_train_batch_size=cli.batch,
        gradient_accumulation_steps=1, learning_rate=1e-5, lr_scheduler_type="constant", bf16=True,
        activation_checkpointing=True, max_length=cli.seq_len, logging_steps=1, save_strategy="no", report_to="none",
        train_sampling_strategy="sequential", seed=0, use_cpu=not torch.cuda.is_available(),  # CPU: a smoke test
    )
    config = JetMoEConfig.from_pretrained(cli.config, moe_backend=cli.moe_backend)
    model = JetMoEForCausalLM._from_config(config, dtype=torch.bfloat16)
    prepare_for_sharding(model)

    generator = torch.Generator().manual_seed(0)
    rows = cli.steps * cli.batch * args.world_size
    ids = torch.randint(3, config.vocab_size, (rows, cli.seq_len), generator=generator)
    dataset = Dataset.from_dict({"input_ids": ids.tolist()})

    clock = StepClock()
    trainer = sft_trainer(args, model, load_tokenizer(TOKENIZER), dataset)
    trainer.add_callback(clock)
    trainer.train()

    timed = clock.ends[cli.warmup_steps:]
    seconds = timed[-1] - timed[0]
    tokens_per_gpu = cli.batch * cli.seq_len * (len(timed) - 1)
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=trainer.accelerator.device)
    result = {
        "gpus": args.world_size,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "parameters_billion": sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()) / 1e9,
        "batch_per_gpu": cli.batch,
        "seq_len": cli.seq_len,
        "moe_backend": cli.moe_backend,
        "timed_steps": len(timed) - 1,
        "seconds_per_step": seconds / (len(timed) - 1),
        "tokens_per_s_per_gpu": tokens_per_gpu / seconds,
        "peak_memory_gib_max_over_gpus": trainer.accelerator.gather(peak).max().item(),
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    if trainer.is_world_process_zero():
        print(json.dumps(result, indent=1))
        with open(cli.out, "w") as file:
            json.dump(result, file, indent=1)


if __name__ == "__main__":
    main()
