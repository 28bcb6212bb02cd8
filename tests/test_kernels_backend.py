"""The three layer-level functions with backend="triton" against backend="torch" (the oracle).

The gates are a leaf, so the gate gradient of the fused combine is checked directly.
"""

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import CASE_IDS, CASES, assert_close, grads, make_routing, randn

import jetmoe_kernels

T, E, HIDDEN, FFN, ATTN = 19, 4, 24, 20, 16



# SiLU runs the fused GLU kernel; any other activation (gelu here) the PyTorch GLU between the Triton matmuls.
MLP_CASES = [(*case, F.silu) for case in CASES] + [("random", torch.float32, F.gelu)]
MLP_IDS = [f"{case}-silu" for case in CASE_IDS] + ["random-float32-gelu"]


@pytest.mark.parametrize("routing_kind,dtype,activation", MLP_CASES, ids=MLP_IDS)
def test_expert_mlp(dtype, routing_kind, activation):
    x = randn(T, HIDDEN, dtype=dtype, seed=1)
    w_in = randn(E, 2 * FFN, HIDDEN, dtype=dtype, seed=2, scale=0.2)
    w_out = randn(E, HIDDEN, FFN, dtype=dtype, seed=3, scale=0.2)
    outs = {}
    for backend in ("torch", "triton"):
        routing, gates = make_routing(routing_kind, T, E, 2, dtype, grad=True)
        out = jetmoe_kernels.expert_mlp(x, w_in, w_out, routing, activation, backend=backend)
        outs[backend] = (out, grads(out, (x, w_in, w_out, gates)))
    assert_close(outs["triton"][0], outs["torch"][0], dtype, "out")
    for name, got, want in zip(("dx", "dW_in", "dW_out", "dgates"), outs["triton"][1], outs["torch"][1]):
        assert_close(got, want, dtype, name)


@pytest.mark.parametrize("routing_kind,dtype", CASES, ids=CASE_IDS)
def test_moa_query_then_output(dtype, routing_kind):
    x = randn(T, HIDDEN, dtype=dtype, seed=4)
    w_q = randn(E, ATTN, HIDDEN, dtype=dtype, seed=5, scale=0.2)
    w_o = randn(E, HIDDEN, ATTN, dtype=dtype, seed=6, scale=0.2)
    outs = {}
    for backend in ("torch", "triton"):
        routing, gates = make_routing(routing_kind, T, E, 2, dtype, grad=True)
        queries = jetmoe_kernels.expert_query(x, w_q, routing, backend=backend)
        out = jetmoe_kernels.expert_output(torch.tanh(queries), w_o, routing, backend=backend)  # stand-in attention
        outs[backend] = (queries, out, grads(out, (x, w_q, w_o, gates)))
    assert_close(outs["triton"][0], outs["torch"][0], dtype, "queries")
    assert_close(outs["triton"][1], outs["torch"][1], dtype, "out")
    for name, got, want in zip(("dx", "dW_q", "dW_o", "dgates"), outs["triton"][2], outs["torch"][2]):
        assert_close(got, want, dtype, name)


def test_triton_backend_needs_gpu_or_interpreter(monkeypatch):
    from jetmoe_kernels import triton_backend

    monkeypatch.setattr(triton_backend, "interpreting", lambda: False)  # as on a machine without Triton's interpreter
    routing, _ = make_routing("random", 4, E, 2, torch.float32)
    with pytest.raises(RuntimeError, match="CUDA"):
        triton_backend.expert_query(torch.randn(4, HIDDEN), torch.randn(E, ATTN, HIDDEN), routing)
