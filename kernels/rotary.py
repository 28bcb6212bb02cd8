"""Fused rotary embedding, forward and backward, with the semantics of `jetmoe_model.layers.apply_rotary`.

`y = x * cos + rotate_half(x) * sin` for `x` `[B, heads, L, D]` and tables `[B or 1, L, D]`. PyTorch builds it from a
chunk, a negation, a `cat` and three elementwise passes, forward and again backward; here one pass each way.

`x` may have any strides, and its heads may be two dimensions `[B, H1, H2, L, D]` (head `h1 * H2 + h2`): MoA's
queries come out of the expert kernel as `[B, L, k, kv_heads, D]`, and reading them through that 5-D view spares the
permute-copy into `[B, kv_heads * k, L, D]`. The result is contiguous `[B, heads, L, D]`, or with `token_major` a
`[B, L, heads, D]` tensor seen as `[B, heads, L, D]`: the layout packed (varlen) attention reads, `[tokens, heads,
D]`, without a copy. The gradient is written in the order of `x`'s dimensions, so it reaches the kernel before in the
layout that kernel wrote, and the keys' gradient (`x` a strided half of the kv projection) meets the values' gradient
token by token when autograd stacks the two into the projection's gradient (a slow transposing copy otherwise).
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch
from .schedule import cdiv, interpreting


@quick_launch
@triton.jit(do_not_specialize=["L"])  # the sequence length: no recompile for each new one
def _rotary_kernel(
    X, COS, SIN, Y, L, HEADS, H2,
    sx_b, sx_h1, sx_h2, sx_l, sx_d, sy_b, sy_h1, sy_h2, sy_l, sy_d, st_b, st_l,
    HALF: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    b, h = (bh // HEADS).to(tl.int64), bh % HEADS
    h1, h2 = h // H2, h % H2
    ls = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    d = tl.arange(0, HALF)
    mask = (ls < L)[:, None]
    x_base = X + b * sx_b + h1.to(tl.int64) * sx_h1 + h2.to(tl.int64) * sx_h2 + ls[:, None].to(tl.int64) * sx_l
    x1 = tl.load(x_base + d[None, :] * sx_d, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_base + (d[None, :] + HALF) * sx_d, mask=mask, other=0.0).to(tl.float32)
    t_base = b * st_b + ls[:, None] * st_l + d[None, :]
    # rotate_half uses the same angle for d and d + HALF (the tables repeat), so one half of each table suffices.
    cos = tl.load(COS + t_base, mask=mask, other=0.0).to(tl.float32)
    sin = tl.load(SIN + t_base, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:  # the transpose of the rotation
        y1 = x1 * cos + x2 * sin
        y2 = x2 * cos - x1 * sin
    else:
        y1 = x1 * cos - x2 * sin
        y2 = x2 * cos + x1 * sin
    y_base = Y + b * sy_b + h1.to(tl.int64) * sy_h1 + h2.to(tl.int64) * sy_h2 + ls[:, None].to(tl.int64) * sy_l
    tl.store(y_base + d[None, :] * sy_d, y1.to(Y.dtype.element_ty), mask=mask)
    tl.store(y_base + (d[None, :] + HALF) * sy_d, y2.to(Y.dtype.element_ty), mask=mask)


def _as_5d(x: torch.Tensor, h2: int) -> torch.Tensor:
    """`[B, H, L, D]` seen as `[B, H / h2, h2, L, D]` (a view: the heads dimension splits for any stride)."""
    return x if x.dim() == 5 else x.unflatten(1, (x.shape[1] // h2, h2))


def _dense_in_order(shape: torch.Size, stride: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a tensor of `shape` without gaps whose dimensions are ordered as `stride` orders them: `stride`
    itself for a dense (possibly permuted) tensor."""
    dense, expected = [0] * len(shape), 1
    for dim in sorted(range(len(shape)), key=lambda dim: (stride[dim], dim)):
        dense[dim] = expected
        expected *= shape[dim]
    return tuple(dense)


def _launch(x5: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, y5: torch.Tensor, backward: bool) -> None:
    batch, h1, h2, length, dim = x5.shape
    cos, sin = cos.expand(batch, length, dim), sin.expand(batch, length, dim)  # tables of batch 1: stride 0
    block_l = 8 if interpreting() else 32
    grid = (batch * h1 * h2, cdiv(length, block_l))
    _rotary_kernel[grid](
        x5, cos, sin, y5, length, h1 * h2, h2, *x5.stride(), *y5.stride(), cos.stride(0), cos.stride(1),
        HALF=dim // 2, BACKWARD=backward, BLOCK_L=block_l,
    )  # fmt: skip


class RotaryFunction(torch.autograd.Function):
    """Gradient for `x` only: the cos/sin tables are constants of the positions."""

    @staticmethod
    def forward(ctx, x, cos, sin, token_major: bool):
        if cos.stride(-1) != 1 or sin.stride() != cos.stride():
            cos, sin = cos.contiguous(), sin.contiguous()
        x5 = _as_5d(x, 1)
        batch, h1, h2, length, dim = x5.shape
        dtype = torch.promote_types(x.dtype, cos.dtype)
        if token_major:
            y = torch.empty(batch, length, h1 * h2, dim, device=x.device, dtype=dtype).transpose(1, 2)
        else:
            y = torch.empty(batch, h1 * h2, length, dim, device=x.device, dtype=dtype)
        _launch(x5, cos, sin, _as_5d(y, h2), backward=False)
        ctx.save_for_backward(cos, sin)
        ctx.x_meta = (x5.shape, _dense_in_order(x5.shape, x5.stride()), x.dim())
        return y

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        shape, stride, x_dim = ctx.x_meta
        dx5 = torch.empty_strided(shape, stride, device=dy.device, dtype=dy.dtype)
        _launch(_as_5d(dy, shape[2]), cos, sin, dx5, backward=True)
        return (dx5 if x_dim == 5 else dx5.flatten(1, 2)), None, None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, token_major: bool = False) -> torch.Tensor:
    """`x` `[B, heads, L, D]` or `[B, H1, H2, L, D]` (head_dim a power of two), cos/sin `[B or 1, L, D]`."""
    return RotaryFunction.apply(x, cos, sin, token_major)
