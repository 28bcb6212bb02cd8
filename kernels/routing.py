"""Top-k routing bookkeeping shared by every expert backend.

Everything here stays on the device: no `.tolist()` or `.item()`, so a training step never waits on the host.
"""

from dataclasses import dataclass

import torch


@dataclass
class Routing:
    """Where each token's top-k slots go, in the two orders the expert matmuls use.

    "Slot order" is row `t * top_k + j` for token `t`'s `j`-th choice; "grouped order" sorts those slots by expert.
    """

    gates: torch.Tensor  # [T, k] softmax over the top-k router logits
    experts: torch.Tensor  # [T, k] chosen expert of each slot
    sorted_experts: torch.Tensor  # [T*k] expert of each grouped row, ascending
    sorted_slots: torch.Tensor  # [T*k] slot index (t*k + j) of each grouped row
    expert_counts: torch.Tensor  # [E] rows routed to each expert
    expert_offsets: torch.Tensor  # [E] end of each expert's group of rows (cumsum of counts)

    @property
    def num_tokens(self) -> int:
        return self.gates.shape[0]

    @property
    def top_k(self) -> int:
        return self.gates.shape[1]

    @property
    def num_experts(self) -> int:
        return self.expert_counts.shape[0]


def route(router_logits: torch.Tensor, top_k: int, gate_dtype: torch.dtype, backend: str = "torch") -> Routing:
    """Top-k routing as JetMoE does it: softmax over the k largest logits (in float32), gates cast to `gate_dtype`.

    The "triton" backend runs two kernels instead of about a dozen ops: the gates and chosen experts in one
    (`kernels.topk_gates`, which puts the lower expert first where logits tie), the slots grouped by expert in the
    other (`kernels.grouping`, instead of a sort and a histogram); it keeps the int32 index the expert kernels read on
    the routing. The result is the same (in Triton's CPU interpreter, up to the gates' last few bits).
    """
    if backend == "triton":
        return _routed_by_kernels(router_logits, top_k, gate_dtype)
    num_experts = router_logits.shape[-1]
    top_logits, experts = router_logits.float().topk(top_k, dim=-1)
    gates = torch.softmax(top_logits, dim=-1).to(gate_dtype)
    flat_experts = experts.reshape(-1)
    sorted_experts, sorted_slots = flat_experts.sort(stable=True)
    counts = torch.zeros(num_experts, dtype=torch.long, device=router_logits.device)
    counts.scatter_add_(0, flat_experts, torch.ones_like(flat_experts))
    return Routing(
        gates=gates,
        experts=experts,
        sorted_experts=sorted_experts,
        sorted_slots=sorted_slots,
        expert_counts=counts,
        expert_offsets=counts.cumsum(0),
    )


def _routed_by_kernels(router_logits: torch.Tensor, top_k: int, gate_dtype: torch.dtype) -> Routing:
    from .grouping import group_slots  # imported lazily: Triton is only needed when selected
    from .schedule import RoutingIndex
    from .topk_gates import top_k_gates

    gates, experts = top_k_gates(router_logits.float(), top_k, gate_dtype)
    grouped = group_slots(experts, router_logits.shape[-1])
    routing = Routing(
        gates=gates,
        experts=experts,
        sorted_experts=grouped["sorted_experts"],
        sorted_slots=grouped["sorted_slots"],
        expert_counts=grouped["expert_counts"],
        expert_offsets=grouped["expert_end"],
    )
    routing._triton_index = RoutingIndex(
        token_rows=grouped["token_rows"],
        slot_rows=grouped["slot_rows"],
        expert_start=grouped["expert_start"],
        expert_end=grouped["expert_end"],
        _plans={},
    )
    return routing
