"""Fused rotary embedding, forward and backward, with the semantics of `jetmoe_model.layers.apply_rotary`.

`y = x * cos + rotate_half(x) * sin` for `x` `[B, heads, L, D]` (any strides: the model's keys are a permuted view
of the kv projection) and tables `[B, L, D]`. PyTorch builds it from a chunk, a negation, a `cat` and three
elementwise passes, forward and again backward; here one pass each way, writing a contiguous result.
"""

import torch
import triton
import triton.language as tl

from .schedule import interpreting


@triton.jit
def _rotary_kernel(
    X, COS, SIN, Y, L, HEADS,
    stride_xb, stride_xh, stride_xl, stride_xd, stride_tb, stride_tl,
    HALF: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    b, h = bh // HEADS, bh % HEADS
    ls = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, HALF)
    mask = (ls < L)[:, None]
    x_base = X + b.to(tl.int64) * stride_xb + h.to(tl.int64) * stride_xh + ls[:, None] * stride_xl
    x1 = tl.load(x_base + d[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_base + (d[None, :] + HALF) * stride_xd, mask=mask, other=0.0).to(tl.float32)
    t_base = b.to(tl.int64) * stride_tb + ls[:, None] * stride_tl + d[None, :]
    # rotate_half uses the same angle for d and d + HALF (the tables repeat), so one half of each table suffices.
    cos = tl.load(COS + t_base, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + t_base, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # the transpose of the rotation
        y1 = x1 * cos + x2 * sin
        y2 = x2 * cos - x1 * sin
    else:
        y1 = x1 * cos - x2 * sin
        y2 = x2 * cos + x1 * sin
    y_base = Y + (bh.to(tl.int64) * L + ls[:, None]) * (2 * HALF)
    tl.store(y_base + d[None, :], y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(y_base + HALF + d[None, :], y2.to(Y.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    batch, heads, length, dim = x.shape
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    cos, sin = cos.expand(batch, length, dim), sin.expand(batch, length, dim)  # tables of batch 1: stride 0
    y = torch.empty(batch, heads, length, dim, device=x.device, dtype=torch.promote_types(x.dtype, cos.dtype))
    block_l = 8 if interpreting() else 32
    grid = (batch * heads, triton.cdiv(length, block_l))
    _rotary_kernel[grid](
        x, cos, sin, y, length, heads, *x.stride(), cos.stride(0), cos.stride(1),
        HALF=dim // 2, BACKWARD=backward, BLOCK_L=block_l,
    )  # fmt: skip
    return y


class RotaryFunction(torch.autograd.Function):
    """Gradient for `x` only: the cos/sin tables are constants of the positions."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _launch(x, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return _launch(dy, cos, sin, backward=True), None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Drop-in for `jetmoe_model.layers.apply_rotary` (head_dim a power of two, cos/sin `[B or 1, L, D]`)."""
    return RotaryFunction.apply(x, cos, sin)
