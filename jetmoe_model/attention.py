"""Mixture-of-Attention: each token picks k query/output experts; keys and values are shared by all experts.

A token's k experts give it `k * num_key_value_heads` query heads. We lay them out kv-head-major
(head `h * k + j` is expert slot `j` of kv head `h`), which is exactly grouped-query attention with k query heads
per kv head: SDPA and flash attention then read each shared key/value head once instead of a repeated copy.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .attention_weights import eager_attention, eager_attention_in_stock_order
from .experts import MoAExperts
from .kv_cache import update_cache
from .layers import apply_rotary_pair, resolve_backend
from .varlen_attention import varlen_attention


class MoAAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.is_causal = True
        self.top_k = config.num_experts_per_tok
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.top_k
        self.head_dim = config.kv_channels
        self.scaling = self.head_dim**-0.5
        self.experts = MoAExperts(config)
        self.kv_proj = nn.Linear(config.hidden_size, 2 * config.kv_channels * config.num_key_value_heads, bias=False)

    def forward(
        self, hidden_states, position_embeddings, attention_mask=None, cache=None, output_attentions=False,
        packed=None, **kwargs,
    ):
        """Returns the attention output `[B, L, hidden]`, the attention weights `[B, heads*k, L, S]` in transformers'
        head order if `output_attentions` (computed by eager attention; else None) and the MoA router logits
        `[B*L, E]`. With `packed` (a `PackedBatch`), the batch is one row of sequences laid end to end, each
        attending only to itself."""
        batch, length, _ = hidden_states.shape
        heads, k, dim = self.num_key_value_heads, self.top_k, self.head_dim

        queries, routing, router_logits = self.experts.map(hidden_states)  # [B, L, k, heads*dim]
        query = queries.view(batch, length, k, heads, dim).permute(0, 3, 2, 1, 4)  # [B, heads, k, L, dim], a view
        kv = self.kv_proj(hidden_states).view(batch, length, 2, heads, dim)
        # Unbound along its own dim, the backward stacks both gradients straight into the projection's layout.
        key, value = (half.transpose(1, 2) for half in kv.unbind(2))  # [B, heads, L, dim] views

        cos, sin = position_embeddings
        backend = self.experts.backend
        # Packed: laid out token by token, so that `[T, heads, dim]` below is a view, not a copy for flash attention.
        query, key = apply_rotary_pair(query, key, cos, sin, backend, token_major=packed is not None)
        if packed is not None:  # [1, heads*k, T, dim] -> [T, heads*k, dim] views, the layout varlen kernels read
            # (squeezed, not indexed: the backward of `x[0]` copies the gradient into zeros, of `squeeze` is a view)
            key, value, query = (x.squeeze(0).transpose(0, 1) for x in (key, value, query))
            key, value, cu_seqlens_k, max_length_k = packed.attention_keys(
                key, value, resolve_backend(backend, key.device)
            )
            attn = varlen_attention(
                query, key, value, packed.cu_seqlens, packed.max_length, self.scaling,
                self.config.attention_dropout if self.training else 0.0, cu_seqlens_k, max_length_k,
            )  # fmt: skip
            attn = attn.view(1, length, heads, k, dim).transpose(2, 3)
            return self.experts.reduce(attn.reshape(1, length, k, heads * dim), routing), None, router_logits
        only_this_chunk = True  # keys and values are this call's own: no earlier positions cached
        if cache is not None:
            cached_key, cached_value = update_cache(cache, self.layer_idx, key, value)
            only_this_chunk = cached_key.shape[-2] == length
            if not only_this_chunk:
                key, value = cached_key, cached_value

        dropout = self.config.attention_dropout if self.training else 0.0
        plain_causal = attention_mask is None and only_this_chunk and not output_attentions  # weights asked: eager
        if self.config._attn_implementation == "sdpa" and plain_causal:
            # Plain causal attention (training on full rows, or a prompt filling an empty cache): PyTorch's SDPA
            # directly, whose `[B, heads*k, L, dim]` output needs one copy into the slot layout; through the
            # attention interface it takes two.
            attn = F.scaled_dot_product_attention(
                query, key, value, dropout_p=dropout, scale=self.scaling, is_causal=length > 1, enable_gqa=True
            )
            attn = attn.view(batch, heads, k, length, dim).permute(0, 3, 2, 1, 4)
        else:
            attention: Callable = (
                eager_attention_in_stock_order
                if output_attentions
                else ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention)
            )
            attn, weights = attention(
                self, query, key, value, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs
            )  # [B, L, heads*k, dim]
            attn = attn.view(batch, length, heads, k, dim).transpose(2, 3)
        weights = weights if output_attentions else None
        return self.experts.reduce(attn.reshape(batch, length, k, heads * dim), routing), weights, router_logits


def preferred_attn_implementation() -> str:
    """Flash attention where it is installed and a GPU is present, else PyTorch's SDPA."""
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if torch.cuda.is_available() and is_flash_attn_2_available() else "sdpa"
