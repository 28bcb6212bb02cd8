"""Put LoRA on a JetMoE model (saved with `save_pretrained` as a stock PEFT adapter); load one back."""

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model

from .config import LoraArguments, jetmoe_lora_config, with_routed_experts
from .stage_support import stock_loadable


def add_lora(model, args: LoraArguments) -> PeftModel:
    """Fresh adapters (B = 0, so the model's outputs are unchanged) on every target; only they train."""
    return stock_loadable(get_peft_model(model, jetmoe_lora_config(args)))


def load_adapter(model, adapter_dir: str | Path, is_trainable: bool = False) -> PeftModel:
    """A saved adapter on `model`, with the routed expert layer (stock `PeftModel.from_pretrained` gives the same
    numbers through PEFT's dense `ParamWrapper`)."""
    config = with_routed_experts(LoraConfig.from_pretrained(str(adapter_dir)))
    return PeftModel.from_pretrained(model, str(adapter_dir), config=config, is_trainable=is_trainable)
