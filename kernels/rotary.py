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

A layer's queries and keys share one launch each way (`apply_rotary_pair`): these kernels take the GPU microseconds,
a launch takes the host tens of them: a host-paced 24-layer LoRA DPO step launched them 144 times, now 72.
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch
from .schedule import cdiv, interpreting


@triton.jit
def _rotate(X, Y, COS, SIN, bh, L, HEADS, H2, sx_b, sx_h1, sx_h2, sx_l, sx_d, sy_b, sy_h1, sy_h2, sy_l, sy_d, st_b,
            st_l, HALF: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_L: tl.constexpr):  # fmt: skip
    """Rows `BLOCK_L * program_id(1) + [0, BLOCK_L)` of head `bh % HEADS` of batch row `bh // HEADS`."""
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


@quick_launch
@triton.jit(do_not_specialize=["L", "FIRST"])  # sizes of the batch: no recompile for each new one
def _rotary_kernel(
    COS, SIN, L, FIRST, st_b, st_l,
    X, Y, HEADS, H2, sx_b, sx_h1, sx_h2, sx_l, sx_d, sy_b, sy_h1, sy_h2, sy_l, sy_d,
    X2, Y2, HEADS_2, H2_2, sx2_b, sx2_h1, sx2_h2, sx2_l, sx2_d, sy2_b, sy2_h1, sy2_h2, sy2_l, sy2_d,
    HALF: tl.constexpr, BACKWARD: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """The first `FIRST` programs of axis 0 (batch x heads) rotate `X` into `Y`, any others `X2` into `Y2`: a
    layer's queries and keys in one launch."""
    bh = tl.program_id(0)
    if bh < FIRST:
        _rotate(X, Y, COS, SIN, bh, L, HEADS, H2, sx_b, sx_h1, sx_h2, sx_l, sx_d, sy_b, sy_h1, sy_h2, sy_l, sy_d,
                st_b, st_l, HALF, BACKWARD, BLOCK_L)  # fmt: skip
    else:
        _rotate(X2, Y2, COS, SIN, bh - FIRST, L, HEADS_2, H2_2, sx2_b, sx2_h1, sx2_h2, sx2_l, sx2_d, sy2_b, sy2_h1,
                sy2_h2, sy2_l, sy2_d, st_b, st_l, HALF, BACKWARD, BLOCK_L)  # fmt: skip


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


def _launch(pairs: list[tuple[torch.Tensor, torch.Tensor]], cos: torch.Tensor, sin: torch.Tensor,
            backward: bool) -> None:  # fmt: skip
    """Rotate each `(x5, y5)` of one or two pairs of 5-D views (same batch, length and head size), one launch."""
    batch, _, _, length, dim = pairs[0][0].shape
    cos, sin = cos.expand(batch, length, dim), sin.expand(batch, length, dim)  # tables of batch 1: stride 0
    block_l = 8 if interpreting() else 32
    per_pair = [(x5, y5, x5.shape[1] * x5.shape[2], x5.shape[2]) for x5, y5 in pairs]
    first = batch * per_pair[0][2]
    grid = (sum(batch * heads for _, _, heads, _ in per_pair), cdiv(length, block_l))
    arguments = [arg for x5, y5, heads, h2 in per_pair + per_pair[:1] * (2 - len(pairs))
                 for arg in (x5, y5, heads, h2, *x5.stride(), *y5.stride())]  # a lone pair: its own placeholder
    _rotary_kernel[grid](cos, sin, length, first, cos.stride(0), cos.stride(1), *arguments, HALF=dim // 2,
                         BACKWARD=backward, BLOCK_L=block_l)  # fmt: skip


class RotaryFunction(torch.autograd.Function):
    """Gradients for the rotated tensors only: the cos/sin tables are constants of the positions."""

    @staticmethod
    def forward(ctx, cos, sin, token_major: bool, *xs):
        if cos.stride(-1) != 1 or sin.stride() != cos.stride():
            cos, sin = cos.contiguous(), sin.contiguous()
        pairs, ys, ctx.x_meta = [], [], []
        for x in xs:
            x5 = _as_5d(x, 1)
            batch, h1, h2, length, dim = x5.shape
            dtype = torch.promote_types(x.dtype, cos.dtype)
            if token_major:
                y = torch.empty(batch, length, h1 * h2, dim, device=x.device, dtype=dtype).transpose(1, 2)
            else:
                y = torch.empty(batch, h1 * h2, length, dim, device=x.device, dtype=dtype)
            pairs.append((x5, _as_5d(y, h2)))
            ys.append(y)
            ctx.x_meta.append((x5.shape, _dense_in_order(x5.shape, x5.stride()), x.dim()))
        _launch(pairs, cos, sin, backward=False)
        ctx.save_for_backward(cos, sin)
        return tuple(ys)

    @staticmethod
    def backward(ctx, *dys):
        cos, sin = ctx.saved_tensors
        pairs = []
        for dy, (shape, stride, _) in zip(dys, ctx.x_meta):
            dx5 = torch.empty_strided(shape, stride, device=dy.device, dtype=dy.dtype)
            pairs.append((_as_5d(dy, shape[2]), dx5))
        _launch(pairs, cos, sin, backward=True)
        dxs = (dx5 if x_dim == 5 else dx5.flatten(1, 2) for (_, dx5), (_, _, x_dim) in zip(pairs, ctx.x_meta))
        return None, None, None, *dxs


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, token_major: bool = False) -> torch.Tensor:
    """`x` `[B, heads, L, D]` or `[B, H1, H2, L, D]` (head_dim a power of two), cos/sin `[B or 1, L, D]`."""
    return RotaryFunction.apply(cos, sin, token_major, x)[0]


def apply_rotary_pair(query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      token_major: bool = False) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`apply_rotary` of both, in one launch each way (same batch, length and head size; heads may differ)."""
    return RotaryFunction.apply(cos, sin, token_major, query, key)
