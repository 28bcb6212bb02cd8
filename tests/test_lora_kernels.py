"""The routed LoRA update equals the naive dense one, `W_e x + s * B_e A_e dropout(x)`, in outputs and gradients;
the fused Triton path equals the PyTorch oracle on every layout the model uses, routing extremes, ranks 8 and 16."""

import pytest
import torch
from kernel_cases import DEVICE, assert_close, grads, make_routing, randn  # first: sets TRITON_INTERPRET on CPU

from jetmoe_kernels import route
from jetmoe_kernels.lora import ExpertLora, scattered_experts
from jetmoe_kernels.reference import scattered_experts_reference

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


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_routed_lora_equals_dense_weight_plus_scaled_BA(layout, backend, dropout):
    """With dropout, the update reads `nn.functional.dropout(x)` drawn from the same seed: the same random draws as
    PEFT's dropout module, and its backward is PyTorch's."""
    spec = LAYOUTS[layout]
    (weight, lora_A, lora_B), routing, generator = routed_inputs(seed=len(layout))
    x = torch.randn(spec["rows"], IN, generator=generator).to(DEVICE).requires_grad_()
    flags = dict(grouped_in=spec.get("grouped_in", False), grouped_out=spec.get("grouped_out", False),
                 gates=routing.gates if spec.get("gated") else None)

    torch.manual_seed(11)
    routed = scattered_experts(x, weight, routing, backend=backend,
                               lora=ExpertLora(lora_A, lora_B, SCALING, dropout), **flags)  # fmt: skip
    torch.manual_seed(11)
    x_lora = torch.nn.functional.dropout(x, dropout)
    dense = (scattered_experts_reference(x, weight, routing, **flags)
             + scattered_experts_reference(x_lora, SCALING * lora_B @ lora_A, routing, **flags))  # fmt: skip

    torch.testing.assert_close(routed, dense, atol=1e-4, rtol=1e-4)
    grad_out = torch.randn(dense.shape, generator=generator).to(DEVICE)
    routed_grads = torch.autograd.grad(routed, (x, weight, lora_A, lora_B), grad_out)
    dense_grads = torch.autograd.grad(dense, (x, weight, lora_A, lora_B), grad_out)
    for name, got, want in zip(("x", "weight", "lora_A", "lora_B"), routed_grads, dense_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4, msg=name)


# The model's four LoRA'd expert projections: (name, input rows, grouped_in, grouped_out, gated).
MODEL_LAYOUTS = [
    ("mlp_in", "token", False, True, False),
    ("mlp_out", "grouped", True, False, True),
    ("moa_query", "token", False, False, False),
    ("moa_out", "slot", False, False, True),
]
# (routing, dtype, rank): every routing in float32, the two extremes in bf16; rank 8 pads to tl.dot's 16.
FUSED_CASES = [
    ("random", torch.float32, 16),
    ("skewed", torch.float32, 8),
    ("one_expert", torch.float32, 16),
    ("empty_expert", torch.float32, 8),
    ("random", torch.bfloat16, 8),
    ("one_expert", torch.bfloat16, 16),
]
T, E, K_IN, N_OUT = 19, 4, 24, 40  # none a multiple of the interpreter's 16-wide tiles


def fused_vs_oracle(layout, routing_kind, dtype, rank, top_k=2, dropout=0.0):
    """Triton's fused LoRA projection and the PyTorch oracle on the same inputs: `(name, ours, oracle)` triples."""
    _, rows, grouped_in, grouped_out, gated = layout
    routing, gates = make_routing(routing_kind, T, E, top_k, dtype, grad=gated)
    x = randn(T if rows == "token" else T * top_k, K_IN, dtype=dtype, seed=1)
    weight = randn(E, N_OUT, K_IN, dtype=dtype, seed=2, scale=0.2, grad=False)  # frozen, as under LoRA
    # Factors as PEFT keeps them whatever the activations' dtype: float32, B's experts interleaved (a strided view).
    lora_A = randn(E, rank, K_IN, dtype=torch.float32, seed=3, scale=0.2)
    peft_B = randn(N_OUT, rank, E, dtype=torch.float32, seed=4, scale=0.2)
    inputs = (x, lora_A, peft_B) + ((gates,) if gated else ())
    layout_flags = dict(grouped_in=grouped_in, grouped_out=grouped_out, gates=gates if gated else None)

    def projection(backend):
        torch.manual_seed(5)  # the same dropout draws on both backends
        lora = ExpertLora(lora_A, peft_B.permute(2, 0, 1), scaling=2.0, dropout=dropout)
        return scattered_experts(x, weight, routing, backend=backend, lora=lora, **layout_flags)

    results = {backend: projection(backend) for backend in ("triton", "torch")}
    names = ("y", "dx", "dA", "dB", "dgates")
    ours = (results["triton"], *grads(results["triton"], inputs))
    oracle = (results["torch"], *grads(results["torch"], inputs))
    return list(zip(names, ours, oracle))


@pytest.mark.parametrize("routing_kind,dtype,rank", FUSED_CASES,
                         ids=[f"{kind}-{str(dtype)[6:]}-r{rank}" for kind, dtype, rank in FUSED_CASES])
