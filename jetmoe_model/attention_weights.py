"""`output_attentions=True` on a model whose fast attention paths (SDPA, flash) never materialise the weights.

A call that asks for the weights runs eager attention instead, under the mask eager attention needs (SDPA's and
flash attention's masks may be None or 2-D, leaving causality to the kernel), and reports the weights in transformers'
JetMoe head order, so they compare one to one with `JetMoeForCausalLM`'s.
"""

import copy

import torch


def mask_config(config, output_attentions: bool):
    """The config whose `_attn_implementation` decides the mask's form: eager's where the weights are returned."""
    if not output_attentions or config._attn_implementation == "eager":
        return config
    eager = copy.copy(config)
    eager._attn_implementation = "eager"
    return eager


def stock_head_order(weights: torch.Tensor, kv_heads: int, top_k: int) -> torch.Tensor:
    """`[B, kv_heads * k, L, S]` with our kv-head-major heads (`h * k + j`) -> transformers' expert-slot-major order
    (`j * kv_heads + h`)."""
    batch, _, length, keys = weights.shape
    return weights.view(batch, kv_heads, top_k, length, keys).transpose(1, 2).reshape(batch, -1, length, keys)
