"""Each Triton expert kernel alone against its PyTorch reference, at the JetMoE-8B shape (bf16, one layer's tokens).

    PYTHONPATH=. python bench/bench_kernels.py             # kernels vs reference, markdown table
    PYTHONPATH=. python bench/bench_kernels.py --sweep     # also time candidate tile configs of the matmul kernels

Times are medians of `triton.testing.do_bench` (CUDA events). TFLOP/s counts the matmul FLOPs only
(forward `2 * rows * N * K`, backward twice that).
"""

import argparse

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import jetmoe_model  # noqa: F401  first: with PYTHONPATH=. (no install) it makes `jetmoe_kernels` importable
import jetmoe_kernels
from jetmoe_kernels import grouped_dw as dw_module
from jetmoe_kernels import scatter_matmul as mm_module
from jetmoe_kernels.combine import scattered_matmul_combine
from jetmoe_kernels.glu import scattered_matmul_silu_glu, silu_glu
from jetmoe_kernels.scatter_matmul import scatter_mm, scattered_matmul
from jetmoe_kernels.schedule import routing_index
from jetmoe_kernels.topk_gates import top_k_gates

SHAPE = dict(tokens=8192, hidden=2048, ffn=5632, attn=2048, experts=8, top_k=2)


def _median_ms(fn) -> float:
    return do_bench(fn, warmup=50, rep=200, return_mode="median")


def _fwd_bwd(fn, inputs):
    def run():
        out = fn()
        torch.autograd.backward(out, torch.ones_like(out))
        for tensor in inputs:
            tensor.grad = None

    return run


