"""Expert matmuls one projection at a time, and the LoRA update of an expert projection.

LoRA wraps each expert projection on its own (PEFT's wrappers sit on the `ParallelExperts` module), so the model
calls the projections one by one through these functions rather than the fused layer functions; on Triton they
launch the same kernels as `triton_backend.expert_mlp` and friends.

The LoRA update of expert e is `s * B_e (A_e x)` with `A` `[E, r, in]` and `B` `[E, out, r]`: two grouped matmuls of
rank r through the same routing as the base weight. A dense `W_e + s * B_e A_e` is never built, so a training
step costs `O(rows * r * (in + out))` extra, not `O(E * out * in)`.
"""

import torch

from .reference import scattered_experts_reference
from .routing import Routing


def scattered_experts(
    x: torch.Tensor,
    weight: torch.Tensor,
    routing: Routing,
    *,
    grouped_in: bool = False,
    grouped_out: bool = False,
    gates: torch.Tensor | None = None,
    backend: str = "torch",
) -> torch.Tensor:
    """`y[r] = weight[expert(r)] @ x[r]` for every routed row, on the chosen backend.

    Same arguments and orders as `scattered_experts_reference`, which the "torch" backend runs.
    """
    if backend != "triton":
        return scattered_experts_reference(
            x, weight, routing, grouped_in=grouped_in, grouped_out=grouped_out, gates=gates
        )
    from .combine import scattered_matmul_combine
    from .scatter_matmul import scattered_matmul
    from .schedule import routing_index

    if gates is None:
        return scattered_matmul(x, weight, routing_index(routing), grouped_in=grouped_in, grouped_out=grouped_out)
    if grouped_out:
        raise ValueError("gates combine slots per token, so they need slot-order output (grouped_out=False)")
    return scattered_matmul_combine(x, weight, gates, routing_index(routing), grouped_in=grouped_in)


def combine_slots(y: torch.Tensor, gates: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """`out[t] = sum_j gates[t, j] * y[t*k + j]` for slot-order rows `y`."""
    if backend == "triton":
        from .combine import gate_combine

        return gate_combine(y, gates)
    num_tokens, top_k = gates.shape
    return torch.einsum("tk,tko->to", gates.to(y.dtype), y.view(num_tokens, top_k, -1))


def glu(ab: torch.Tensor, activation, backend: str = "torch") -> torch.Tensor:
    """`act(a) * b` for `[a, b] = ab`; Triton's fused SiLU kernel where it applies."""
    if backend == "triton":
        from .glu import silu_glu
        from .triton_backend import is_silu

        if is_silu(activation):
            return silu_glu(ab)
    gate_half, up_half = ab.chunk(2, dim=-1)
    return activation(gate_half) * up_half


def expert_lora_delta(
    x: torch.Tensor,
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    scaling: float,
    routing: Routing,
    *,
    grouped_in: bool = False,
    grouped_out: bool = False,
    backend: str = "torch",
) -> torch.Tensor:
    """`s * B_e (A_e x)` for every routed row, laid out as `scattered_experts` lays out the same call (no gates).

    Args:
        lora_A: `[E, r, in]`, each expert's down projection.
        lora_B: `[E, out, r]`, each expert's up projection.
        scaling: LoRA's `alpha / r` (or `alpha / sqrt(r)` for rsLoRA); applied to the rank-r rows, the cheapest place.
    """
    low_rank = scattered_experts(x, lora_A, routing, grouped_in=grouped_in, grouped_out=True, backend=backend)
    return scattered_experts(
        low_rank * scaling, lora_B, routing, grouped_in=True, grouped_out=grouped_out, backend=backend
    )

