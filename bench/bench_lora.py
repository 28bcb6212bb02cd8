"""LoRA forward+backward tokens/s and peak memory at the JetMoE-8B shape: ours vs transformers + PEFT, one process.

Both sides train r=16 (alpha 32) on `kv_proj` and the four expert weights of every layer, bf16, random weights.
Ours: `align.lora` (routed expert LoRA on the Triton expert kernels). Theirs: transformers' `JetMoeForCausalLM`
with stock PEFT (`target_modules=["kv_proj"]` + `target_parameters`). A step is
`model(ids, labels=ids).loss.backward()` (no optimizer step, gradients set to None between steps); tokens/s is of
the median of `--steps` steps after `--warmup`; peak = `torch.cuda.max_memory_allocated()`. Each model is built on
the GPU, measured and freed before the next.

    PYTHONPATH=. python bench/bench_lora.py                      # 24 layers, batch 4 x 2048
    PYTHONPATH=. python bench/bench_lora.py --layers 4 --batch 1 # smaller
"""

import argparse
import gc
import json
import statistics
import time

import torch

JETMOE_8B = dict(
    hidden_size=2048, num_local_experts=8, num_experts_per_tok=2, num_key_value_heads=16, kv_channels=128,
    intermediate_size=5632, vocab_size=32000, max_position_embeddings=4096,
)  # fmt: skip
EXPERT_WEIGHTS = ["experts.input_linear", "experts.output_linear", "mlp.input_linear", "mlp.output_linear"]


def ours(shape: dict, rank: int, backend: str):
    from align.lora.adapters import add_lora
    from align.lora.arguments import LoraArguments
    from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

    config = JetMoEConfig(**shape, moe_backend=backend, attn_implementation="sdpa")
    return add_lora(JetMoEForCausalLM(config), LoraArguments(r=rank, alpha=2 * rank))


def transformers_peft(shape: dict, rank: int, backend: str):
    from peft import LoraConfig, get_peft_model
    from transformers import JetMoeConfig, JetMoeForCausalLM

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["kv_proj"],
                        target_parameters=[f"{name}.weight" for name in EXPERT_WEIGHTS])
    return get_peft_model(JetMoeForCausalLM(JetMoeConfig(**shape, attn_implementation="sdpa")), config)


def measure(build, shape: dict, args) -> dict:
    """Tokens/s of the median of `args.steps` forward+backward steps after `args.warmup`, and the peak memory."""
    device = torch.device(args.device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch.set_default_dtype(torch.bfloat16)
    with device:
        model = build(shape, args.rank, args.backend).train()
    torch.set_default_dtype(torch.float32)
    ids = torch.randint(0, shape["vocab_size"], (args.batch, args.seq), device=device)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    return dict(tokens_per_s=round(args.batch * args.seq / seconds), step_s=round(seconds, 4),
                peak_gib=round(peak, 2), trainable_params=trainable)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--backend", default="triton", help="our expert backend: triton (GPU) or torch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=["ours", "transformers_peft"], help="run one side only")
    parser.add_argument("--shape", type=json.loads, default={}, help="JSON overrides of the model shape")
    args = parser.parse_args()

    import peft
    import transformers

    shape = {**JETMOE_8B, "num_hidden_layers": args.layers, **args.shape}
    print(json.dumps(dict(device=torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                          torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                          batch=args.batch, seq=args.seq, rank=args.rank, shape=shape)), flush=True)
    results = {}
    for name, build in (("ours", ours), ("transformers_peft", transformers_peft)):
        if args.only and args.only != name:
            continue
        try:
            results[name] = measure(build, shape, args)
        except torch.OutOfMemoryError as error:
            results[name] = dict(error=f"out of memory: {str(error).splitlines()[0]}")
        print(json.dumps({name: results[name]}), flush=True)
    if all("tokens_per_s" in results.get(name, {}) for name in ("ours", "transformers_peft")):
        speedup = results["ours"]["tokens_per_s"] / results["transformers_peft"]["tokens_per_s"]
        print(json.dumps(dict(speedup=round(speedup, 2))), flush=True)


if __name__ == "__main__":
    main()
