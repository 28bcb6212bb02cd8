"""`model.train()` and `model.zero_grad()` without a walk of every module on every training step.

transformers' training step calls `model.train()` before each micro-batch and `model.zero_grad()` after each
optimizer step. Each walks all the model's modules (~1,600 for JetMoE-8B with the LoRA recipe's targets: 9.4 and
5.6-6.6 ms a call on this repository's CPU, `bench/bench_host_walks.py`), in a step whose pace the host sets (LoRA
DPO, issue 23). Here the model's modules and parameters are listed once, and again after any module or parameter
is registered anywhere (PyTorch's global registration hooks: PEFT injecting an adapter, a module replaced).
`train(mode)` walks only when a module is not already in `mode`; `zero_grad()` drops the listed parameters'
gradients. The outcome is the walk's: every module in `mode`, every gradient None.

Modules whose class has a `train` of its own other than transformers' (which does nothing more when the mode does
not change; PEFT's DoRA layers clear a cache on every `train(True)`) keep the walk on every call, as does
`zero_grad(set_to_none=False)`.
"""

import itertools

from torch import nn
from transformers import PreTrainedModel

_registrations = itertools.count()
_last_registration = [next(_registrations)]


def _registered(*_):
    _last_registration[0] = next(_registrations)


nn.modules.module.register_module_module_registration_hook(_registered)
nn.modules.module.register_module_parameter_registration_hook(_registered)


class _Listing:
    """The model's modules and parameters as of the last registration anywhere."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.seen = None

    def refresh(self) -> None:
        if self.seen == _last_registration[0]:
            return
        self.modules = list(self.model.modules())
        self.parameters = list(self.model.parameters())
        plain_train = (nn.Module.train, PreTrainedModel.train)
        self.plain = all(type(module).train in plain_train for module in self.modules)
        self.seen = _last_registration[0]


class QuickTrain:
    """`model.train(mode)`, walking the modules only when one of them is not in `mode` already."""

    def __init__(self, listing: _Listing):
        self.listing = listing

    def __call__(self, mode: bool = True) -> nn.Module:
        listing = self.listing
        listing.refresh()
        if not listing.plain or any(module.training is not mode for module in listing.modules):
            return type(listing.model).train(listing.model, mode)  # the walk; it also checks `mode`
        return listing.model


class QuickZeroGrad:
    """`model.zero_grad(set_to_none=True)` over the listed parameters."""

    def __init__(self, listing: _Listing):
        self.listing = listing

    def __call__(self, set_to_none: bool = True) -> None:
        listing = self.listing
        if not set_to_none or getattr(listing.model, "_is_replica", False):
            return type(listing.model).zero_grad(listing.model, set_to_none)
        listing.refresh()
        for parameter in listing.parameters:
            if parameter.grad is not None:
                parameter.grad = None


def quicken_module_walks(model: nn.Module) -> None:
    """Give `model` (the instance) the quick `train` and `zero_grad`; a deep copy gets its own."""
    listing = _Listing(model)
    model.train = QuickTrain(listing)
    model.zero_grad = QuickZeroGrad(listing)


class QuickModuleWalksMixin:
    """Mix in before a transformers `Trainer`: its model trains and drops gradients without a walk a step."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        quicken_module_walks(self.model)
