"""The quick `model.train()` and `model.zero_grad()` leave the model as PyTorch's walks do, and walk no module while
nothing changed."""

import copy

import pytest
import torch
from torch import nn

from align.lora.adapters import add_lora
from align.lora.arguments import LoraArguments
from align.training.module_walks import quicken_module_walks
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM
from test_dpo_learning import _setup as dpo_setup


def lora_model():
    config = JetMoEConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_key_value_heads=2, kv_channels=8,
                          intermediate_size=48, num_local_experts=4, moe_backend="torch")  # fmt: skip
    model = add_lora(JetMoEForCausalLM(config), LoraArguments(r=4, alpha=8, dropout=0.1))
    quicken_module_walks(model)
    return model


def modes(model):
    return {name: module.training for name, module in model.named_modules()}


@pytest.fixture
def walks(monkeypatch):
    """Counts PyTorch's own `train` and `zero_grad` calls."""
    counted = []
    train, zero_grad = nn.Module.train, nn.Module.zero_grad
    monkeypatch.setattr(nn.Module, "train", lambda self, mode=True: counted.append("train") or train(self, mode))
    monkeypatch.setattr(nn.Module, "zero_grad",
                        lambda self, set_to_none=True: counted.append("zero_grad") or zero_grad(self, set_to_none))
    return counted


def test_train_and_eval_set_every_module_as_the_walk_does():
    model = lora_model()
    model.eval()
    assert not any(modes(model).values())
    model.train()
    assert all(modes(model).values())
    dropout = next(module for name, module in model.named_modules() if name.endswith("lora_dropout.default"))
    dropout.eval()  # one module changed on its own
    model.train()
    assert all(modes(model).values())


def test_a_module_registered_later_is_listed(walks):
    model = lora_model()
    model.train()
    layer = model.base_model.model.model.layers[0]
    layer.extra = nn.Linear(2, 2).eval()  # registered after the listing
    model.train()
    assert layer.extra.training
    layer.extra.weight.grad = torch.ones(2, 2)
    model.zero_grad()
    assert layer.extra.weight.grad is None


def test_no_walk_while_nothing_changed(walks):
    model = lora_model()
    model.train()
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.ones_like(parameter)
    walks.clear()
    model.train()
    model.zero_grad()
    assert walks == []
    assert all(parameter.grad is None for parameter in model.parameters())
    model.zero_grad(set_to_none=False)  # zeroing in place is PyTorch's
    assert walks == ["zero_grad"]


def test_a_deep_copy_switches_its_own_modules():
    model = lora_model()
    clone = copy.deepcopy(model)
    clone.eval()
    assert not any(modes(clone).values()) and all(modes(model.train()).values())


def test_a_module_with_its_own_train_keeps_the_walk():
    """PEFT's DoRA layers, for one, clear a cache on every `train(True)`: such a model walks on every call."""

    class ClearsOnTrain(nn.Linear):
        def train(self, mode=True):
            self.calls = getattr(self, "calls", 0) + 1
            return super().train(mode)

    model = lora_model()
    model.base_model.model.model.layers[0].own = own = ClearsOnTrain(2, 2)
    model.train()
    model.train()
    assert own.calls == 2


def test_trainer_steps_walk_no_module_after_the_first(tmp_path, walks):
    """Our DPO trainer's model: transformers' training step calls `train()` and `zero_grad()` on it every step."""
    from transformers import TrainerCallback

    per_step = []

    class Count(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            per_step.append(list(walks))
            walks.clear()

    trainer = dpo_setup(tmp_path, max_steps=3)
    trainer.add_callback(Count())
    trainer.train()
    assert len(per_step) == 3 and per_step[1:] == [[], []], per_step
