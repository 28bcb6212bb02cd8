"""LoRA forward+backward tokens/s and peak memory at the JetMoE-8B shape: ours vs transformers + PEFT, one process.

Both sides train r=16 (alpha 32) on `kv_proj` and the four expert weights of every layer, bf16, random weights.
Ours: `align.lora` (routed expert LoRA fused into the Triton expert kernels). Theirs: transformers' `JetMoeForCausalLM`
with stock PEFT (`target_modules=["kv_proj"]` + `target_parameters`). A step is
`model(ids, labels=ids).loss.backward()` (no optimizer step, gradients set to None between steps); tokens/s is of
the median of `--steps` steps after `--warmup`; peak = `torch.cuda.max_memory_allocated()`. Each model is built on
the GPU, measured and freed before the next.

    PYTHONPATH=. python bench/bench_lora.py                      # 24 layers, batch 4 x 2048
    PYTHONPATH=. python bench/bench_lora.py --layers 4 --batch 1 # smaller
    PYTHONPATH=. python bench/bench_lora.py --only ours --profile 30  # + the 30 costliest CUDA kernels of a step
    PYTHONPATH=. python bench/bench_lora.py --projections          # one layer's expert projections, ms each
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
    if args.profile:
        print(kernel_table(step, args.profile), flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    return dict(tokens_per_s=round(args.batch * args.seq / seconds), step_s=round(seconds, 4),
                peak_gib=round(peak, 2), trainable_params=trainable)


def kernel_table(step, rows: int) -> str:
    """torch.profiler's table of one step's CUDA kernels, the `rows` costliest: where the step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60)


# One layer's LoRA'd expert projections: (name, weight shape from the model shape, input rows, layout).
PROJECTIONS = [
    ("mlp input", lambda s: (2 * s["intermediate_size"], s["hidden_size"]), "token", dict(grouped_out=True)),
    ("mlp output", lambda s: (s["hidden_size"], s["intermediate_size"]), "slot", dict(grouped_in=True, gated=True)),
    ("moa query", lambda s: (s["num_key_value_heads"] * s["kv_channels"], s["hidden_size"]), "token", {}),
    ("moa output", lambda s: (s["hidden_size"], s["num_key_value_heads"] * s["kv_channels"]), "slot",
     dict(gated=True)),
]  # fmt: skip


def projection_table(shape: dict, args) -> str:
    """GPU kernel time (ms) of each expert projection's forward+backward at one layer's shape, bf16 on Triton, base
    weight frozen, and the kernels of the fused path in launch order (microseconds each).

    Columns: the base matmul alone; with LoRA fused into it (what the model runs); with the LoRA update as separate
    passes (two rank-r matmuls writing a `[T*k, out]` update, added, then combined: the path before the fusion).
    """
    import jetmoe_model  # noqa: F401  first: with PYTHONPATH=. (no install) it makes `jetmoe_kernels` importable
    from jetmoe_kernels import route
    from jetmoe_kernels.lora import ExpertLora, combine_slots, expert_lora_delta, scattered_experts

    num_experts, top_k, tokens = shape["num_local_experts"], shape["num_experts_per_tok"], args.batch * args.seq
    table = ["| projection | base ms | + LoRA fused ms | + LoRA separate ms |", "|---|---|---|---|"]
    listings = []
    for name, weight_shape, rows, layout in PROJECTIONS:
        out_size, in_size = weight_shape(shape)
        layout = dict(layout)
        gated = layout.pop("gated", False)
        routing = route(torch.randn(tokens, num_experts, device="cuda"), top_k, torch.bfloat16)
        gates = routing.gates.requires_grad_() if gated else None
        x = torch.randn(tokens * (top_k if rows == "slot" else 1), in_size, device="cuda", dtype=torch.bfloat16,
                        requires_grad=True)  # fmt: skip
        weight = torch.randn(num_experts, out_size, in_size, device="cuda", dtype=torch.bfloat16) * 0.02
        factors = [torch.randn(size, device="cuda").mul_(0.02).requires_grad_()  # float32, as PEFT keeps them
                   for size in [(num_experts, args.rank, in_size), (num_experts, out_size, args.rank)]]  # fmt: skip
        lora = ExpertLora(*factors, scaling=2.0)

        def base():
            return scattered_experts(x, weight, routing, **layout, gates=gates, backend="triton")

        def fused():
            return scattered_experts(x, weight, routing, **layout, gates=gates, backend="triton", lora=lora)

        def separate():
            y = scattered_experts(x, weight, routing, **layout, backend="triton")
            y = y + expert_lora_delta(x, lora.A, lora.B, lora.scaling, routing, **layout, backend="triton")
            return y if gates is None else combine_slots(y, gates, "triton")

        inputs = (x, *factors) + ((gates,) if gated else ())
        grad_out = torch.randn_like(base().detach())
        kernels = {fn.__name__: kernel_times(lambda fn=fn: torch.autograd.grad(fn(), inputs, grad_out,
                                                                                allow_unused=True))
                   for fn in (base, fused, separate)}  # fmt: skip
        table.append(f"| {name} | " + " | ".join(f"{sum(us for _, us in kernels[fn]) / 1e3:.3f}"
                                                 for fn in ("base", "fused", "separate")) + " |")  # fmt: skip
        listings.append(f"{name}, fused: " + ", ".join(f"{kernel} {us:.0f}" for kernel, us in kernels["fused"]))
    return "\n".join(table + [""] + listings)


def kernel_times(fn, repeats: int = 5) -> list[tuple[str, float]]:
    """`(kernel name, mean microseconds)` of the CUDA kernels one call of `fn` launches, in launch order."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):  # compile, warm up
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    kernels = [(event.name[:40], event.time_range.elapsed_us()) for event in prof.events()
               if event.device_type == DeviceType.CUDA]  # fmt: skip
    per_call = len(kernels) // repeats
    return [(kernels[i][0], sum(us for _, us in kernels[i::per_call]) / repeats) for i in range(per_call)]


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
    parser.add_argument("--projections", action="store_true",
                        help="only time one layer's expert projections: base, + LoRA fused, + LoRA separate")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="after timing, print the ROWS costliest CUDA kernels of one step (GPU only)")
    args = parser.parse_args()

    import peft
    import transformers

    shape = {**JETMOE_8B, "num_hidden_layers": args.layers, **args.shape}
    print(json.dumps(dict(device=torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                          torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                          batch=args.batch, seq=args.seq, rank=args.rank, shape=shape)), flush=True)
    if args.projections:
        print(projection_table(shape, args), flush=True)
        return
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
