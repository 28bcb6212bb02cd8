"""Pure-PyTorch expert matmul over routed tokens: the oracle every Triton kernel is tested against."""

import torch
import torch.nn.functional as F

from .routing import Routing


def grouped_rows(x: torch.Tensor, routing: Routing) -> torch.Tensor:
    """Row indices of `x` that feed each grouped row.

    `x` holds either one row per token (each read `top_k` times) or one row per slot.
    """
    if x.shape[0] == routing.num_tokens * routing.top_k:
        return routing.sorted_slots
    if x.shape[0] == routing.num_tokens:
        return routing.sorted_slots // routing.top_k
    raise ValueError(
        f"expert input has {x.shape[0]} rows; expected {routing.num_tokens} (tokens) "
        f"or {routing.num_tokens * routing.top_k} (token slots)"
    )


def scattered_experts_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    routing: Routing,
    *,
    grouped_in: bool = False,
    grouped_out: bool = False,
    gates: torch.Tensor | None = None,
) -> torch.Tensor:
    """`y[r] = weight[expert(r)] @ x[r]` for every routed row r.

    Args:
        x: `[T*k, in]` in grouped order if `grouped_in`, else `[T, in]` (token rows) or `[T*k, in]` (slot rows).
        weight: `[E, out, in]` expert weights.
        grouped_in: `x` is already in grouped order.
        grouped_out: return `[T*k, out]` in grouped order; otherwise in slot order.
        gates: `[T, k]`; when given (slot-order output only) the k slots of each token are combined,
            `y[t] = sum_j gates[t, j] * y[t*k + j]`, and `[T, out]` is returned.
    """
    if gates is not None and grouped_out:
        raise ValueError("gates combine slots per token, so they need slot-order output (grouped_out=False)")
    grouped_x = x if grouped_in else x.index_select(0, grouped_rows(x, routing))
    counts = routing.expert_counts.tolist()  # host sync: acceptable in the reference path only
    grouped_y = torch.cat(
        [F.linear(chunk, weight[expert]) for expert, chunk in enumerate(grouped_x.split(counts))], dim=0
    )
    if grouped_out:
        return grouped_y
    y = torch.zeros_like(grouped_y).index_add(0, routing.sorted_slots, grouped_y)
    if gates is None:
        return y
    num_tokens, top_k = gates.shape
    return torch.einsum("tk,tko->to", gates.to(y.dtype), y.view(num_tokens, top_k, -1))


def expert_mlp_reference(
    x: torch.Tensor, input_weight: torch.Tensor, output_weight: torch.Tensor, routing: Routing, activation
) -> torch.Tensor:
    """JetMoE's MoE MLP without its output bias: `sum_j g_j * W_out[e_j] (act(a) * b)`, `[a, b] = W_in[e_j] x`."""
    hidden = scattered_experts_reference(x, input_weight, routing, grouped_out=True)
    gate_half, up_half = hidden.chunk(2, dim=-1)
    hidden = activation(gate_half) * up_half
    return scattered_experts_reference(hidden, output_weight, routing, grouped_in=True, gates=routing.gates)


def expert_query_reference(x: torch.Tensor, weight: torch.Tensor, routing: Routing) -> torch.Tensor:
    """MoA "map": each token's query projection by each of its k experts, `[T*k, H]` in slot order."""
    return scattered_experts_reference(x, weight, routing)


def expert_output_reference(attn: torch.Tensor, weight: torch.Tensor, routing: Routing) -> torch.Tensor:
    """MoA "reduce": output projection of each slot's attention by its expert, gate-weighted sum per token."""
    return scattered_experts_reference(attn, weight, routing, gates=routing.gates)
