"""The PEFT `LoraConfig` a recipe's `lora:` section becomes for JetMoE.

`kv_proj` (and `lm_head`/`embed_tokens`) are ordinary modules for PEFT's `target_modules`; the four expert
projections are 3-D weights `[E, out, in]`, which PEFT reaches only through `target_parameters`. Keeping that split
in the saved `adapter_config.json` is what lets stock PEFT load our adapters with nothing registered.
"""

from peft import LoraConfig
from torch import nn

from jetmoe_model.experts import ParallelExperts

from .arguments import EXPERT_PROJECTIONS, MODULE_TARGETS, LoraArguments
from .linear import LoraLinear
from .routed_experts import RoutedExpertLora


def jetmoe_lora_config(args: LoraArguments) -> LoraConfig:
    """A PEFT `LoraConfig` in the stock layout, with our expert and linear layers registered for training."""
    modules_to_save = list(args.modules_to_save) + (["router"] if args.train_routers else [])
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.r,
        lora_alpha=args.alpha,
        lora_dropout=args.dropout,
        use_rslora=args.use_rslora,
        target_modules=[name for name in args.targets if name in MODULE_TARGETS],
        target_parameters=[f"{name}.weight" for name in args.targets if name in EXPERT_PROJECTIONS],
        modules_to_save=modules_to_save or None,
    )
    return with_routed_experts(config)


def with_routed_experts(config: LoraConfig) -> LoraConfig:
    """Make PEFT build `RoutedExpertLora` for expert weights and our `LoraLinear` for linear layers under this config.

    The registration lives on the config object only: `adapter_config.json` does not record it.
    """
    config._register_custom_module({ParallelExperts: RoutedExpertLora, nn.Linear: LoraLinear})
    return config
