"""Keys and values gathered into prefix-shared attention sequences, and their gradients summed back, in two kernels.

A prefix-shared DPO pair's rejected response reads the prompt's keys and values as its own: the packed row's keys
are gathered into one sequence per response (`jetmoe_model.pair_packing`), a prompt token's row twice. PyTorch does
it as an `index_select` of the keys and one of the values, and the backward as `index_add_` into zeros, whose
16-bit atomics made it the slowest op of a 16-pair DPO step's attention outside flash attention itself (270 us a
layer on an H200). Here one launch gathers both, and the backward reads each source row's copies, listed ahead on
the host (`sources`: at most a few per row, -1 for none), and writes their sum: no atomics, and the same sum as
`index_add_` rounds to (the copies are added in float32, then rounded once).
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch


@quick_launch
@triton.jit(do_not_specialize=["stride_kt", "stride_kh", "stride_vt", "stride_vh"])
def _gather_rows_kernel(
    K, V, INDEX, K_OUT, V_OUT, stride_kt, stride_kh, stride_vt, stride_vh,
    HEADS: tl.constexpr, DIM: tl.constexpr,
):  # fmt: skip
    """Row `p` of the outputs (contiguous `[P, HEADS, DIM]`) is row `INDEX[p]` of `K` and of `V` (any row and head
    strides, last dim contiguous)."""
    row = tl.program_id(0).to(tl.int64)
    source = tl.load(INDEX + row).to(tl.int64)
    heads, cols = tl.arange(0, HEADS)[:, None], tl.arange(0, DIM)[None, :]
    out = row * HEADS * DIM + heads * DIM + cols
    tl.store(K_OUT + out, tl.load(K + source * stride_kt + heads * stride_kh + cols))
    tl.store(V_OUT + out, tl.load(V + source * stride_vt + heads * stride_vh + cols))


@quick_launch
@triton.jit
def _sum_copies_kernel(
    DK_OUT, DV_OUT, SOURCES, DK, DV, COPIES: tl.constexpr, HEADS: tl.constexpr, DIM: tl.constexpr
):  # fmt: skip
    """Row `t` of `DK`/`DV` is the sum of the gathered gradients' rows `SOURCES[t, :]` (-1: none)."""
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, HEADS)[:, None] * DIM + tl.arange(0, DIM)[None, :]
    dk = tl.zeros((HEADS, DIM), dtype=tl.float32)
    dv = tl.zeros((HEADS, DIM), dtype=tl.float32)
    for copy in tl.static_range(COPIES):
        position = tl.load(SOURCES + row * COPIES + copy).to(tl.int64)
        present = (tl.zeros((HEADS, DIM), dtype=tl.int32) + position) >= 0
        at = tl.maximum(position, 0) * HEADS * DIM + offsets
        dk += tl.load(DK_OUT + at, mask=present, other=0.0).to(tl.float32)
        dv += tl.load(DV_OUT + at, mask=present, other=0.0).to(tl.float32)
    tl.store(DK + row * HEADS * DIM + offsets, dk.to(DK.dtype.element_ty))
    tl.store(DV + row * HEADS * DIM + offsets, dv.to(DV.dtype.element_ty))


class GatherKeysValues(torch.autograd.Function):
    @staticmethod
    def forward(ctx, key, value, index, sources):
        positions, heads, dim = index.shape[0], key.shape[1], key.shape[2]
        key_out = key.new_empty(positions, heads, dim)
        value_out = value.new_empty(positions, heads, dim)
        _gather_rows_kernel[(positions,)](
            key, value, index, key_out, value_out, key.stride(0), key.stride(1), value.stride(0), value.stride(1),
            HEADS=heads, DIM=dim,
        )  # fmt: skip
        ctx.save_for_backward(sources)
        ctx.shape = key.shape
        return key_out, value_out

    @staticmethod
    def backward(ctx, grad_key, grad_value):
        (sources,) = ctx.saved_tensors
        rows, heads, dim = ctx.shape
        grad_key, grad_value = grad_key.contiguous(), grad_value.contiguous()
        key_in, value_in = grad_key.new_empty(rows, heads, dim), grad_value.new_empty(rows, heads, dim)
        _sum_copies_kernel[(rows,)](
            grad_key, grad_value, sources, key_in, value_in, COPIES=sources.shape[1], HEADS=heads, DIM=dim
        )  # fmt: skip
        return key_in, value_in, None, None


def gather_keys_values(key, value, index, sources) -> tuple[torch.Tensor, torch.Tensor]:
    """`key[index], value[index]` (`[T, heads, dim]`, heads and dim powers of two) as contiguous `[P, heads, dim]`.

    `sources` `[T, copies]` int32: the positions `p` with `index[p] == t`, padded with -1
    (`jetmoe_model.pair_packing` lists them when it plans the batch, on the host).
    """
    return GatherKeysValues.apply(key, value, index, sources)

