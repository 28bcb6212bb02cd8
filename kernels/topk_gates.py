"""JetMoE's router gates, softmax over each token's k largest logits, in one kernel forward and one backward.

In PyTorch they are a topk (a sort and a gather), a softmax and a cast forward, and the softmax backward and the
topk's scatter into zeros backward: ~10 ms of an H200 training step over JetMoE-8B's 48 routers, and ~5 launches
each. Here a program takes a tile of tokens with all their (few) experts and picks the top k by k rounds of argmax.

The softmax is computed as torch's CUDA softmax computes it (for k <= 32): `expf(x - max)` with libdevice's expf
(not `tl.exp`'s approximate `ex2`), summed in its order, and an IEEE division; so on a GPU the gates are those of
the PyTorch path bit for bit (but maybe for logit gaps over 87, whose exps are subnormal: Triton's libdevice is
built to flush those to zero). Triton's CPU interpreter has no libdevice and torch's CPU softmax has its own exp:
there the gates differ in their last few bits (up to 4 ulp). Of tied logits the lower expert comes first (torch.topk
leaves that order unspecified).
"""

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .launching import quick_launch
from .schedule import cdiv, interpreting, next_power_of_2

BLOCK_T = 64  # tokens per program


@triton.jit
def _softmax(top, BLOCK_T: tl.constexpr, K_PAD: tl.constexpr, LIBDEVICE_EXP: tl.constexpr):
    """Softmax along axis 1 of a `[BLOCK_T, K_PAD]` tile whose padding slots are -inf.

    The exps are summed as a warp of torch's softmax sums them, by halves: `x_i + x_{i + K_PAD/2}`, and so on."""
    shifted = top - tl.max(top, axis=1)[:, None]
    if LIBDEVICE_EXP:
        exps = libdevice.exp(shifted)
    else:
        exps = tl.exp(shifted)
    total = exps
    for step in tl.static_range(K_PAD.bit_length() - 1):
        total = tl.sum(tl.reshape(total, [BLOCK_T, 2, K_PAD >> (step + 1)]), axis=1)
    return tl.div_rn(exps, total)


