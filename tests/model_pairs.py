"""transformers' `JetMoeForCausalLM` (the oracle) and ours, loaded from the same random checkpoint."""

import torch
from conftest import tiny_config_kwargs
from transformers import JetMoeConfig, JetMoeForCausalLM

from jetmoe_model import JetMoEForCausalLM


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere, biases and norm scales included, so every parameter matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * (0.3 if param.dim() > 1 else 0.5))


def stock_and_ours(tmp_path, shape: str, seed: int = 0, ours_attn: str = "sdpa", **config_overrides):
    """The stock model runs eager attention (the only one that returns attention weights); ours `ours_attn`."""
    stock = JetMoeForCausalLM(JetMoeConfig(**tiny_config_kwargs(shape, **config_overrides)))
    randomize(stock, seed)
    stock.save_pretrained(tmp_path / "stock")
    stock = JetMoeForCausalLM.from_pretrained(tmp_path / "stock", attn_implementation="eager")
    ours = JetMoEForCausalLM.from_pretrained(tmp_path / "stock", moe_backend="torch", attn_implementation=ours_attn)
    return stock.eval(), ours.eval()
