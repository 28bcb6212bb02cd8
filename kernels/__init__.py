"""Expert computations for JetMoE's MoA and MoE layers: Triton kernels and their PyTorch reference."""

from .reference import scattered_experts_reference
from .routing import Routing, route

__all__ = ["Routing", "route", "scattered_experts_reference"]
