"""The routed LoRA update equals the naive dense one, `(W_e + s * B_e A_e) x`, in outputs and gradients."""

import pytest
import torch
from kernel_cases import DEVICE  # first: sets TRITON_INTERPRET on machines without a GPU

from kernels import route
from kernels.lora import combine_slots, expert_lora_delta, scattered_experts
from kernels.reference import scattered_experts_reference

TOKENS, TOP_K, EXPERTS, IN, OUT, RANK, SCALING = 13, 2, 4, 24, 20, 3, 1.7
LAYOUTS = {
    "token rows -> slot order": dict(rows=TOKENS),
    "token rows -> grouped": dict(rows=TOKENS, grouped_out=True),
    "grouped -> gated tokens": dict(rows=TOKENS * TOP_K, grouped_in=True, gated=True),
    "slot rows -> gated tokens": dict(rows=TOKENS * TOP_K, gated=True),
}


def routed_inputs(seed: int, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(shape, generator=generator, dtype=dtype).to(DEVICE) for shape in
               [(EXPERTS, OUT, IN), (EXPERTS, RANK, IN), (EXPERTS, OUT, RANK)]]
    routing = route(torch.randn(TOKENS, EXPERTS, generator=generator).to(DEVICE), TOP_K, dtype)
    return [t.requires_grad_() for t in tensors], routing, generator


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_routed_lora_equals_dense_weight_plus_scaled_BA(layout, backend):
    spec = LAYOUTS[layout]
    (weight, lora_A, lora_B), routing, generator = routed_inputs(seed=len(layout))
    x = torch.randn(spec["rows"], IN, generator=generator).to(DEVICE).requires_grad_()
    flags = dict(grouped_in=spec.get("grouped_in", False), grouped_out=spec.get("grouped_out", False),
                 gates=routing.gates if spec.get("gated") else None)

    gates = flags.pop("gates")
    routed = scattered_experts(x, weight, routing, backend=backend, **flags) + expert_lora_delta(
        x, lora_A, lora_B, SCALING, routing, backend=backend, **flags
    )
    if gates is not None:
        routed = combine_slots(routed, gates, backend)
    flags["gates"] = gates
    dense = scattered_experts_reference(x, weight + SCALING * lora_B @ lora_A, routing, **flags)

    torch.testing.assert_close(routed, dense, atol=1e-4, rtol=1e-4)
    grad_out = torch.randn(dense.shape, generator=generator).to(DEVICE)
    routed_grads = torch.autograd.grad(routed, (x, weight, lora_A, lora_B), grad_out)
    dense_grads = torch.autograd.grad(dense, (x, weight, lora_A, lora_B), grad_out)
    for name, got, want in zip(("x", "weight", "lora_A", "lora_B"), routed_grads, dense_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


def test_lora_model_on_triton_matches_torch_in_logits_and_lora_gradients():
    """The whole routed LoRA path (every expert projection, gated and grouped layouts) on both backends."""
    from align.lora.adapters import add_lora
    from align.lora.arguments import LoraArguments
    from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

    torch.manual_seed(0)
    config = JetMoEConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_key_value_heads=2, kv_channels=8,
                          intermediate_size=48, num_local_experts=4, moe_backend="torch")
    model = add_lora(JetMoEForCausalLM(config), LoraArguments(r=4, alpha=8)).to(DEVICE)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        model.base_model.model.set_moe_backend(backend)
        model.zero_grad()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        results[backend] = out.logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-4, rtol=1e-4)
    for name, grad in results["torch"][1].items():
        torch.testing.assert_close(results["triton"][1][name], grad, atol=1e-4, rtol=1e-3, msg=name)
