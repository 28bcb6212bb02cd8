"""The grouped per-expert weight gradient, by our kernel and by torch's grouped GEMM (`weight_grad`'s route on
Hopper), against an explicit per-expert sum, rows read through the index."""

import pytest
import torch
from kernel_cases import CASE_IDS, CASES, DEVICE, assert_close, make_routing, randn

from jetmoe_kernels.grouped_dw import grouped_dw, grouped_gemm_dw, uses_grouped_gemm, weight_grad
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


@pytest.mark.parametrize("routing_kind", ["random", "empty_expert", "skewed"])
@pytest.mark.parametrize("rows", ["token-grouped", "token-slot", "grouped-grouped"])
def test_grouped_gemm_dw(routing_kind, rows):
    """torch's grouped GEMM over gathered rows gives the per-expert sum, zeros for an expert without rows (bf16, the
    only dtype it takes; on CPU torch's own implementation, on a GPU CUTLASS's)."""
    num_tokens, num_experts, top_k, n, k = 40, 4, 2, 24, 16
    routing, _ = make_routing(routing_kind, num_tokens, num_experts, top_k, torch.bfloat16)
    index = routing_index(routing)
    x_rows = None if rows.startswith("grouped") else index.token_rows
    dy_rows = index.slot_rows if rows.endswith("slot") else None
    x = randn(num_tokens * top_k if x_rows is None else num_tokens, k, dtype=torch.bfloat16, seed=1, grad=False)
    dy = randn(num_tokens * top_k, n, dtype=torch.bfloat16, seed=2, grad=False)

    dw = grouped_gemm_dw(x, dy, index, x_rows, dy_rows)
    want = expected_dw(x, dy, routing, None if x_rows is None else x_rows.long(),
                       None if dy_rows is None else dy_rows.long())  # fmt: skip
    assert dw.shape == (num_experts, n, k) and dw.dtype == torch.bfloat16
    assert_close(dw, want, torch.bfloat16, "dW")
    counts = index.expert_end - index.expert_start
    assert (dw[counts == 0] == 0).all()


def test_grouped_gemm_is_used_for_bf16_on_hopper_only():
    x, dy = torch.zeros(8, 16, device=DEVICE), torch.zeros(16, 24, device=DEVICE)
    weight = torch.zeros(4, 24, 16, device=DEVICE)
    hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
    assert uses_grouped_gemm(x.bfloat16(), dy.bfloat16(), weight.bfloat16()) == hopper
    assert not uses_grouped_gemm(x, dy, weight)  # float32: our kernel, exact
    assert not uses_grouped_gemm(x.bfloat16(), dy.bfloat16(), weight.float())  # LoRA's float32 factors
    assert not uses_grouped_gemm(x[:, :12].bfloat16(), dy.bfloat16(), weight[..., :12].bfloat16())  # 24-byte rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the route to the grouped GEMM is taken on a GPU")
def test_weight_grad_in_the_layout_of_a_transposed_weight():
    """A weight stored transposed gets its gradient in the same strides, whichever route computed it."""
    num_tokens, num_experts, top_k, n, k = 64, 4, 2, 32, 48
    routing, _ = make_routing("random", num_tokens, num_experts, top_k, torch.bfloat16)
    index = routing_index(routing)
    x = randn(num_tokens, k, dtype=torch.bfloat16, seed=1, grad=False)
    dy = randn(num_tokens * top_k, n, dtype=torch.bfloat16, seed=2, grad=False)
    weight = torch.zeros(num_experts, k, n, device=DEVICE, dtype=torch.bfloat16).transpose(1, 2)
    dw = weight_grad(x, dy, weight, index, index.token_rows, None)
    assert dw.stride() == weight.stride()
    assert_close(dw, expected_dw(x, dy, routing, index.token_rows.long(), None), torch.bfloat16, "dW")
