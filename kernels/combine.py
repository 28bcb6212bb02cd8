"""Gate-weighted combine of each token's k expert outputs, `out[t] = sum_j g[t, j] * y[t*k + j]`, fused.

`GateCombine` is the combine alone. `ScatteredMatmulCombine` is the last expert matmul followed by the combine,
with the gate multiply fused into its backward: `dx` and `dW` read the token's output gradient through the routing
index and scale it by the gate inside the matmul kernels, so `g * dout` is never materialised per slot.
"""

import torch
import triton
import triton.language as tl

from .scatter_matmul import input_rows, scatter_mm, weight_grad
from .schedule import RoutingIndex, interpreting


@triton.jit
def _combine_fwd_kernel(Y, G, OUT, H, TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        gate = tl.load(G + token * TOP_K + j).to(tl.float32)
        y = tl.load(Y + (token * TOP_K + j) * H + cols, mask=mask, other=0.0).to(tl.float32)
        acc += gate * y
    tl.store(OUT + token * H + cols, acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gate_grad_kernel(Y, DOUT, DG, H, TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """`dg[t, j] = <dout[t], y[t*k + j]>`, one token per program."""
    token = tl.program_id(0).to(tl.int64)
    for j in tl.static_range(TOP_K):
        acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            cols = h0 + tl.arange(0, BLOCK_H)
            mask = cols < H
            dout = tl.load(DOUT + token * H + cols, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(Y + (token * TOP_K + j) * H + cols, mask=mask, other=0.0).to(tl.float32)
            acc += dout * y
        tl.store(DG + token * TOP_K + j, tl.sum(acc, axis=0).to(DG.dtype.element_ty))


def _block_h(hidden: int) -> int:
    return 16 if interpreting() else min(1024, triton.next_power_of_2(hidden))


def combine_forward(y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    num_tokens, top_k = gates.shape
    hidden = y.shape[1]
    out = torch.empty(num_tokens, hidden, device=y.device, dtype=y.dtype)
    block_h = _block_h(hidden)
    _combine_fwd_kernel[(num_tokens, triton.cdiv(hidden, block_h))](
        y, gates, out, hidden, TOP_K=top_k, BLOCK_H=block_h
    )
    return out


def gate_grad(y: torch.Tensor, dout: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    num_tokens, top_k = gates.shape
    dg = torch.empty_like(gates)
    _gate_grad_kernel[(num_tokens,)](y, dout, dg, y.shape[1], TOP_K=top_k, BLOCK_H=_block_h(y.shape[1]))
    return dg


class GateCombine(torch.autograd.Function):
    """The combine alone: `y` `[T*k, H]` in slot order, `gates` `[T, k]` -> `[T, H]`."""

    @staticmethod
    def forward(ctx, y, gates):
        y, gates = y.contiguous(), gates.contiguous()
        ctx.save_for_backward(y, gates)
        return combine_forward(y, gates)

    @staticmethod
    def backward(ctx, dout):
        y, gates = ctx.saved_tensors
        dout = dout.contiguous()
        dg = gate_grad(y, dout, gates) if ctx.needs_input_grad[1] else None
        dy = None
        if ctx.needs_input_grad[0]:
            dy = (dout.unsqueeze(1).float() * gates.unsqueeze(2).float()).to(y.dtype).view(-1, y.shape[1])
        return dy, dg


class ScatteredMatmulCombine(torch.autograd.Function):
    """`out[t] = sum_j g[t, j] * W[e_j] x[row of slot t*k+j]`; `x` in grouped (`grouped_in`) or slot order."""

    @staticmethod
    def forward(ctx, x, weight, gates, index: RoutingIndex, grouped_in: bool):
        if x.shape[0] != index.slot_rows.shape[0]:
            raise ValueError("the combined matmul takes one input row per slot (grouped or slot order)")
        gates = gates.contiguous()
        in_rows = input_rows(x, index, grouped_in)
        y = scatter_mm(x, weight, index, in_rows, index.slot_rows, index.slot_rows.shape[0])
        ctx.save_for_backward(x, weight, gates, y)
        ctx.index, ctx.in_rows = index, in_rows
        return combine_forward(y, gates)

    @staticmethod
    def backward(ctx, dout):
        x, weight, gates, y = ctx.saved_tensors
        index, in_rows = ctx.index, ctx.in_rows
        dout = dout.contiguous()
        # Grouped row r belongs to slot s = slot_rows[r]: its output gradient is gates[s] * dout[s // k].
        slot_gates = gates.view(-1).index_select(0, index.slot_rows) if any(ctx.needs_input_grad[:2]) else None
        dx = dw = dg = None
        if ctx.needs_input_grad[0]:
            dx = scatter_mm(
                dout, weight, index, index.token_rows, in_rows, x.shape[0],
                transpose_weight=True, row_scale=slot_gates,
            )  # fmt: skip
        if ctx.needs_input_grad[1]:
            dw = weight_grad(x, dout, weight, index, in_rows, index.token_rows, row_scale=slot_gates)
        if ctx.needs_input_grad[2]:
            dg = gate_grad(y, dout, gates)
        return dx, dw, dg, None, None


def gate_combine(y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    return GateCombine.apply(y, gates)


def scattered_matmul_combine(x, weight, gates, index: RoutingIndex, grouped_in: bool = False):
    return ScatteredMatmulCombine.apply(x, weight, gates, index, grouped_in)
