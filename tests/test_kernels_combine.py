"""Gate-weighted combine, alone and fused behind the last expert matmul (with the output bias): outputs and x, W,
gate and bias gradients."""

import pytest
import torch
from kernel_cases import CASE_IDS, CASES, DTYPES, assert_close, grads, make_routing, randn

from jetmoe_kernels import scattered_experts_reference
from jetmoe_kernels.combine import gate_combine, scattered_matmul_combine
from jetmoe_kernels.schedule import routing_index

T, E = 23, 4


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("top_k", [1, 3])
def test_gate_combine(dtype, top_k):
    y = randn(T * top_k, 40, dtype=dtype, seed=1)
    gates = randn(T, top_k, dtype=dtype, seed=2)
    ours = gate_combine(y, gates)
    ref = torch.einsum("tk,tko->to", gates, y.view(T, top_k, -1))
    assert_close(ours, ref, dtype, "out")
    for name, got, want in zip(("dy", "dg"), grads(ours, (y, gates)), grads(ref, (y, gates))):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("routing_kind,dtype", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("grouped_in", [True, False], ids=["grouped-in", "slot-in"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["", "bias"])
def test_scattered_matmul_combine(dtype, routing_kind, grouped_in, with_bias):
    top_k, in_size, out_size = 2, 20, 24
    routing, gates = make_routing(routing_kind, T, E, top_k, dtype, grad=True)
    x = randn(T * top_k, in_size, dtype=dtype, seed=3)
    weight = randn(E, out_size, in_size, dtype=dtype, seed=4, scale=0.2)
    bias = randn(out_size, dtype=dtype, seed=8) if with_bias else None

    ours = scattered_matmul_combine(x, weight, routing.gates, routing_index(routing), grouped_in, bias=bias)
    ref = scattered_experts_reference(x, weight, routing, grouped_in=grouped_in, gates=routing.gates)
    ref = ref + bias if with_bias else ref
    assert_close(ours, ref, dtype, "out")
    inputs = (x, weight, gates) + ((bias,) if with_bias else ())
    for name, got, want in zip(("dx", "dW", "dgates", "dbias"), grads(ours, inputs), grads(ref, inputs)):
        assert_close(got, want, dtype, name)


def test_scattered_matmul_combine_with_frozen_gates():
    """Gates without gradient (a frozen router): y is not kept, dx and dW still match."""
    routing, _ = make_routing("random", T, E, 2, torch.float32, grad=False)
    x = randn(T * 2, 20, dtype=torch.float32, seed=5)
    weight = randn(E, 24, 20, dtype=torch.float32, seed=6)
    ours = scattered_matmul_combine(x, weight, routing.gates, routing_index(routing))
    ref = scattered_experts_reference(x, weight, routing, gates=routing.gates)
    for name, got, want in zip(("dx", "dW"), grads(ours, (x, weight)), grads(ref, (x, weight))):
        assert_close(got, want, torch.float32, name)
