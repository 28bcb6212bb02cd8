"""Routing bookkeeping kernel against PyTorch's `route` (sort + histogram): identical grouping, order and index."""

import pytest
import torch
from kernel_cases import ROUTINGS, router_logits

import jetmoe_kernels
from jetmoe_kernels.schedule import routing_index
from test_kernels_topk_gates import assert_gates_match


@pytest.mark.parametrize("routing_kind", ROUTINGS)
@pytest.mark.parametrize("num_tokens,num_experts,top_k", [(37, 5, 2), (300, 8, 2), (64, 3, 1), (9, 16, 4)])
def test_grouping_kernel_matches_torch_route(routing_kind, num_tokens, num_experts, top_k):
    logits = router_logits(routing_kind, num_tokens, num_experts, seed=num_tokens)
    ours = jetmoe_kernels.route(logits, top_k, torch.float32, backend="triton")
    ref = jetmoe_kernels.route(logits, top_k, torch.float32, backend="torch")
    assert_gates_match(ours.gates, ref.gates)  # bit for bit on a GPU; CPU: see kernels/topk_gates.py
    for field in ("experts", "sorted_experts", "sorted_slots", "expert_counts", "expert_offsets"):
        assert torch.equal(getattr(ours, field).long(), getattr(ref, field)), field
    index, ref_index = routing_index(ours), routing_index(ref)  # the kernel's, and the one built from the torch route
    for field in ("token_rows", "slot_rows", "expert_start", "expert_end"):
        assert getattr(index, field).dtype == torch.int32
        assert torch.equal(getattr(index, field), getattr(ref_index, field)), field
