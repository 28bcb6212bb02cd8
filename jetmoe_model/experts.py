"""JetMoE's two expert layers — MoA (attention query/output experts) and MoE (GLU MLP experts) — and their router.

Parameter names and shapes follow the JetMoE checkpoint layout (`input_linear.weight` `[E, out, in]`,
`router.layer.weight`, a shared output `bias`), so transformers' checkpoints load unchanged. The expert math is
delegated to `kernels`, which runs it with the PyTorch reference or the Triton kernels. Each expert projection is
called as a module, so LoRA wrappers (PEFT's stock `ParamWrapper` or our routed one) see every expert matmul.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN

import jetmoe_kernels
from jetmoe_kernels import Routing
from jetmoe_kernels.lora import scattered_experts

from .layers import resolve_backend


class ParallelExperts(nn.Module):
    """One weight `[num_experts, output_size, input_size]` holding every expert's linear map."""

    def __init__(self, num_experts: int, input_size: int, output_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, output_size, input_size))

    def forward(
        self,
        x: torch.Tensor,
        routing: Routing,
        *,
        backend: str,
        grouped_in: bool = False,
        grouped_out: bool = False,
        gates: torch.Tensor | None = None,
        glu_activation=None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each routed row times its expert's weight; rows and orders as in
        `jetmoe_kernels.scattered_experts_reference`.

        `glu_activation` returns `act(a) * b` of the output's halves instead (the MLP's input projection); `bias`
        is added to the gate-combined token rows (the output projections; the layer owns it).
        """
        return scattered_experts(
            x, self.weight, routing, grouped_in=grouped_in, grouped_out=grouped_out, gates=gates, backend=backend,
            glu_activation=glu_activation, bias=bias,
        )  # fmt: skip

    def extra_repr(self) -> str:
        # Under ZeRO-3 `.weight` is this rank's (empty) shard; `ds_shape` is the full one.
        num_experts, output_size, input_size = getattr(self.weight, "ds_shape", self.weight.shape)
        return f"num_experts={num_experts}, input_size={input_size}, output_size={output_size}"


class TopKRouter(nn.Module):
    """Linear router; keeps its float32 logits for the router losses."""

    def __init__(self, input_size: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.layer = nn.Linear(input_size, num_experts, bias=False)

    def forward(self, x: torch.Tensor, backend: str = "torch") -> tuple[Routing, torch.Tensor]:
        logits = self.layer(x).float()
        return jetmoe_kernels.route(logits, self.top_k, x.dtype, backend), logits


class MoEMLP(nn.Module):
    """Mixture of GLU MLP experts: `sum_j g_j * W_out[e_j] (act(a) * b) + bias` with `[a, b] = W_in[e_j] x`."""

    def __init__(self, config):
        super().__init__()
        hidden, ffn = config.hidden_size, config.intermediate_size
        self.backend = config.moe_backend
        self.activation = ACT2FN[config.activation_function]
        self.bias = nn.Parameter(torch.empty(hidden))
        self.input_linear = ParallelExperts(config.num_local_experts, hidden, 2 * ffn)
        self.output_linear = ParallelExperts(config.num_local_experts, ffn, hidden)
        self.router = TopKRouter(hidden, config.num_local_experts, config.num_experts_per_tok)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the layer output and the router logits `[B*L, E]`."""
        flat = x.reshape(-1, x.shape[-1])
        backend = resolve_backend(self.backend, x.device)
        routing, logits = self.router(flat, backend)
        hidden = self.input_linear(flat, routing, backend=backend, grouped_out=True, glu_activation=self.activation)
        out = self.output_linear(hidden, routing, backend=backend, grouped_in=True, gates=routing.gates, bias=self.bias)
        return out.view_as(x), logits


class MoAExperts(nn.Module):
    """The expert half of Mixture-of-Attention: per-expert query ("map") and output ("reduce") projections."""

    def __init__(self, config):
        super().__init__()
        hidden, attn_size = config.hidden_size, config.kv_channels * config.num_key_value_heads
        self.backend = config.moe_backend
        self.bias = nn.Parameter(torch.empty(hidden))
        self.input_linear = ParallelExperts(config.num_local_experts, hidden, attn_size)
        self.output_linear = ParallelExperts(config.num_local_experts, attn_size, hidden)
        self.router = TopKRouter(hidden, config.num_local_experts, config.num_experts_per_tok)

    def map(self, x: torch.Tensor) -> tuple[torch.Tensor, Routing, torch.Tensor]:
        """Queries of each token by each of its k experts: `[B, L, k, attn_size]`, plus routing and logits."""
        flat = x.reshape(-1, x.shape[-1])
        backend = resolve_backend(self.backend, x.device)
        routing, logits = self.router(flat, backend)
        queries = self.input_linear(flat, routing, backend=backend)
        return queries.view(*x.shape[:-1], routing.top_k, -1), routing, logits

    def reduce(self, attn: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Output projection of each slot's attention `[B, L, k, attn_size]`, gate-weighted, plus bias."""
        batch, length, top_k, attn_size = attn.shape
        backend = resolve_backend(self.backend, attn.device)
        out = self.output_linear(
            attn.reshape(-1, attn_size), routing, backend=backend, gates=routing.gates, bias=self.bias
        )
        return out.view(batch, length, -1)