@pytest.mark.parametrize("layout", MODEL_LAYOUTS, ids=lambda layout: layout[0])
def test_fused_lora_matches_the_oracle(layout, routing_kind, dtype, rank):
    for name, ours, oracle in fused_vs_oracle(layout, routing_kind, dtype, rank):
        assert_close(ours, oracle, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda dtype: str(dtype)[6:])
@pytest.mark.parametrize("layout", MODEL_LAYOUTS[:2] + MODEL_LAYOUTS[3:], ids=lambda layout: layout[0])
def test_fused_lora_with_dropout_reads_the_dropped_input_for_A_only(layout, dtype):
    """LoRA dropout: `A` sees the dropped input, the base weight the clean one; `dx` sums both paths, the dropout's
    backward applied to LoRA's inside the input gradient's matmul (token, grouped and slot rows)."""
    for name, ours, oracle in fused_vs_oracle(layout, "random", dtype, 16, dropout=0.3):
        assert_close(ours, oracle, dtype, name)


def test_fused_lora_dropout_backward_is_one_input_gradient_matmul(monkeypatch):
    """With dropout as without it, the backward of a LoRA projection launches the same matmuls: `dy B`, the input
    gradient with `dl A` inside, the weight gradients; no rank-r input gradient, slot sum or add of its own."""
    from jetmoe_kernels import scatter_matmul

    launches = []
    launch = scatter_matmul.scatter_mm

    def spy(*args, **kwargs):
        launches.append(kwargs.get("low_rank_keep") is not None)
        return launch(*args, **kwargs)

    monkeypatch.setattr(scatter_matmul, "scatter_mm", spy)
    routing, _ = make_routing("random", T, E, 2, torch.float32)
    x = randn(T, K_IN, dtype=torch.float32, seed=1)
    weight = randn(E, N_OUT, K_IN, dtype=torch.float32, seed=2, grad=False)
    factors = randn(E, 8, K_IN, dtype=torch.float32, seed=3), randn(E, N_OUT, 8, dtype=torch.float32, seed=4)
    counts = {}
    for dropout in (0.0, 0.3):
        launches.clear()
        y = scattered_experts(x, weight, routing, backend="triton", lora=ExpertLora(*factors, 2.0, dropout))
        y.sum().backward()
        counts[dropout] = len(launches), sum(launches)
    assert counts == {0.0: (4, 0), 0.3: (4, 1)}  # A x, the forward; dy B, dx (masked with dropout)


def test_only_the_base_weight_is_read_by_tma(monkeypatch):
    """LoRA's rank-r matmuls (`A x`, `dy B`, and with dropout `dl A`) read their small factors by pointers: a TMA
    descriptor costs a launch host time it cannot win back there. The base weight keeps TMA (forward and dx)."""
    from jetmoe_kernels import scatter_matmul

    described = []
    describe = scatter_matmul._weight_descriptor

    def spy(weight, transpose_weight, cfg):
        described.append(tuple(weight.shape))
        return describe(weight, transpose_weight, cfg)

    monkeypatch.setattr(scatter_matmul, "_weight_descriptor", spy)
    for name, ours, oracle in fused_vs_oracle(MODEL_LAYOUTS[0], "random", torch.float32, 16, dropout=0.3):
        assert_close(ours, oracle, torch.float32, name)
    assert described and set(described) == {(E, N_OUT, K_IN)}


def test_fused_lora_top1_all_tokens_on_one_expert():
    """Top-1, every token on expert 2: the other experts' LoRA factors get exactly zero gradient."""
    results = fused_vs_oracle(MODEL_LAYOUTS[1], "one_expert", torch.float32, 8, top_k=1)
    for name, ours, oracle in results:
        assert_close(ours, oracle, torch.float32, name)
    grads_by_name = {name: ours for name, ours, _ in results}
    idle = torch.arange(E) != 2
    assert (grads_by_name["dA"][idle] == 0).all() and (grads_by_name["dB"][..., idle] == 0).all()  # B: [out, r, E]


def test_adapters_active_together_add_their_updates():
    """PEFT may activate several adapters at once: the layer adds each one's update, then combines once."""
    from peft import LoraConfig

    from align.lora.routed_experts import RoutedExpertLora
    from jetmoe_model.experts import ParallelExperts

    torch.manual_seed(0)
    base = ParallelExperts(E, K_IN, N_OUT).to(DEVICE)
    torch.nn.init.normal_(base.weight, std=0.2)
    config = LoraConfig(r=8, lora_alpha=16, target_parameters=["weight"])
    layer = RoutedExpertLora(base, "a", "weight", config=config, r=8, lora_alpha=16).to(DEVICE)
    layer.update_layer("b", 16, lora_alpha=8, config=config)
    layer.to(DEVICE)
    for param in layer.lora_B.parameters():
        torch.nn.init.normal_(param, std=0.2)
    routing, gates = make_routing("random", T, E, 2, torch.float32)
    x = randn(T * 2, K_IN, dtype=torch.float32, seed=1, grad=False)

    def out(adapters):
        layer.set_adapter(adapters)
        return layer(x, routing, gates=gates, backend="triton")

    with torch.no_grad():
        alone_a, alone_b, both = out("a"), out("b"), out(["a", "b"])
        layer.enable_adapters(False)  # the base layer alone
        base_only = layer(x, routing, gates=gates, backend="triton")
    assert_close(both, alone_a + alone_b - base_only, torch.float32, "two adapters")


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
