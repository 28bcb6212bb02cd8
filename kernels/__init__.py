"""Expert computations for JetMoE's MoA and MoE layers: Triton kernels and their PyTorch reference.

The model calls the three layer-level functions below with a `backend` ("torch" or "triton"); the torch backend
is the reference that every Triton kernel is tested against.
"""

from .reference import (
    expert_mlp_reference,
    expert_output_reference,
    expert_query_reference,
    scattered_experts_reference,
)
from .routing import Routing, route

BACKENDS = ("torch", "triton")


def _triton():
    from . import triton_backend  # imported lazily: Triton is only needed when selected

    return triton_backend


def expert_mlp(x, input_weight, output_weight, routing: Routing, activation, backend: str = "torch"):
    if backend == "triton":
        return _triton().expert_mlp(x, input_weight, output_weight, routing, activation)
    return expert_mlp_reference(x, input_weight, output_weight, routing, activation)


def expert_query(x, weight, routing: Routing, backend: str = "torch"):
    if backend == "triton":
        return _triton().expert_query(x, weight, routing)
    return expert_query_reference(x, weight, routing)


def expert_output(attn, weight, routing: Routing, backend: str = "torch"):
    if backend == "triton":
        return _triton().expert_output(attn, weight, routing)
    return expert_output_reference(attn, weight, routing)


__all__ = [
    "BACKENDS",
    "Routing",
    "expert_mlp",
    "expert_output",
    "expert_query",
    "route",
    "scattered_experts_reference",
]
