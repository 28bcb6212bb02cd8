"""The grouped per-expert weight-gradient kernel against an explicit per-expert sum, rows read through the index."""

import pytest
import torch
from kernel_cases import CASE_IDS, CASES, assert_close, make_routing, randn

from jetmoe_kernels.grouped_dw import grouped_dw
from jetmoe_kernels.schedule import routing_index


def expected_dw(x, dy, routing, x_rows, dy_rows):
    num_experts = routing.num_experts
    x_g = x.float()[x_rows] if x_rows is not None else x.float()
    dy_g = dy.float()[dy_rows] if dy_rows is not None else dy.float()
    onehot = torch.nn.functional.one_hot(routing.sorted_experts, num_experts).float()  # [rows, E]
    return torch.einsum("re,rn,rk->enk", onehot, dy_g, x_g)


@pytest.mark.parametrize("routing_kind,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dy_order", ["grouped", "slot"])
def test_grouped_dw(dtype, routing_kind, dy_order):
    num_tokens, num_experts, top_k, n, k = 21, 4, 2, 36, 20
    routing, _ = make_routing(routing_kind, num_tokens, num_experts, top_k, dtype)
    index = routing_index(routing)
    x = randn(num_tokens, k, dtype=dtype, seed=1, grad=False)  # token rows, read through the index
    dy = randn(num_tokens * top_k, n, dtype=dtype, seed=2, grad=False)  # grouped or slot rows
    dy_rows = index.slot_rows if dy_order == "slot" else None

    dw = grouped_dw(x, dy, torch.Size((num_experts, n, k)), dtype, index, index.token_rows, dy_rows)
    want = expected_dw(x, dy, routing, index.token_rows.long(), None if dy_rows is None else dy_rows.long())
    assert_close(dw, want, dtype, "dW")
    if routing_kind == "skewed":
        assert (dw[2:] == 0).all()
