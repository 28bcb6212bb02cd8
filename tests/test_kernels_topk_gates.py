"""Top-k gates kernel against PyTorch's topk, softmax and cast (the torch path of `route`): experts, gates, gradient.

On a GPU the gates must be bit for bit torch's. In Triton's CPU interpreter they cannot be: its exp is numpy's,
torch's CPU softmax has its own vectorised exp (neither is correctly rounded) and multiplies by the reciprocal of the
sum, and the interpreter rounds bf16 stores toward zero. There float32 gates differ by up to 4 ulp (over 40k gates:
28% by 1, 4% by 2, 0.3% by 3, 5 by 4) and bf16 gates by up to 1 ulp.
"""

import pytest
import torch
from kernel_cases import DEVICE, ROUTINGS, router_logits

import jetmoe_kernels
from jetmoe_kernels.topk_gates import top_k_gates

# (tokens, experts, k): experts not a power of two, k = 1, k = E, one token, more tokens than a program's tile
SHAPES = [(37, 5, 2), (300, 8, 2), (64, 3, 1), (9, 16, 4), (1, 8, 8), (20, 7, 3)]
GATE_DTYPES = [torch.float32, torch.bfloat16]
ULPS = {torch.float32: 0, torch.bfloat16: 0} if torch.cuda.is_available() else {torch.float32: 4, torch.bfloat16: 1}


def torch_gates(logits, top_k, gate_dtype):
    top_logits, experts = logits.topk(top_k, dim=-1)
    return torch.softmax(top_logits, dim=-1).to(gate_dtype), experts


def assert_gates_match(ours: torch.Tensor, ref: torch.Tensor):
    """Gates (positive floats, whose bit patterns count ulps) within `ULPS` of the reference."""
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16}[ours.dtype]
    ulps = (ours.view(bits).long() - ref.view(bits).long()).abs().max().item()
    assert ulps <= ULPS[ours.dtype], f"gates differ by {ulps} ulp"


def assert_grads_match(ours: torch.Tensor, ref: torch.Tensor):
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("gate_dtype", GATE_DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens,num_experts,top_k", SHAPES)
@pytest.mark.parametrize("routing_kind", ROUTINGS)
def test_top_k_gates_match_torch(routing_kind, num_tokens, num_experts, top_k, gate_dtype):
    logits = router_logits(routing_kind, num_tokens, num_experts, seed=num_tokens).requires_grad_()
    gates, experts = top_k_gates(logits, top_k, gate_dtype)
    ref_gates, ref_experts = torch_gates(logits, top_k, gate_dtype)
    assert torch.equal(experts, ref_experts)
    assert_gates_match(gates.detach(), ref_gates.detach())
    d_gates = torch.randn(num_tokens, top_k, generator=torch.Generator().manual_seed(1)).to(DEVICE, gate_dtype)
    (grad,) = torch.autograd.grad(gates, logits, d_gates)
    (ref_grad,) = torch.autograd.grad(ref_gates, logits, d_gates)
    assert_grads_match(grad, ref_grad)


def test_gradient_when_only_some_gates_are_used():
    logits = router_logits("random", 70, 6, seed=3).requires_grad_()
    weights = torch.linspace(-1.0, 2.0, 70, device=DEVICE)
    grads = [torch.autograd.grad((fn(logits, 3, torch.float32)[0][:, 1] * weights).sum(), logits)[0]
             for fn in (top_k_gates, torch_gates)]  # fmt: skip
    assert_grads_match(*grads)


def test_tied_logits_put_the_lower_expert_first():
    """torch.topk leaves the order of ties unspecified (on CPU it is not the lower expert first): compare with a
    stable descending sort, which is."""
    logits = torch.randint(-2, 3, (50, 8), generator=torch.Generator().manual_seed(0)).float().to(DEVICE)
    logits[0] = 0.0  # a collapsed router: every expert tied
    gates, experts = top_k_gates(logits, 3, torch.float32)
    top_logits, ref_experts = logits.sort(dim=-1, descending=True, stable=True)
    assert torch.equal(experts, ref_experts[:, :3])
    assert_gates_match(gates, torch.softmax(top_logits[:, :3], dim=-1))


def test_strided_logits():
    logits = router_logits("random", 8, 40, seed=5).t().requires_grad_()  # [40 tokens, 8 experts], transposed
    gates, experts = top_k_gates(logits, 2, torch.float32)
    ref_gates, ref_experts = torch_gates(logits, 2, torch.float32)
    assert torch.equal(experts, ref_experts)
    assert_gates_match(gates.detach(), ref_gates.detach())
    assert_grads_match(*(torch.autograd.grad(g.sum() + (g * g).sum(), logits)[0] for g in (gates, ref_gates)))


@pytest.mark.parametrize("gate_dtype", GATE_DTYPES, ids=str)
def test_triton_route_matches_torch_route(gate_dtype):
    logits = router_logits("skewed", 45, 6, seed=2).requires_grad_()
    ours = jetmoe_kernels.route(logits, 2, gate_dtype, backend="triton")
    ref = jetmoe_kernels.route(logits, 2, gate_dtype, backend="torch")
    assert torch.equal(ours.experts, ref.experts) and torch.equal(ours.sorted_slots, ref.sorted_slots)
    assert_gates_match(ours.gates.detach(), ref.gates.detach())
    d_gates = torch.randn(45, 2, generator=torch.Generator().manual_seed(4)).to(DEVICE, gate_dtype)
    assert_grads_match(*(torch.autograd.grad(r.gates, logits, d_gates)[0] for r in (ours, ref)))
