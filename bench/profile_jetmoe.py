"""Where a forward+backward step of our JetMoE spends GPU time: torch.profiler's kernel table, grouped by name.

    PYTHONPATH=. python bench/profile_jetmoe.py --layers 4 --backend triton
    PYTHONPATH=. python bench/profile_jetmoe.py --layers 24 --forward       # the no-grad forward alone
"""

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "bench")
from bench_jetmoe import JETMOE_8B, build  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--forward", action="store_true", help="profile `model(ids)` under no_grad instead")
    profile_step(parser.parse_args())


def profile_step(args):
    model = build(args.backend, JETMOE_8B, args.layers).train(not args.forward)
    ids = torch.randint(0, JETMOE_8B["vocab_size"], (args.batch, args.seq), device="cuda")

    def step():
        if args.forward:
            with torch.no_grad():
                model(ids)
            return
        model(ids, labels=ids).loss.backward()
        for param in model.parameters():
            param.grad = None

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    print(category_table(prof))


CATEGORIES = [  # first match wins
    ("expert matmuls (ours)", ("_scatter_mm", "_grouped_dw")),
    ("expert weight gradients (torch grouped GEMM, CUTLASS)", ("enable_3x_kernel_for_sm9x",)),
    ("other expert kernels (ours)", ("_silu_glu", "_combine", "_gate_grad", "_grouped_output_grad")),
    ("fused RMSNorm / rotary (ours)", ("_rmsnorm", "_rotary")),
    ("attention (SDPA)", ("sdpa", "fmha", "flash", "cudnn")),
    ("cuBLAS matmuls (kv_proj, routers, lm_head)", ("nvjet", "gemm", "cutlass", "sm90_xmma")),
    ("softmax / cross-entropy", ("SoftMax", "nll_loss", "log_softmax")),
    ("routing (topk, sort, scans)", ("topk", "Sort", "sort", "scan", "Scan", "bitonic", "gatherTopK")),
    ("copies and concatenation", ("copy", "Copy", "Cat", "Memcpy")),
    ("elementwise and reductions (norms, rotary, residuals, ...)", ("elementwise", "reduce", "Reduce")),
]


def category_table(prof) -> str:
    """CUDA time per category of kernel, from the kernel names."""
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_time_total <= 0:
            continue
        name = event.key
        label = next((cat for cat, keys in CATEGORIES if any(k in name for k in keys)), "other")
        totals[label] = totals.get(label, 0.0) + event.self_device_time_total
    total = sum(totals.values())
    lines = ["| kernels | ms | share |", "|---|---|---|"]
    for label, us in sorted(totals.items(), key=lambda item: -item[1]):
        lines.append(f"| {label} | {us / 1e3:.1f} | {100 * us / total:.1f}% |")
    lines.append(f"| total | {total / 1e3:.1f} | 100% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
