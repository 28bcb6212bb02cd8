"""PEFT's LoRA wrapper for a JetMoE expert weight, computed through the routing instead of as a dense `W + s*BA`.

It is PEFT's `ParamWrapper` — same `lora_A` `[r*E, in]` / `lora_B` `[out, r*E]` parameters, same state-dict keys,
same merge — so an adapter trained with it is an ordinary PEFT adapter. Only the forward differs: stock
`ParamWrapper` folds `W + s*BA` for every expert on every call; this one adds `s*B_e (A_e x)` on the rows each
expert actually receives (`jetmoe_kernels.lora.scattered_experts` with a LoRA pair: on Triton, fused into the base
expert matmul).
"""

import copy

import torch
from peft.tuners.lora.layer import ParamWrapper
from torch import nn

from jetmoe_kernels import Routing
from jetmoe_kernels.lora import ExpertLora, combine_slots, expert_lora_delta, glu, scattered_experts


def expert_factors(lora_A: torch.Tensor, lora_B: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PEFT's `ParamWrapper` layout as per-expert factors: `A` `[E, r, in]` and `B` `[E, out, r]`, views (no copy).

    PEFT stacks the experts' `A_e` row-blocks expert-major (`lora_A[e*r + j]`) but interleaves `B`'s columns
    expert-minor (`lora_B[:, j*E + e]`). Gradients flow back to PEFT's own parameters through both.
    """
    out_features, stacked_rank = lora_B.shape
    rank = stacked_rank // num_experts
    per_expert_A = lora_A.view(num_experts, rank, lora_A.shape[-1])
    return per_expert_A, lora_B.view(out_features, rank, num_experts).permute(2, 0, 1)


class RoutedExpertLora(ParamWrapper):
    """LoRA on a `ParallelExperts` weight `[E, out, in]`; each expert has its own rank-r pair."""

    def __init__(self, base_layer, adapter_name, parameter_name, config, **kwargs):
        # Stock ParamWrapper refuses dropout because it cannot factor x out of W + BA; the routed form can.
        super().__init__(base_layer, adapter_name, parameter_name, config=_without_dropout(config), **kwargs)
        if config.lora_dropout:
            self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout)

    def forward(self, x: torch.Tensor, routing: Routing, *, gates=None, **layout) -> torch.Tensor:
        """Same call as `ParallelExperts.forward`; `layout` carries `backend` and `grouped_in`/`grouped_out`.

        One active adapter (training): its update goes through the base matmul (fused on Triton) and, with gates,
        base and LoRA rows are combined once.
        """
        self._check_forward_args(x, routing, **layout)
        if self.disable_adapters and self.merged:
            self.unmerge()
        adapters = [name for name in self.active_adapters if name in self.lora_A]
        if self.disable_adapters or self.merged or not adapters:
            return self.base_layer(x, routing, gates=gates, **layout)
        if len(adapters) > 1:
            return self._several_adapters(x, routing, adapters, gates, layout)
        return scattered_experts(x, self.get_param(), routing, gates=gates, lora=self._expert_lora(adapters[0]),
                                 **layout)  # fmt: skip

    def _expert_lora(self, adapter: str) -> ExpertLora:
        """The adapter's per-expert factors (views of its parameters), its scaling, and its dropout module's
        probability in training (applied by the expert kernels, the same draws as the module's)."""
        lora_A, lora_B = expert_factors(self.lora_A[adapter].weight, self.lora_B[adapter].weight, self.num_experts)
        dropout = self.lora_dropout[adapter]
        probability = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        return ExpertLora(lora_A, lora_B, self.scaling[adapter], probability)

    def _several_adapters(self, x, routing: Routing, adapters: list[str], gates, layout: dict) -> torch.Tensor:
        """Adapters active together (PEFT allows it): each update summed onto the base rows, then the GLU (the
        MLP's input projection) or the combine and bias (the output projections), once."""
        layout = dict(layout)
        activation, bias = layout.pop("glu_activation", None), layout.pop("bias", None)
        result = self.base_layer(x, routing, **layout)
        for adapter in adapters:
            lora = self._expert_lora(adapter)
            x_lora = self.lora_dropout[adapter](x)
            result = result + expert_lora_delta(x_lora, lora.A, lora.B, lora.scaling, routing, **layout)
        if activation is not None:
            result = glu(result, activation, layout["backend"])
        if gates is not None:
            result = combine_slots(result, gates, layout["backend"])
        return result if bias is None else result + bias


def _without_dropout(config):
    """A copy of the LoRA config with dropout off, for `ParamWrapper`'s checks; the original keeps its value."""
    config = copy.copy(config)
    config.lora_dropout = 0.0
    return config
