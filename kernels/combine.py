"""Gate-weighted combine of each token's k expert outputs, `out[t] = sum_j g[t, j] * y[t*k + j]`, fused.

`GateCombine` is the combine alone. `ScatteredMatmulCombine` is the last expert matmul followed by the combine: its
forward writes each slot's row once and sums the k rows of a token in one pass; its backward builds the gate-scaled
output gradient in grouped order with one gather kernel and runs the input- and weight-gradient matmuls on it.
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch
from .scatter_matmul import (
    NO_LORA,
    SAVED_OPERANDS,
    input_rows,
    lora_prologue,
    matmul_grads,
    save_operands,
    scatter_mm,
)
from .schedule import RoutingIndex, cdiv, interpreting, next_power_of_2


@quick_launch
@triton.jit
def _combine_fwd_kernel(Y, G, BIAS, OUT, H, TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr):
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    acc = tl.zeros((BLOCK_H,), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + cols, mask=mask, other=0.0).to(tl.float32)
    for j in tl.static_range(TOP_K):
        gate = tl.load(G + token * TOP_K + j).to(tl.float32)
        y = tl.load(Y + (token * TOP_K + j) * H + cols, mask=mask, other=0.0).to(tl.float32)
        acc += gate * y
    tl.store(OUT + token * H + cols, acc.to(OUT.dtype.element_ty), mask=mask)


@quick_launch
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


@quick_launch
@triton.jit
def _grouped_output_grad_kernel(DOUT, G, DY, slot_rows, H, TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_rows + row).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = cols < H
    gate = tl.load(G + slot).to(tl.float32)
    dout = tl.load(DOUT + (slot // TOP_K) * H + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(DY + row * H + cols, (gate * dout).to(DY.dtype.element_ty), mask=mask)


def _block_h(hidden: int) -> int:
    return 16 if interpreting() else min(1024, next_power_of_2(hidden))


def combine_forward(y: torch.Tensor, gates: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`out[t] = sum_j gates[t, j] * y[t*k + j] (+ bias)`, summed in float32."""
    num_tokens, top_k = gates.shape
    hidden = y.shape[1]
    out = torch.empty(num_tokens, hidden, device=y.device, dtype=y.dtype)
    block_h = _block_h(hidden)
    _combine_fwd_kernel[(num_tokens, cdiv(hidden, block_h))](
        y, gates, bias if bias is not None else y, out, hidden, TOP_K=top_k, HAS_BIAS=bias is not None,
        BLOCK_H=block_h,
    )  # fmt: skip
    return out


def grouped_output_grad(dout: torch.Tensor, gates: torch.Tensor, index: RoutingIndex) -> torch.Tensor:
    """`dy[r] = gates[s] * dout[s // k]` for grouped row r of slot s: the combine's gradient per expert row."""
    rows = index.slot_rows.shape[0]
    dy = torch.empty(rows, dout.shape[1], device=dout.device, dtype=dout.dtype)
    block_h = _block_h(dout.shape[1])
    _grouped_output_grad_kernel[(rows, cdiv(dout.shape[1], block_h))](
        dout, gates, dy, index.slot_rows, dout.shape[1], TOP_K=gates.shape[1], BLOCK_H=block_h
    )
    return dy


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
    """`out[t] = sum_j g[t, j] * W[e_j] x[row of slot t*k+j] + bias`; `x` in grouped (`grouped_in`) or slot order.

    With a LoRA pair, each slot's row gets `s * B[e] A[e] x_lora` before the combine (`x_lora` `x` after LoRA's
    dropout, or `x`), as in `ScatteredMatmul`.
    The output bias (JetMoE's experts share one) is added in the combine's pass instead of one of its own.
    """

    @staticmethod
    def forward(ctx, x, weight, gates, index: RoutingIndex, grouped_in: bool, lora_A, lora_B, scaling, dropout, bias):
        if x.shape[0] != index.slot_rows.shape[0]:
            raise ValueError("the combined matmul takes one input row per slot (grouped or slot order)")
        gates = gates.contiguous()
        in_rows = input_rows(x, index, grouped_in)
        prologue = lora_prologue(x, lora_A, lora_B, scaling, dropout, index, in_rows)
        low_rank = None if prologue is None else (prologue[2], prologue[4])
        y = scatter_mm(x, weight, index, in_rows, index.slot_rows, index.slot_rows.shape[0], low_rank=low_rank)
        y_kept = y if ctx.needs_input_grad[2] else None  # y only feeds dgates
        save_operands(ctx, index, in_rows, x, weight, (lora_A, lora_B, scaling, dropout), prologue, gates, y_kept)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return combine_forward(y, gates, bias)

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        gates, y = saved[SAVED_OPERANDS:]
        dout = dout.contiguous()
        needs = ctx.needs_input_grad
        matmul_needs = needs[:2] + needs[5:7]
        grads = (None,) * 4
        if any(matmul_needs):
            # Grouped row r is slot s = slot_rows[r]: its output gradient is gates[s] * dout[s // k]. Built once in
            # grouped order ([T*k, H], small next to the matmuls): scaling inside the weight-gradient loop cost more
            # (274 against 432 TFLOP/s on an H100 at the JetMoE-8B shape).
            grads = matmul_grads(ctx, saved, grouped_output_grad(dout, gates, ctx.index), None, matmul_needs)
        dg = gate_grad(y, dout, gates) if needs[2] else None
        dbias = dout.sum(0, dtype=torch.float32).to(ctx.bias_dtype) if needs[9] else None
        dx, dw, da, db = grads
        return dx, dw, dg, None, None, da, db, None, None, dbias


def gate_combine(y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    return GateCombine.apply(y, gates)


def scattered_matmul_combine(
    x, weight, gates, index: RoutingIndex, grouped_in: bool = False, *, lora=None, bias=None
):  # fmt: skip
    """`lora`: None, or `(A, B, scaling, dropout)` as `ScatteredMatmulCombine` takes them; `bias` `[N]` or None."""
    return ScatteredMatmulCombine.apply(x, weight, gates, index, grouped_in, *(lora or NO_LORA), bias)
