"""The scattered expert matmul (and its backward: input gradient and grouped weight gradient) vs the reference."""

import pytest
import torch
from kernel_cases import CASE_IDS, CASES, assert_close, grads, make_routing, randn

from jetmoe_kernels import scattered_experts_reference
from jetmoe_kernels.scatter_matmul import scattered_matmul, tma_readable
from jetmoe_kernels.schedule import routing_index

T, E = 19, 4  # 19 tokens: no multiple of the interpreter's 16-row tiles

# (input rows, grouped_in, grouped_out): token rows read k times, slot rows, grouped rows; out grouped or by slot.
LAYOUTS = [("token", False, True), ("token", False, False), ("slot", False, False), ("grouped", True, False)]


@pytest.mark.parametrize("routing_kind,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: f"{layout[0]}->{'grouped' if layout[2] else 'slot'}")
def test_scattered_matmul_matches_reference(dtype, routing_kind, layout):
    rows, grouped_in, grouped_out = layout
    top_k, in_size, out_size = 2, 24, 40
    routing, _ = make_routing(routing_kind, T, E, top_k, dtype)
    x = randn(T if rows == "token" else T * top_k, in_size, dtype=dtype, seed=1)
    weight = randn(E, out_size, in_size, dtype=dtype, seed=2, scale=0.2)

    ours = scattered_matmul(x, weight, routing_index(routing), grouped_in, grouped_out)
    ref = scattered_experts_reference(x, weight, routing, grouped_in=grouped_in, grouped_out=grouped_out)
    assert_close(ours, ref, dtype, "y")
    for name, got, want in zip(("dx", "dW"), grads(ours, (x, weight)), grads(ref, (x, weight))):
        assert_close(got, want, dtype, name)


def test_top1_all_tokens_on_one_expert():
    routing, _ = make_routing("one_expert", T, E, 1, torch.float32)
    x = randn(T, 20, dtype=torch.float32, seed=3)
    weight = randn(E, 36, 20, dtype=torch.float32, seed=4)
    ours = scattered_matmul(x, weight, routing_index(routing))
    ref = scattered_experts_reference(x, weight, routing)
    assert_close(ours, ref, torch.float32, "y")
    got_dx, got_dw = grads(ours, (x, weight))
    want_dx, want_dw = grads(ref, (x, weight))
    assert_close(got_dx, want_dx, torch.float32, "dx")
    assert_close(got_dw, want_dw, torch.float32, "dW")
    assert (got_dw[torch.arange(E) != 2] == 0).all(), "experts without tokens must get a zero gradient"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_weight_tma_and_pointer_loads_agree(dtype):
    """Weights TMA can read take the descriptor path; rows of 21 bf16 (42 bytes, not 16-byte aligned) the pointers."""
    routing, _ = make_routing("random", T, E, 2, dtype)
    index = routing_index(routing)
    for in_size in (24, 21):
        weight = randn(E, 40, in_size, dtype=dtype, seed=5, scale=0.2)
        assert tma_readable(weight) == (in_size * weight.element_size() % 16 == 0)
        x = randn(T, in_size, dtype=dtype, seed=6)
        ours = scattered_matmul(x, weight, index, grouped_out=True)
        ref = scattered_experts_reference(x, weight, routing, grouped_out=True)
        assert_close(ours, ref, dtype, f"y, in_size={in_size}")
        for name, got, want in zip(("dx", "dW"), grads(ours, (x, weight)), grads(ref, (x, weight))):
            assert_close(got, want, dtype, f"{name}, in_size={in_size}")