def make_inputs(shape=SHAPE, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    t, h, f, a, e, k = (shape[n] for n in ("tokens", "hidden", "ffn", "attn", "experts", "top_k"))

    def rand(*size, scale=1.0):
        return (torch.randn(*size, device="cuda", generator=gen) * scale).bfloat16().requires_grad_()

    logits = torch.randn(t, e, device="cuda", generator=gen)
    return dict(
        routing=jetmoe_kernels.route(logits, k, torch.bfloat16), router_logits=logits.clone().requires_grad_(),
        x=rand(t, h), slots=rand(t * k, a), grouped_h=rand(t * k, f), ab=rand(t * k, 2 * f, scale=2.0),
        w_in=rand(e, 2 * f, h, scale=0.02), w_out=rand(e, h, f, scale=0.02),
        w_q=rand(e, a, h, scale=0.02), w_o=rand(e, h, a, scale=0.02),
    )  # fmt: skip


def glu_reference(ab):
    a, b = ab.chunk(2, -1)
    return F.silu(a) * b


def kernel_cases(inp):
    """name -> (triton fn, reference fn, inputs needing grad, forward matmul FLOPs)."""
    r, x, slots, hid, ab = inp["routing"], inp["x"], inp["slots"], inp["grouped_h"], inp["ab"]
    w_in, w_out, w_q, w_o = inp["w_in"], inp["w_out"], inp["w_q"], inp["w_o"]
    rows = r.sorted_slots.shape[0]
    ix = routing_index(r)
    ref = jetmoe_kernels.scattered_experts_reference
    logits = inp["router_logits"]
    return {
        "router top-k gates": (
            lambda: top_k_gates(logits, r.top_k, torch.bfloat16)[0],
            lambda: torch.softmax(logits.topk(r.top_k, dim=-1)[0], dim=-1).bfloat16(), (logits,), 0),
        "mlp input (token->grouped)": (
            lambda: scattered_matmul(x, w_in, ix, grouped_out=True),
            lambda: ref(x, w_in, r, grouped_out=True), (x, w_in), 2 * rows * w_in.shape[1] * w_in.shape[2]),
        "SiLU-GLU": (lambda: silu_glu(ab), lambda: glu_reference(ab), (ab,), 0),
        "mlp input + SiLU-GLU epilogue": (
            lambda: scattered_matmul_silu_glu(x, w_in, ix),
            lambda: glu_reference(ref(x, w_in, r, grouped_out=True)), (x, w_in),
            2 * rows * w_in.shape[1] * w_in.shape[2]),
        "mlp output + gate combine": (
            lambda: scattered_matmul_combine(hid, w_out, r.gates, ix, grouped_in=True),
            lambda: ref(hid, w_out, r, grouped_in=True, gates=r.gates), (hid, w_out),
            2 * rows * w_out.shape[1] * w_out.shape[2]),
        "MoA query (token->slot)": (
            lambda: scattered_matmul(x, w_q, ix), lambda: ref(x, w_q, r), (x, w_q),
            2 * rows * w_q.shape[1] * w_q.shape[2]),
        "MoA output + gate combine": (
            lambda: scattered_matmul_combine(slots, w_o, r.gates, ix), lambda: ref(slots, w_o, r, gates=r.gates),
            (slots, w_o), 2 * rows * w_o.shape[1] * w_o.shape[2]),
        "whole expert MLP": (
            lambda: jetmoe_kernels.expert_mlp(x, w_in, w_out, r, F.silu, backend="triton"),
            lambda: jetmoe_kernels.expert_mlp(x, w_in, w_out, r, F.silu, backend="torch"), (x, w_in, w_out),
            2 * rows * (w_in.shape[1] * w_in.shape[2] + w_out.shape[1] * w_out.shape[2])),
    }  # fmt: skip


def bench_kernels(shape=SHAPE) -> list[dict]:
    inp = make_inputs(shape)
    results = []
    for name, (ours, reference, needs_grad, flops) in kernel_cases(inp).items():
        row = dict(kernel=name)
        for label, fn in (("triton", ours), ("torch", reference)):
            with torch.no_grad():
                row[f"{label}_fwd_ms"] = _median_ms(fn)
            row[f"{label}_fwd_bwd_ms"] = _median_ms(_fwd_bwd(fn, needs_grad))
        if flops:
            row["triton_fwd_tflops"] = flops / row["triton_fwd_ms"] / 1e9
            row["triton_fwd_bwd_tflops"] = 3 * flops / row["triton_fwd_bwd_ms"] / 1e9
        results.append(row)
    return results


def kernel_table(results: list[dict]) -> str:
    lines = [
        "| kernel | triton fwd ms | torch fwd ms | fwd speed-up | triton fwd+bwd ms | torch fwd+bwd ms "
        "| fwd+bwd speed-up | triton TFLOP/s fwd / fwd+bwd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        tflops = f"{r['triton_fwd_tflops']:.0f} / {r['triton_fwd_bwd_tflops']:.0f}" if "triton_fwd_tflops" in r else "-"
        lines.append(
            f"| {r['kernel']} | {r['triton_fwd_ms']:.3f} | {r['torch_fwd_ms']:.3f} "
            f"| {r['torch_fwd_ms'] / r['triton_fwd_ms']:.2f}x | {r['triton_fwd_bwd_ms']:.3f} "
            f"| {r['torch_fwd_bwd_ms']:.3f} | {r['torch_fwd_bwd_ms'] / r['triton_fwd_bwd_ms']:.2f}x | {tflops} |"
        )
    return "\n".join(lines)


# Sweeps on an H100 (2026-11-23): 128x128x64/8 warps/4 stages gave 448-536 TFLOP/s, 128x256x64/8/3-4 510-613,
# 64- or 32-wide tiles and 4 warps less; the grouped dW best at 64x128x128/8/3 (381-470; 274 when it also scaled
# dy by the gate inside its loop, since dropped). Loading dy as its transpose, 256-wide or 128-row dW tiles: no gain.
MM_CANDIDATES = [
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3),
]
DW_CANDIDATES = [
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, num_warps=4, num_stages=3),
    dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=256, BLOCK_K=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=256, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4),
]


