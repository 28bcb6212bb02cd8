"""Fused SiLU-GLU: `h = silu(a) * b` for `[a, b] = ab.chunk(2, -1)`, forward and backward in one pass each.

Unfused, PyTorch reads and writes the `[rows, 2*ffn]` activations several times (chunk, silu, multiply, and as
many again in backward); here each pass reads its inputs once, computes in float32, and writes once.

`scattered_matmul_silu_glu` goes further for the MLP experts: the GLU runs in the epilogue of the input projection
(`kernels.scatter_matmul`), so `[a, b]` is never read back; it is written only when a backward will need it.
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch
from .scatter_matmul import NO_LORA, SAVED_OPERANDS, input_rows, matmul_grads, save_operands, scatter_mm
from .schedule import RoutingIndex, cdiv, interpreting, next_power_of_2


@triton.jit
def _load_halves(AB, M, F, stride_ab, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    """This program's tile of `a` and `b` in float32, with its row offsets, columns and mask."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
    mask = (rows < M)[:, None] & (cols < F)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    a = tl.load(AB + rows64 * stride_ab + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(AB + rows64 * stride_ab + F + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return rows64, cols[None, :], mask, a, b


@quick_launch
@triton.jit(do_not_specialize=["M"])  # the batch's routed rows: no recompile as they change
def _silu_glu_fwd_kernel(AB, H, M, F, stride_ab, stride_h, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows64, cols, mask, a, b = _load_halves(AB, M, F, stride_ab, BLOCK_M, BLOCK_F)
    h = a * tl.sigmoid(a) * b
    tl.store(H + rows64 * stride_h + cols, h.to(H.dtype.element_ty), mask=mask)


@quick_launch
@triton.jit(do_not_specialize=["M"])
def _silu_glu_bwd_kernel(AB, DH, DAB, M, F, stride_ab, stride_dh, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr):
    rows64, cols, mask, a, b = _load_halves(AB, M, F, stride_ab, BLOCK_M, BLOCK_F)
    dh = tl.load(DH + rows64 * stride_dh + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    da = dh * b * sig * (1.0 + a * (1.0 - sig))  # d silu(a) / da = sig * (1 + a * (1 - sig))
    db = dh * a * sig
    dtype = DAB.dtype.element_ty
    tl.store(DAB + rows64 * stride_ab + cols, da.to(dtype), mask=mask)
    tl.store(DAB + rows64 * stride_ab + F + cols, db.to(dtype), mask=mask)


def _blocks(ffn: int) -> tuple[int, int]:
    """(rows, columns) per program: few large programs in the interpreter, row-wide ones on the GPU."""
    if interpreting():
        return 16, 32
    return 4, min(1024, next_power_of_2(ffn))


def silu_glu_forward(ab: torch.Tensor) -> torch.Tensor:
    rows, ffn = ab.shape[0], ab.shape[1] // 2
    h = torch.empty(rows, ffn, device=ab.device, dtype=ab.dtype)
    block_m, block_f = _blocks(ffn)
    grid = (cdiv(rows, block_m), cdiv(ffn, block_f))
    _silu_glu_fwd_kernel[grid](ab, h, rows, ffn, ab.stride(0), h.stride(0), BLOCK_M=block_m, BLOCK_F=block_f)
    return h


def silu_glu_backward(ab: torch.Tensor, dh: torch.Tensor) -> torch.Tensor:
    rows, ffn = ab.shape[0], ab.shape[1] // 2
    dab = torch.empty_like(ab)
    block_m, block_f = _blocks(ffn)
    grid = (cdiv(rows, block_m), cdiv(ffn, block_f))
    _silu_glu_bwd_kernel[grid](ab, dh, dab, rows, ffn, ab.stride(0), dh.stride(0), BLOCK_M=block_m, BLOCK_F=block_f)
    return dab


class SiluGLU(torch.autograd.Function):
    """Saves only `ab`: the backward needs nothing else."""

    @staticmethod
    def forward(ctx, ab):
        ab = ab.contiguous()
        ctx.save_for_backward(ab)
        return silu_glu_forward(ab)

    @staticmethod
    def backward(ctx, dh):
        (ab,) = ctx.saved_tensors
        return silu_glu_backward(ab, dh.contiguous())


def silu_glu(ab: torch.Tensor) -> torch.Tensor:
    return SiluGLU.apply(ab)


class ScatteredMatmulSiluGLU(torch.autograd.Function):
    """`h = silu(a) * b` for `[a, b] = W[e] x` per routed row, grouped rows out; saves `[a, b]` when `keep_ab`."""

    @staticmethod
    def forward(ctx, x, weight, index: RoutingIndex, grouped_in: bool, keep_ab: bool):
        in_rows = input_rows(x, index, grouped_in)
        rows = index.slot_rows.shape[0]
        ab = torch.empty(rows, weight.shape[1], device=x.device, dtype=x.dtype) if keep_ab else None
        h = scatter_mm(x, weight, index, in_rows, None, rows, silu_glu=True, keep_ab=ab)
        save_operands(ctx, index, in_rows, x, weight, NO_LORA, None, ab)
        return h

    @staticmethod
    def backward(ctx, dh):
        saved = ctx.saved_tensors
        (ab,) = saved[SAVED_OPERANDS:]
        dab = silu_glu_backward(ab, dh.contiguous())
        dx, dw, *_ = matmul_grads(ctx, saved, dab, None, ctx.needs_input_grad[:2] + (False, False))
        return dx, dw, None, None, None


def scattered_matmul_silu_glu(x, weight, index: RoutingIndex, grouped_in: bool = False) -> torch.Tensor:
    """The MLP experts' input projection and SiLU-GLU in one kernel; `[a, b]` is kept only if autograd records."""
    keep_ab = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return ScatteredMatmulSiluGLU.apply(x, weight, index, grouped_in, keep_ab)