@quick_launch
@triton.jit(do_not_specialize=["num_tokens"])  # a batch-dependent size: no recompiles as it changes
def _top_k_gates_fwd_kernel(
    LOGITS, GATES, EXPERTS, num_tokens, NUM_EXPERTS: tl.constexpr, TOP_K: tl.constexpr, E_PAD: tl.constexpr,
    K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, LIBDEVICE_EXP: tl.constexpr,
):  # fmt: skip
    """Round j takes each token's largest remaining logit (of a tie, the lowest expert) as slot j and masks it out."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, E_PAD)
    slots = tl.arange(0, K_PAD)
    token_ok, expert_ok, slot_ok = rows[:, None] < num_tokens, cols[None, :] < NUM_EXPERTS, slots[None, :] < TOP_K
    logits = tl.load(LOGITS + rows[:, None] * NUM_EXPERTS + cols[None, :], mask=token_ok & expert_ok, other=0.0)
    logits = tl.where(expert_ok, logits, -float("inf"))  # padding experts never win; padding tokens stay finite
    top = tl.full([BLOCK_T, K_PAD], -float("inf"), tl.float32)
    experts = tl.zeros([BLOCK_T, K_PAD], tl.int32)
    for j in tl.static_range(TOP_K):
        best, expert = tl.max(logits, axis=1, return_indices=True, return_indices_tie_break_left=True)
        top = tl.where(slots[None, :] == j, best[:, None], top)
        experts = tl.where(slots[None, :] == j, expert[:, None], experts)
        logits = tl.where(cols[None, :] == expert[:, None], -float("inf"), logits)
    gates = _softmax(top, BLOCK_T, K_PAD, LIBDEVICE_EXP)
    slot_offsets = rows[:, None] * TOP_K + slots[None, :]
    tl.store(GATES + slot_offsets, gates.to(GATES.dtype.element_ty), mask=token_ok & slot_ok)
    tl.store(EXPERTS + slot_offsets, experts.to(tl.int64), mask=token_ok & slot_ok)


@quick_launch
@triton.jit(do_not_specialize=["num_tokens"])  # a batch-dependent size: no recompiles as it changes
def _top_k_gates_bwd_kernel(
    LOGITS, EXPERTS, D_GATES, D_LOGITS, num_tokens, NUM_EXPERTS: tl.constexpr, TOP_K: tl.constexpr,
    E_PAD: tl.constexpr, K_PAD: tl.constexpr, BLOCK_T: tl.constexpr, LIBDEVICE_EXP: tl.constexpr,
):  # fmt: skip
    """The softmax backward `g * (dg - sum_j g_j dg_j)` at the chosen experts, zero at the others.

    The gates `g` are recomputed from the chosen logits exactly as the forward computed them."""
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, E_PAD)
    slots = tl.arange(0, K_PAD)
    token_ok, expert_ok, slot_ok = rows[:, None] < num_tokens, cols[None, :] < NUM_EXPERTS, slots[None, :] < TOP_K
    slot_offsets = rows[:, None] * TOP_K + slots[None, :]
    experts = tl.load(EXPERTS + slot_offsets, mask=token_ok & slot_ok, other=-1)
    top = tl.load(LOGITS + rows[:, None] * NUM_EXPERTS + experts, mask=token_ok & slot_ok, other=0.0)
    gates = _softmax(tl.where(slot_ok, top, -float("inf")), BLOCK_T, K_PAD, LIBDEVICE_EXP)
    d_gates = tl.load(D_GATES + slot_offsets, mask=token_ok & slot_ok, other=0.0).to(tl.float32)
    d_top = gates * (d_gates - tl.sum(gates * d_gates, axis=1)[:, None])
    hits = experts[:, :, None] == cols[None, None, :]  # [tokens, slots, experts]: each slot to its expert's column
    d_logits = tl.sum(tl.where(hits, d_top[:, :, None], 0.0), axis=1)
    tl.store(D_LOGITS + rows[:, None] * NUM_EXPERTS + cols[None, :], d_logits, mask=token_ok & expert_ok)


def _sizes(num_experts: int, top_k: int) -> dict:
    return dict(NUM_EXPERTS=num_experts, TOP_K=top_k, E_PAD=next_power_of_2(num_experts),
                K_PAD=next_power_of_2(top_k), BLOCK_T=BLOCK_T, LIBDEVICE_EXP=not interpreting())  # fmt: skip


class TopKGates(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, top_k: int, gate_dtype: torch.dtype):
        logits = logits.contiguous()
        num_tokens, num_experts = logits.shape
        gates = torch.empty(num_tokens, top_k, device=logits.device, dtype=gate_dtype)
        experts = torch.empty(num_tokens, top_k, device=logits.device, dtype=torch.long)
        grid = (cdiv(num_tokens, BLOCK_T),)
        _top_k_gates_fwd_kernel[grid](logits, gates, experts, num_tokens, **_sizes(num_experts, top_k))
        ctx.save_for_backward(logits, experts)
        ctx.mark_non_differentiable(experts)
        return gates, experts

    @staticmethod
    def backward(ctx, d_gates, _):
        logits, experts = ctx.saved_tensors
        num_tokens, num_experts = logits.shape
        d_logits = torch.empty_like(logits)
        grid = (cdiv(num_tokens, BLOCK_T),)
        _top_k_gates_bwd_kernel[grid](
            logits, experts, d_gates.contiguous(), d_logits, num_tokens, **_sizes(num_experts, experts.shape[1])
        )
        return d_logits, None, None


def top_k_gates(logits: torch.Tensor, top_k: int, gate_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """`(gates [T, k] gate_dtype, experts [T, k] int64)` of float32 logits `[T, E]`: as `logits.topk(k)` (largest
    first; of tied logits, the lower expert first), then the softmax of those k in float32, cast to `gate_dtype`."""
    return TopKGates.apply(logits, top_k, gate_dtype)
