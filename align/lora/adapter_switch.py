"""Turning a PEFT model's adapters off and on again for LoRA DPO's reference forward, without PEFT's model scans.

LoRA DPO's reference is the policy with its adapters disabled: TRL enters `PeftModel.disable_adapter()` on every
step (and every batch of a precomputed reference pass). For LoRA, PEFT's context first builds a status report of
every adapter layer, then walks all modules to switch each layer off, and again to switch them on: at the
JetMoE-8B shape about 40 ms of host time a step, during which the GPU runs dry (measured on an H200,
docs/benchmarks.md). The adapter layers do not change between steps, so they are found once; the switch then sets
each layer's flag and puts back exactly the value it had.

What it leaves out of PEFT's version: toggling the adapters' `requires_grad` (nothing reads it inside the context;
TRL computes the reference under `no_grad`) and the "irregular" warning (each layer gets its own state back, so
nothing becomes irregular). Models with other tuner kinds (prompt learning, modules_to_save wrappers) keep PEFT's.
"""

import types
from contextlib import contextmanager

from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import AuxiliaryTrainingWrapper


def install_quick_adapter_switch(model) -> bool:
    """Give `model` (a `PeftModel` with LoRA-style adapters) a quick `disable_adapter()`; once per model. Returns
    whether it has one; other models are left as they are."""
    if not isinstance(model, PeftModel):
        return False
    if getattr(model, "_quick_adapter_layers", None) is not None:  # decided before: layers, or False
        return model._quick_adapter_layers is not False
    config = model.peft_config[model.active_adapter]
    modules = list(model.modules())
    if config.is_prompt_learning or config.is_adaption_prompt or any(
        isinstance(module, AuxiliaryTrainingWrapper) for module in modules
    ):
        model._quick_adapter_layers = False
        return False
    model._quick_adapter_layers = [module for module in modules if isinstance(module, BaseTunerLayer)]
    model.disable_adapter = types.MethodType(_adapters_disabled, model)  # a copy of the model rebinds it
    return True


@contextmanager
def _adapters_disabled(model):
    layers = model._quick_adapter_layers
    before = [layer._disable_adapters for layer in layers]
    was_disabled = model._adapters_disabled
    for layer in layers:
        layer._disable_adapters = True
    model._adapters_disabled = True
    try:
        yield
    finally:
        for layer, flag in zip(layers, before):
            layer._disable_adapters = flag
        model._adapters_disabled = was_disabled
