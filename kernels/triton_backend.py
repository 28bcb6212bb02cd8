"""The three layer-level expert functions on the Triton kernels; same signatures and semantics as the reference.

MLP experts: grouped `W_in` matmul reading token rows through the routing index -> fused SiLU-GLU -> `W_out`
matmul with the gate-weighted combine. MoA: scattered query projection (token rows in, slot rows out) and the
output projection with the combine. Activations other than SiLU fall back to PyTorch for the GLU only.
"""

import torch
import torch.nn.functional as F
from torch import nn

from .combine import scattered_matmul_combine
from .glu import scattered_matmul_silu_glu
from .routing import Routing
from .scatter_matmul import scattered_matmul
from .schedule import interpreting, routing_index


def _check_device(x: torch.Tensor) -> None:
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            "the Triton expert kernels need a CUDA tensor, or TRITON_INTERPRET=1 set before Triton is imported"
        )


def is_silu(activation) -> bool:
    return activation is F.silu or isinstance(activation, nn.SiLU) or type(activation).__name__ == "SiLUActivation"


def expert_mlp(x, input_weight, output_weight, routing: Routing, activation):
    _check_device(x)
    index = routing_index(routing)
    if is_silu(activation):  # [T*k, ffn] grouped by expert, the GLU in the matmul's epilogue
        hidden = scattered_matmul_silu_glu(x, input_weight, index)
    else:
        gate_half, up_half = scattered_matmul(x, input_weight, index, grouped_out=True).chunk(2, dim=-1)
        hidden = activation(gate_half) * up_half
    return scattered_matmul_combine(hidden, output_weight, routing.gates, index, grouped_in=True)


def expert_query(x, weight, routing: Routing):
    _check_device(x)
    return scattered_matmul(x, weight, routing_index(routing))


def expert_output(attn, weight, routing: Routing):
    _check_device(attn)
    return scattered_matmul_combine(attn, weight, routing.gates, routing_index(routing))
