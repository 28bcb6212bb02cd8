"""Scattered expert matmul: `y[r] = W[expert(r)] @ x[r]` for routed rows, rows read and written through the index.

Grouped row `r` (rows sorted by expert) reads its input from row `in_rows[r]` of `x` (token `t`, read k times,
or slot `t*k+j`) and writes `out_rows[r]` of `y`, so no gathered copy of the activations is ever materialised.
The same kernel computes the input gradient (`dx = dy @ W[e]`, the weight read transposed).
"""

import torch
import triton
import triton.language as tl

from .grouped_dw import grouped_dw
from .schedule import RoutingIndex, dot_options, interpreting, launch_first_fitting


@triton.jit
def _scatter_mm_kernel(
    X, W, Y, in_rows, out_rows, tile_start, tile_end, tile_expert,
    num_tiles, N, K,
    stride_xm, stride_xk, stride_we, stride_wn, stride_wk, stride_ym, stride_yn,
    IN_INDEXED: tl.constexpr, OUT_INDEXED: tl.constexpr, EVEN_K: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):  # fmt: skip
    # Grouped launch order: GROUP_M row tiles sweep the output columns together, so weight tiles stay in L2.
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_tiles - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    row_start = tl.load(tile_start + pid_m)
    row_end = tl.load(tile_end + pid_m)
    if row_start >= row_end:  # spare tile: no rows
        return
    expert = tl.load(tile_expert + pid_m).to(tl.int64)

    rows = row_start + tl.arange(0, BLOCK_M)
    row_mask = rows < row_end
    src = tl.load(in_rows + rows, mask=row_mask, other=0) if IN_INDEXED else rows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)

    x_ptrs = X + src.to(tl.int64)[:, None] * stride_xm + ks[None, :] * stride_xk
    w_ptrs = W + expert * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(x_ptrs, mask=row_mask[:, None], other=0.0)
            b = tl.load(w_ptrs, mask=col_mask[None, :], other=0.0)
        else:
            k_mask = (k0 + ks) < K
            a = tl.load(x_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)
        if DOT_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    dst = tl.load(out_rows + rows, mask=row_mask, other=0) if OUT_INDEXED else rows
    y_ptrs = Y + dst.to(tl.int64)[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


# Tiles for the GPU, fixed rather than autotuned: best of `bench/bench_kernels.py --sweep` on an H100 (2026-11-23),
# 513-613 TFLOP/s on the JetMoE-8B matmuls against 448-536 for 128x128x64.
GPU_CONFIG = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)
SMALL_CONFIG = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)  # float32 fallback
INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=1)


def _configs() -> list[dict]:
    return [INTERPRETER_CONFIG] if interpreting() else [GPU_CONFIG, SMALL_CONFIG]


def scatter_mm(
    x: torch.Tensor,
    weight: torch.Tensor,
    index: RoutingIndex,
    in_rows: torch.Tensor | None,
    out_rows: torch.Tensor | None,
    num_out_rows: int,
    *,
    transpose_weight: bool = False,
) -> torch.Tensor:
    """Launch the kernel. `in_rows`/`out_rows` None mean grouped order.

    With `transpose_weight`, `weight` `[E, N, K]` is applied as `[E, K, N]`: the input gradient of the forward.
    """
    if transpose_weight:
        stride_we, stride_wk, stride_wn = weight.stride()
        n, k = weight.shape[2], weight.shape[1]
    else:
        stride_we, stride_wn, stride_wk = weight.stride()
        n, k = weight.shape[1], weight.shape[2]
    assert x.shape[1] == k, (x.shape, weight.shape, transpose_weight)
    y = torch.empty(num_out_rows, n, device=x.device, dtype=x.dtype)
    if out_rows is not None and num_out_rows > index.slot_rows.shape[0]:
        raise ValueError("scattered outputs cannot hold more rows than routed slots")

    def launch(cfg):
        plan = index.tiles(cfg["BLOCK_M"])
        grid = (plan.num_tiles * triton.cdiv(n, cfg["BLOCK_N"]),)
        _scatter_mm_kernel[grid](
            x, weight, y,
            in_rows if in_rows is not None else index.slot_rows,
            out_rows if out_rows is not None else index.slot_rows,
            plan.row_start, plan.row_end, plan.expert,
            plan.num_tiles, n, k,
            x.stride(0), x.stride(1), stride_we, stride_wn, stride_wk, y.stride(0), y.stride(1),
            IN_INDEXED=in_rows is not None, OUT_INDEXED=out_rows is not None,
            EVEN_K=k % cfg["BLOCK_K"] == 0, **dot_options(x.dtype), **cfg,
        )  # fmt: skip

    launch_first_fitting("scatter_mm", x.dtype, _configs(), launch)
    return y


def input_rows(x: torch.Tensor, index: RoutingIndex, grouped: bool) -> torch.Tensor | None:
    """Which row of `x` each grouped row reads: None (grouped), the slot, or the token (`slot // k`)."""
    if grouped:
        return None
    num_slots = index.slot_rows.shape[0]
    if x.shape[0] == num_slots:
        return index.slot_rows
    return index.token_rows


def weight_grad(x, dy, weight, index, x_rows, dy_rows):
    """`dW[e] = sum_r dy[dy_rows[r]]^T x[x_rows[r]]` over expert e's grouped rows."""
    return grouped_dw(x, dy, weight.shape, weight.dtype, index, x_rows, dy_rows)


def reduce_token_slots(dx_slots: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Token rows were read k times; their gradient is the sum over the k slots."""
    top_k = dx_slots.shape[0] // num_tokens
    if top_k == 1:
        return dx_slots
    return dx_slots.view(num_tokens, top_k, -1).sum(1)  # PyTorch sums 16-bit floats in float32


class ScatteredMatmul(torch.autograd.Function):
    """Autograd for `scatter_mm`: x in grouped/slot/token rows, y `[T*k, N]` in grouped or slot order."""

    @staticmethod
    def forward(ctx, x, weight, index: RoutingIndex, grouped_in: bool, grouped_out: bool):
        in_rows = input_rows(x, index, grouped_in)
        out_rows = None if grouped_out else index.slot_rows
        y = scatter_mm(x, weight, index, in_rows, out_rows, index.slot_rows.shape[0])
        ctx.save_for_backward(x, weight)
        ctx.index, ctx.in_rows, ctx.out_rows = index, in_rows, out_rows
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        index, in_rows, out_rows = ctx.index, ctx.in_rows, ctx.out_rows
        dy = dy.contiguous()
        dx = dw = None
        if ctx.needs_input_grad[0]:
            token_input = in_rows is index.token_rows
            # Token rows are read k times: write per-slot gradients, then sum them per token.
            dx_rows = index.slot_rows if token_input else in_rows
            dx = scatter_mm(dy, weight, index, out_rows, dx_rows, index.slot_rows.shape[0], transpose_weight=True)
            if token_input:
                dx = reduce_token_slots(dx, x.shape[0])
        if ctx.needs_input_grad[1]:
            dw = weight_grad(x, dy, weight, index, in_rows, out_rows)
        return dx, dw, None, None, None


def scattered_matmul(x, weight, index: RoutingIndex, grouped_in: bool = False, grouped_out: bool = False):
    return ScatteredMatmul.apply(x, weight, index, grouped_in, grouped_out)
