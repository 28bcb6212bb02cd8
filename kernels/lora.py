"""Expert matmuls one projection at a time, and the LoRA update of an expert projection.

LoRA wraps each expert projection on its own (PEFT's wrappers sit on the `ParallelExperts` module), so the model
calls the projections one by one through these functions rather than the fused layer functions; on Triton they
launch the same kernels as `triton_backend.expert_mlp` and friends.

The LoRA update of expert e is `s * B_e (A_e x)` with `A` `[E, r, in]` and `B` `[E, out, r]`: two grouped matmuls of
rank r through the same routing as the base weight. A dense `W_e + s * B_e A_e` is never built, so a training
step costs `O(rows * r * (in + out))` extra, not `O(E * out * in)`. On Triton the up projection is fused into the
base matmul (and its backward into the input gradient's matmul), so no `[T*k, out]` update is written, added or
combined on its own; the PyTorch backend computes base, update and combine one after the other: the oracle.
"""

from typing import NamedTuple

import torch

from .reference import scattered_experts_reference
from .routing import Routing


class ExpertLora(NamedTuple):
    """One LoRA pair on an expert weight: `scaling * B_e (A_e dropout(x))` added to every routed row.

    The factors may be in another dtype than `x` and strided (PEFT's float32 adapters, viewed per expert): they are
    cast for the matmuls, and their gradients come back in their own dtype. LoRA reads the base input `x` after a
    dropout with probability `dropout` (0: `x` itself), drawn as `nn.Dropout` draws it in training; the Triton
    backend applies its backward inside the input gradient's matmul.
    """

    A: torch.Tensor  # [E, r, in]
    B: torch.Tensor  # [E, out, r]
    scaling: float
    dropout: float = 0.0


def scattered_experts(
    x: torch.Tensor,
    weight: torch.Tensor,
    routing: Routing,
    *,
    grouped_in: bool = False,
    grouped_out: bool = False,
    gates: torch.Tensor | None = None,
    backend: str = "torch",
    lora: ExpertLora | None = None,
    glu_activation=None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`y[r] = weight[expert(r)] @ x[r]` for every routed row, on the chosen backend; plus `lora`'s update.

    Same arguments and orders as `scattered_experts_reference`, which the "torch" backend runs. With gates, the
    LoRA update is added to each slot's row before the combine. With `glu_activation` (grouped output only), the
    result is `act(a) * b` of its two halves `[a, b]`: on Triton, SiLU without LoRA runs in the matmul's epilogue.
    `bias` (with gates only) is added to each token's combined row; on Triton, in the combine's pass.
    """
    if gates is not None and grouped_out:
        raise ValueError("gates combine slots per token, so they need slot-order output (grouped_out=False)")
    if bias is not None and gates is None:
        raise ValueError("the output bias is added to the combined token rows: it needs gates")
    if glu_activation is not None:
        return _with_glu(x, weight, routing, grouped_in, grouped_out, backend, lora, glu_activation)
    if backend != "triton":
        out = _reference_with_lora(x, weight, routing, grouped_in, grouped_out, gates, lora)
        return out if bias is None else out + bias
    from .combine import scattered_matmul_combine
    from .scatter_matmul import scattered_matmul
    from .schedule import routing_index

    index = routing_index(routing)
    if gates is None:
        return scattered_matmul(x, weight, index, grouped_in=grouped_in, grouped_out=grouped_out, lora=lora)
    return scattered_matmul_combine(x, weight, gates, index, grouped_in=grouped_in, lora=lora, bias=bias)


def _with_glu(x, weight, routing, grouped_in, grouped_out, backend, lora, activation) -> torch.Tensor:
    if not grouped_out:
        raise ValueError("the GLU takes the input projection's [a, b] rows in grouped order (grouped_out=True)")
    if backend == "triton" and lora is None:
        from .glu import scattered_matmul_silu_glu
        from .schedule import routing_index
        from .triton_backend import is_silu

        if is_silu(activation):
            return scattered_matmul_silu_glu(x, weight, routing_index(routing), grouped_in=grouped_in)
    ab = scattered_experts(x, weight, routing, grouped_in=grouped_in, grouped_out=True, backend=backend, lora=lora)
    return glu(ab, activation, backend)


def _reference_with_lora(x, weight, routing, grouped_in, grouped_out, gates, lora) -> torch.Tensor:
    """The PyTorch oracle: base rows, plus the LoRA update as its own two rank-r matmuls (after PyTorch's own
    dropout and its backward), then the combine."""
    layout = dict(grouped_in=grouped_in, grouped_out=grouped_out)
    if lora is None:
        return scattered_experts_reference(x, weight, routing, **layout, gates=gates)
    y = scattered_experts_reference(x, weight, routing, **layout)
    x_lora = torch.native_dropout(x, lora.dropout, True)[0] if lora.dropout else x
    y = y + expert_lora_delta(x_lora, lora.A, lora.B, lora.scaling, routing, **layout)
    return y if gates is None else combine_slots(y, gates)


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
        lora_A: `[E, r, in]`, each expert's down projection (cast to `x`'s dtype, as is `lora_B`).
        lora_B: `[E, out, r]`, each expert's up projection.
        scaling: LoRA's `alpha / r` (or `alpha / sqrt(r)` for rsLoRA); applied to the rank-r rows, the cheapest place.
    """
    lora_A, lora_B = lora_A.to(x.dtype), lora_B.to(x.dtype)
    low_rank = scattered_experts(x, lora_A, routing, grouped_in=grouped_in, grouped_out=True, backend=backend)
    return scattered_experts(
        low_rank * scaling, lora_B, routing, grouped_in=True, grouped_out=grouped_out, backend=backend
    )

