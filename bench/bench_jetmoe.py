"""JetMoE-8B shape, random bf16 weights, one process: transformers' `JetMoeForCausalLM` vs ours (torch, triton).

    PYTHONPATH=. python bench/bench_jetmoe.py                          # 24 layers, batch 4 x 2048, all of it
    PYTHONPATH=. python bench/bench_jetmoe.py --layers 4 --iters 3     # quicker
    PYTHONPATH=. python bench/bench_jetmoe.py --checkpointing          # + ours, gradient checkpointing, 4x longer

Forward is `model(ids)` under `torch.no_grad()`; forward+backward is `model(ids, labels=ids).loss.backward()`
(no optimizer step; gradients set to None between steps, so their memory is counted in the peak). Each model is
built directly on the GPU in bf16, measured, and freed before the next. Both use PyTorch's SDPA attention.

FLOPs per token (causal attention, matmuls only; the standard "model FLOPs" of MFU, recomputation not counted):
    forward = 2 * N_active + 2 * layers * seq * (top_k * kv_heads * head_dim)
    N_active = layers * (2*H*(kv_heads*head_dim) [kv_proj] + 2*top_k*H*(kv_heads*head_dim) [MoA experts]
               + 3*top_k*H*ffn [MLP experts] + 2*H*E [routers]) + H*vocab [lm_head]
    forward+backward = 3 * forward
MFU = achieved FLOP/s / peak (`--peak-tflops`, 989 = H100 SXM dense bf16 datasheet); "of dense" divides by the
rate of an 8192^3 bf16 `torch.matmul` measured in the same process.

Ours with `moe_backend="triton"` runs every Triton kernel: experts, RMSNorm, rotary; "torch" runs none.
"""

import argparse
import gc
import json
import time

import torch

JETMOE_8B = dict(
    hidden_size=2048, num_local_experts=8, num_experts_per_tok=2, num_key_value_heads=16, kv_channels=128,
    intermediate_size=5632, vocab_size=32000, max_position_embeddings=8192,
)  # fmt: skip
GIB = 2**30


def flops_per_token(shape: dict, layers: int, seq: int) -> float:
    """Forward FLOPs per token (see the module docstring); forward+backward is three times this."""
    h, e, k = shape["hidden_size"], shape["num_local_experts"], shape["num_experts_per_tok"]
    attn, ffn = shape["num_key_value_heads"] * shape["kv_channels"], shape["intermediate_size"]
    per_layer = 2 * h * attn + 2 * k * h * attn + 3 * k * h * ffn + 2 * h * e
    active = layers * per_layer + h * shape["vocab_size"]
    return 2 * active + 2 * layers * seq * k * attn


def build(kind: str, shape: dict, layers: int):
    """The model on the GPU in bf16, built there directly (no CPU init, no fp32 copy)."""
    kwargs = dict(shape, num_hidden_layers=layers, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            if kind == "transformers":
                from transformers import JetMoeConfig, JetMoeForCausalLM

                model = JetMoeForCausalLM(JetMoeConfig(**kwargs))
            else:
                from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

                model = JetMoEForCausalLM(JetMoEConfig(**kwargs, moe_backend=kind))
    finally:
        torch.set_default_dtype(previous)
    return model.to(torch.bfloat16)


def time_steps(step, warmup: int, iters: int) -> float:
    """Median seconds per step, CUDA events around each step."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def measure(kind: str, args, seq: int, checkpointing: bool = False, forward: bool = True) -> dict:
    torch.manual_seed(0)
    t0 = time.time()
    model = build(kind, JETMOE_8B, args.layers)
    built_s = time.time() - t0
    ids = torch.randint(0, JETMOE_8B["vocab_size"], (args.batch, seq), device="cuda")
    row = dict(model=kind + (" + grad ckpt" if checkpointing else ""), batch=f"{args.batch}x{seq}", build_s=built_s)
    try:
        if forward:
            model.eval()
            torch.cuda.reset_peak_memory_stats()
            with torch.no_grad():
                row["fwd_s"] = time_steps(lambda: model(ids), args.warmup, args.iters)
            row["fwd_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable()

        def train_step():
            model(ids, labels=ids).loss.backward()
            for param in model.parameters():
                param.grad = None

        torch.cuda.reset_peak_memory_stats()
        row["fwd_bwd_s"] = time_steps(train_step, args.warmup, args.iters)
        row["fwd_bwd_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
    except torch.OutOfMemoryError as err:
        row["error"] = "out of memory: " + str(err).split("\n")[0][:120]
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return row


def dense_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    seconds = time_steps(lambda: a @ b, warmup=5, iters=20)
    return 2 * 8192**3 / seconds / 1e12


def model_table(rows: list[dict], args, dense: float) -> str:
    baseline = next((r for r in rows if r["model"] == "transformers" and "error" not in r), None)
    lines = [
        "| model | batch | fwd tok/s | fwd vs transformers | fwd+bwd tok/s | fwd+bwd vs transformers "
        "| fwd+bwd TFLOP/s | MFU | of dense | peak fwd GiB | peak fwd+bwd GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | {r['error']} |")
            continue
        batch, seq = (int(v) for v in r["batch"].split("x"))
        tokens = batch * seq
        fwd = tokens / r["fwd_s"] if "fwd_s" in r else None
        train = tokens / r["fwd_bwd_s"]
        tflops = 3 * flops_per_token(JETMOE_8B, args.layers, seq) * train / 1e12
        same_batch = baseline is not None and r["batch"] == baseline["batch"]
        fwd_ratio = f"{fwd * baseline['fwd_s'] / tokens:.2f}x" if fwd and same_batch else "-"
        train_ratio = f"{train * baseline['fwd_bwd_s'] / tokens:.2f}x" if same_batch else "-"
        lines.append(
            f"| {r['model']} | {r['batch']} | {f'{fwd:,.0f}' if fwd else '-'} | {fwd_ratio} | {train:,.0f} "
            f"| {train_ratio} | {tflops:.0f} | {100 * tflops / args.peak_tflops:.1f}% | {100 * tflops / dense:.1f}% "
            f"| {r.get('fwd_peak_gib', float('nan')):.1f} | {r['fwd_bwd_peak_gib']:.1f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--models", default="transformers,torch,triton", help="comma list of models to time")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--checkpointing", action="store_true",
                        help="also time ours (triton) fwd+bwd with gradient checkpointing at a 4x longer sequence")
    parser.add_argument("--ckpt-seq-factor", type=int, default=4)
    parser.add_argument("--no-kernels", action="store_true", help="skip the per-kernel table")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak for MFU")
    parser.add_argument("--json", help="also write all numbers here")
    args = parser.parse_args()

    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, layers={args.layers}", flush=True)
    dense = dense_tflops()
    print(f"dense bf16 8192^3 matmul: {dense:.0f} TFLOP/s", flush=True)
    rows = []
    for kind in args.models.split(","):
        rows.append(measure(kind, args, args.seq))
        print(json.dumps(rows[-1]), flush=True)
    if args.checkpointing:
        rows.append(measure("triton", args, args.seq * args.ckpt_seq_factor, checkpointing=True, forward=False))
        print(json.dumps(rows[-1]), flush=True)
    kernel_rows = []
    if not args.no_kernels:
        from bench_kernels import bench_kernels, kernel_table

        kernel_rows = bench_kernels()
    print()
    print(model_table(rows, args, dense))
    if kernel_rows:
        print()
        print(kernel_table(kernel_rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(dense_tflops=dense, args=vars(args), models=rows, kernels=kernel_rows), f, indent=1)


if __name__ == "__main__":
    main()
