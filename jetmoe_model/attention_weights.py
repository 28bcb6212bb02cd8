"""Eager attention, the one path that materialises the attention weights, and `output_attentions=True` on a model
whose fast paths (SDPA, flash attention) never do.

A call that asks for the weights runs eager attention whatever the model's attention implementation, under the mask
eager attention needs (SDPA's and flash attention's masks may be None or 2-D, leaving causality to the kernel), with
its heads in transformers' JetMoe order: the weights returned are the ones the output is computed from (gradients
reach them), and they compare one to one with `JetMoeForCausalLM`'s.
"""

import copy

import torch
from torch import nn


def eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Plain softmax attention with grouped kv heads, for `attn_implementation="eager"`."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


def eager_attention_in_stock_order(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """`eager_attention` on our kv-head-major query heads (`h * k + j`), computed with transformers' expert-slot-major
    heads (`j * kv_heads + h`): returns the output `[B, L, heads*k, D]` in our order and the weights
    `[B, k*heads, L, S]` in transformers'."""
    batch, num_heads, length, dim = query.shape
    kv_heads = key.shape[1]
    top_k = num_heads // kv_heads
    query = query.view(batch, kv_heads, top_k, length, dim).transpose(1, 2).reshape(batch, num_heads, length, dim)
    key, value = key.repeat(1, top_k, 1, 1), value.repeat(1, top_k, 1, 1)  # slot-major: head j * kv_heads + h
    out, weights = eager_attention(module, query, key, value, attention_mask, scaling, dropout)
    return out.view(batch, length, top_k, kv_heads, dim).transpose(2, 3).reshape(batch, length, num_heads, dim), weights


def mask_config(config, output_attentions: bool):
    """The config whose `_attn_implementation` decides the mask's form: eager's where the weights are returned."""
    if not output_attentions or config._attn_implementation == "eager":
        return config
    eager = copy.copy(config)
    eager._attn_implementation = "eager"
    return eager