def sweep(shape=SHAPE) -> str:
    """TFLOP/s of each candidate tile config on each matmul the model runs (forward, input grad, weight grad)."""
    inp = make_inputs(shape)
    ix = routing_index(inp["routing"])
    x, hid, slots = inp["x"].detach(), inp["grouped_h"].detach(), inp["slots"].detach()
    rows = ix.slot_rows.shape[0]
    dy_grouped = x.repeat(2, 1)  # [T*k, hidden] stands in for the combine's gradient in grouped order
    mm_cases = {
        "mlp_in fwd": (lambda: scatter_mm(x, inp["w_in"], ix, ix.token_rows, None, rows), inp["w_in"]),
        "mlp_in dX": (lambda: scatter_mm(inp["ab"].detach(), inp["w_in"], ix, None, ix.slot_rows, rows,
                                         transpose_weight=True), inp["w_in"]),
        "mlp_out fwd": (lambda: scatter_mm(hid, inp["w_out"], ix, None, ix.slot_rows, rows), inp["w_out"]),
        "mlp_out dX": (lambda: scatter_mm(dy_grouped, inp["w_out"], ix, None, None, rows, transpose_weight=True),
                       inp["w_out"]),
        "moa_q fwd": (lambda: scatter_mm(x, inp["w_q"], ix, ix.token_rows, ix.slot_rows, rows), inp["w_q"]),
    }  # fmt: skip
    dw_operands = {  # (x, dy, weight, x_rows, dy_rows)
        "mlp_in dW": (x, inp["ab"].detach(), inp["w_in"], ix.token_rows, None),
        "mlp_out dW": (hid, dy_grouped, inp["w_out"], None, None),
        "moa dW": (x, slots.detach(), inp["w_q"], ix.token_rows, ix.slot_rows),
    }

    def kernel_dw(x, dy, weight, x_rows, dy_rows):
        return lambda: dw_module.grouped_dw(x, dy, weight.shape, weight.dtype, ix, x_rows, dy_rows)

    def routed_dw(x, dy, weight, x_rows, dy_rows):
        return lambda: dw_module.weight_grad(x, dy, weight, ix, x_rows, dy_rows)

    dw_cases = {name: (kernel_dw(*operands), operands[2]) for name, operands in dw_operands.items()}
    lines = ["| kernel | config | " + " | ".join(list(mm_cases) + list(dw_cases)) + " |"]
    lines.append("|---" * (2 + len(mm_cases) + len(dw_cases)) + "|")

    def tflops(fn, weight) -> str:
        return f"{2 * rows * weight.shape[1] * weight.shape[2] / _median_ms(fn) / 1e9:.0f}"

    for module, candidates, cases in ((mm_module, MM_CANDIDATES, mm_cases), (dw_module, DW_CANDIDATES, dw_cases)):
        saved = module._configs
        for cfg in candidates:
            module._configs = lambda cfg=cfg: [cfg]  # this config alone: no fallback hiding a misfit
            module._candidates.cache_clear()  # the launches' tile candidates are made from `_configs`, once
            cells = []
            for fn, weight in cases.values():
                try:
                    cells.append(tflops(fn, weight))
                except Exception as err:  # out of shared memory etc.: report and go on
                    cells.append(type(err).__name__)
            blank = ["" for _ in range(len(mm_cases) if module is dw_module else len(dw_cases))]
            row = cells + blank if module is mm_module else blank + cells
            lines.append(f"| {module.__name__.split('.')[-1]} | {cfg} | " + " | ".join(row) + " |")
        module._configs = saved
        module._candidates.cache_clear()
    # What training runs: `weight_grad` (torch's grouped GEMM over gathered rows where it applies, gathers included).
    routed = [tflops(routed_dw(*operands), operands[2]) for operands in dw_operands.values()]
    uses = dw_module.uses_grouped_gemm(*dw_operands["mlp_in dW"][:3])
    lines.append(f"| weight_grad | {'torch grouped GEMM' if uses else 'the kernel above'} | "
                 + " | ".join([""] * len(mm_cases) + routed) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true", help="also time candidate tile configs (TFLOP/s)")
    parser.add_argument("--tokens", type=int, default=SHAPE["tokens"])
    parser.add_argument("--sweep-only", action="store_true", help="only the tile sweep")
    args = parser.parse_args()
    shape = dict(SHAPE, tokens=args.tokens)
    if args.sweep or args.sweep_only:
        print(sweep(shape), flush=True)
    if not args.sweep_only:
        print(kernel_table(bench_kernels(shape)))


if __name__ == "__main__":
    main()
