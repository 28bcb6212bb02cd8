"""Per-expert weight gradient `dW[e] = sum_r dy[r]^T x[r]` over expert e's grouped rows.

One program owns one `[BLOCK_N, BLOCK_K]` tile of one expert's gradient and walks that expert's rows, reading
`x` and `dy` through the routing index (no gathered copies). Experts with no rows get zeros. The backward half
of `scatter_matmul`; its autograd lives there.

On Hopper GPUs in bfloat16, `weight_grad` hands the same sum to torch's grouped GEMM (`F.grouped_mm`, CUTLASS)
instead, over the rows gathered into expert order first: gathers included, 1.2-1.4x this kernel on an H200 for
JetMoE-8B's three weight gradients (docs/benchmarks.md), whose rows this kernel reads by pointers, TMA being
unable to gather them. Elsewhere (float32, other GPUs, Triton's interpreter) this kernel computes it.
"""

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .launching import quick_launch
from .schedule import (RoutingIndex, cdiv, compute_capability, dot_options, interpreting, launch_first_fitting,
                       next_power_of_2, tile_candidates)  # fmt: skip


@quick_launch
@triton.jit
def _grouped_dw_kernel(
    X, DY, DW, x_rows, dy_rows, expert_start, expert_end,
    N, K,
    stride_xm, stride_xk, stride_dym, stride_dyn, stride_we, stride_wn, stride_wk,
    X_INDEXED: tl.constexpr, DY_INDEXED: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    expert = tl.program_id(1)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_n = pid // num_k
    pid_k = pid % num_k
    row_start = tl.load(expert_start + expert)
    row_end = tl.load(expert_end + expert)

    cols_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    n_mask = cols_n < N
    k_mask = cols_k < K
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for r0 in range(row_start, row_end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        row_mask = rows < row_end
        xr = tl.load(x_rows + rows, mask=row_mask, other=0) if X_INDEXED else rows
        dyr = tl.load(dy_rows + rows, mask=row_mask, other=0) if DY_INDEXED else rows
        dy = tl.load(
            DY + dyr.to(tl.int64)[:, None] * stride_dym + cols_n[None, :] * stride_dyn,
            mask=row_mask[:, None] & n_mask[None, :], other=0.0,
        )  # fmt: skip
        x = tl.load(
            X + xr.to(tl.int64)[:, None] * stride_xm + cols_k[None, :] * stride_xk,
            mask=row_mask[:, None] & k_mask[None, :], other=0.0,
        )  # fmt: skip
        if DOT_FP32:
            dy, x = dy.to(tl.float32), x.to(tl.float32)
        acc = tl.dot(tl.trans(dy), x, acc, input_precision=PRECISION)

    w_ptrs = DW + expert.to(tl.int64) * stride_we + cols_n[:, None] * stride_wn + cols_k[None, :] * stride_wk
    tl.store(w_ptrs, acc.to(DW.dtype.element_ty), mask=n_mask[:, None] & k_mask[None, :])


# Tiles for the GPU, fixed rather than autotuned: best of `bench/bench_kernels.py --sweep` on an H100 (2026-11-23).
GPU_CONFIG = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3)
SMALL_CONFIG = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3)  # fallback: less shared memory
INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=4, num_stages=1)


def _configs() -> list[dict]:
    return [INTERPRETER_CONFIG] if interpreting() else [GPU_CONFIG, SMALL_CONFIG]


def rank_block(size: int) -> int:
    """A power of two covering `size`, at least 16 (`tl.dot`'s smallest operand dimension): a tile for a rank."""
    return max(16, next_power_of_2(size))


@functools.cache
def _candidates(n_block: int, k_block: int, interpreter: bool) -> tuple:
    """The tile configs for a gradient of `n_block` by `k_block` (powers of two), no larger than it: LoRA's
    `[E, r, in]` and `[E, out, r]` have one side of only r. Cached by the interpreter setting too, which `_configs`
    reads (`bench_kernels.py --sweep` clears it)."""
    narrowed = (dict(cfg, BLOCK_N=min(cfg["BLOCK_N"], n_block), BLOCK_K=min(cfg["BLOCK_K"], k_block))
                for cfg in _configs())  # fmt: skip
    return tile_candidates(narrowed)


def grouped_dw(
    x: torch.Tensor,
    dy: torch.Tensor,
    weight_shape: torch.Size,
    weight_dtype: torch.dtype,
    index: RoutingIndex,
    x_rows: torch.Tensor | None,
    dy_rows: torch.Tensor | None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`[E, N, K]` gradient; `x_rows`/`dy_rows` None mean the tensor is already in grouped order.

    `out`: the tensor to write (any strides, e.g. laid out as the weight it is the gradient of) instead of a new one.
    """
    num_experts, n, k = weight_shape
    dw = torch.empty(weight_shape, device=x.device, dtype=weight_dtype) if out is None else out
    unused = index.slot_rows

    def launch(cfg):
        grid = (cdiv(n, cfg["BLOCK_N"]) * cdiv(k, cfg["BLOCK_K"]), num_experts)
        _grouped_dw_kernel[grid](
            x, dy, dw,
            x_rows if x_rows is not None else unused,
            dy_rows if dy_rows is not None else unused,
            index.expert_start, index.expert_end,
            n, k,
            x.stride(0), x.stride(1), dy.stride(0), dy.stride(1), dw.stride(0), dw.stride(1), dw.stride(2),
            X_INDEXED=x_rows is not None, DY_INDEXED=dy_rows is not None,
            **dot_options(x.dtype), **cfg,
        )  # fmt: skip

    launch_first_fitting("grouped_dw", x.dtype, _candidates(rank_block(n), rank_block(k), interpreting()), launch)
    return dw


def uses_grouped_gemm(x: torch.Tensor, dy: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `weight_grad` computes this gradient with torch's grouped GEMM: bfloat16 throughout, on a Hopper GPU
    (where it was measured faster), with rows of whole 16-byte units (CUTLASS's alignment)."""
    return (
        x.dtype == dy.dtype == weight.dtype == torch.bfloat16 and x.is_cuda and not interpreting()
        and compute_capability(x.device.index) == 9 and x.shape[1] % 8 == 0 and dy.shape[1] % 8 == 0
    )  # fmt: skip


def grouped_gemm_dw(x, dy, index: RoutingIndex, x_rows, dy_rows) -> torch.Tensor:
    """`[E, N, K]` gradient by `F.grouped_mm`: `x` and `dy` gathered into grouped order (contiguous rows per
    expert, `index.expert_end` their ends), then one GEMM per expert over its rows; an expert without rows gets
    zeros."""
    x_grouped = (x if x_rows is None else x.index_select(0, x_rows)).contiguous()
    dy_grouped = (dy if dy_rows is None else dy.index_select(0, dy_rows)).contiguous()
    return F.grouped_mm(dy_grouped.t(), x_grouped, offs=index.expert_end)


def weight_grad(x, dy, weight, index: RoutingIndex, x_rows, dy_rows) -> torch.Tensor:
    """`dW[e] = sum_r dy[dy_rows[r]]^T x[x_rows[r]]` over expert e's grouped rows, in `weight`'s dtype and strides."""
    if not uses_grouped_gemm(x, dy, weight):
        return grouped_dw(x, dy, weight.shape, weight.dtype, index, x_rows, dy_rows, out=torch.empty_like(weight))
    dw = grouped_gemm_dw(x, dy, index, x_rows, dy_rows)
    return dw if dw.stride() == weight.stride() else torch.empty_like(weight).copy_(dw)
