"""What training needs from the model: gradient checkpointing, padding-free packing, router losses."""

import pytest
import torch
from conftest import tiny_config_kwargs

from jetmoe_model import JetMoEConfig, JetMoEForCausalLM


def tiny_model(seed: int = 0, **overrides) -> JetMoEForCausalLM:
    torch.manual_seed(seed)
    model = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs(moe_backend="torch", **overrides)))
    with torch.no_grad():  # break the zero biases / unit norms of a fresh init so every path carries signal
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def gradients(model, **inputs) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model(**inputs).loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_model(output_router_logits=True).train()
    ids = torch.randint(0, 97, (2, 10))
    plain = gradients(model, input_ids=ids, labels=ids)

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.model.layers)
    checkpointed = gradients(model, input_ids=ids, labels=ids)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_activation_checkpointing_flag_reads_as_transformers_walk_reads_it():
    """Ours reads the backbone's and the layers' flags; transformers' generic property walks every module."""
    from transformers import PreTrainedModel

    model = tiny_model()
    walked = PreTrainedModel.is_activation_checkpointing.fget
    states = [(model.is_activation_checkpointing, walked(model))]
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    states.append((model.is_activation_checkpointing, walked(model)))
    model.gradient_checkpointing_disable()
    model.model.layers[1].gradient_checkpointing = True  # one layer on its own
    states.append((model.is_activation_checkpointing, walked(model)))
    assert states == [(False, False), (True, True), (True, True)]
    assert model.model.is_activation_checkpointing and model.is_gradient_checkpointing


def test_packed_rows_give_the_same_logits_as_each_sequence_alone():
    model = tiny_model(seed=1).eval()
    lengths = [5, 3, 7]
    sequences = [torch.randint(0, 97, (1, n)) for n in lengths]
    packed = torch.cat(sequences, dim=1)
    position_ids = torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0)

    packed_logits = model(packed, position_ids=position_ids).logits[0]
    alone = torch.cat([model(seq).logits[0] for seq in sequences])
    torch.testing.assert_close(packed_logits, alone, atol=2e-5, rtol=0)
    # Without position ids the same row is one long sequence: the check above is not vacuous.
    assert not torch.allclose(model(packed).logits[0], alone, atol=1e-3)


def test_router_losses_are_positive_finite_and_train_the_routers():
    model = tiny_model(seed=2, output_router_logits=True).train()
    ids = torch.randint(0, 97, (2, 12))
    out = model(ids, labels=ids)
    num_routers = 2 * model.config.num_hidden_layers
    assert len(out.router_logits) == num_routers
    for loss in (out.aux_loss, out.router_z_loss):
        assert torch.isfinite(loss) and loss > 0
    expected = model.config.aux_loss_coef * out.aux_loss + model.config.router_z_loss_coef * out.router_z_loss
    torch.testing.assert_close(out.router_loss, expected)
    plain = model(ids, labels=ids, output_router_logits=False)
    torch.testing.assert_close(out.loss, plain.loss + out.router_loss)

    model.zero_grad()
    out.router_loss.backward()
    routers = [m.router.layer.weight for m in model.modules() if hasattr(m, "router")]
    assert len(routers) == num_routers
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in routers)


@pytest.mark.parametrize("top_k", [1, 2])
def test_load_balancing_loss_is_one_when_balanced_and_num_experts_when_collapsed(top_k):
    from jetmoe_model.router_losses import load_balancing_loss

    num_experts, tokens = 4, 8
    uniform = torch.zeros(tokens, num_experts)
    # Tie-broken uniform routing: each expert gets the same share of slots and the same mean probability.
    uniform[torch.arange(tokens), torch.arange(tokens) % num_experts] = 1e-4
    if top_k == 2:
        uniform[torch.arange(tokens), (torch.arange(tokens) + 1) % num_experts] = 5e-5
    torch.testing.assert_close(load_balancing_loss([uniform], top_k), torch.tensor(1.0), atol=1e-3, rtol=0)

    collapsed = torch.full((tokens, num_experts), -30.0)
    collapsed[:, 0] = 30.0
    if top_k == 2:
        collapsed[:, 1] = 29.0
    assert load_balancing_loss([collapsed], top_k) > 0.45 * num_experts


def test_router_losses_ignore_padding():
    from jetmoe_model.router_losses import load_balancing_loss, router_z_loss

    logits = torch.randn(6, 4)
    mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    real_rows = logits[mask.reshape(-1).bool()]
    padded_logits = logits.clone()
    padded_logits[~mask.reshape(-1).bool()] = 50.0  # garbage on pad rows must not matter
    torch.testing.assert_close(router_z_loss([padded_logits], mask), router_z_loss([real_rows]))
    torch.testing.assert_close(load_balancing_loss([padded_logits], 2, mask), load_balancing_loss([real_rows], 2))


def test_router_losses_average_each_routers_own_loss():
    """All routers are computed as one stacked batch; the result must be the mean of each router's loss taken
    alone, with the same gradients (the per-router definition the model card describes)."""
    from jetmoe_model.router_losses import load_balancing_loss, router_z_loss

    torch.manual_seed(0)
    logits = [torch.randn(6, 4, requires_grad=True) for _ in range(5)]
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    for loss in (lambda rows: load_balancing_loss(rows, 2, mask), lambda rows: router_z_loss(rows, mask)):
        together = loss(logits)
        alone = torch.stack([loss([router]) for router in logits]).mean()
        torch.testing.assert_close(together, alone)
        torch.testing.assert_close(torch.autograd.grad(together, logits), torch.autograd.grad(alone, logits))


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_load_balancing_picks_the_experts_topk_picks(top_k):
    """The loss's one-hot of each row's top-k experts (rounds of argmax, cheaper on the GPU) marks what
    `torch.topk` picks."""
    from jetmoe_model.router_losses import _top_k_one_hot

    probs = torch.randn(3, 50, 8).softmax(-1)
    expected = torch.zeros_like(probs).scatter_(-1, probs.topk(top_k, dim=-1).indices, 1.0)
    assert torch.equal(_top_k_one_hot(probs, top_k), expected)
