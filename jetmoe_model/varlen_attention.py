"""Causal attention over packed sequences: the tokens of several sequences laid end to end, each attending only to
its own earlier tokens, as given by the boundaries `cu_seqlens` (`[0, end_1, ..., end_n]`).

A sequence's keys may also be longer than its queries (`cu_seqlens_k`: prefix-shared DPO pairs, whose rejected
response reads the prompt it shares with the chosen one): the causal mask is then aligned to the keys' end, query
`i` of `m` reading keys `0 .. i + n - m` of `n`. That is FlashAttention-2's rule for `is_causal` with unequal
lengths (PyTorch's `torch.nn.attention.bias.causal_lower_right` dispatches to the same kernel with
`is_causal=True`); the reference builds the mask explicitly.

On CUDA in half precision this is FlashAttention-2's variable-length kernel as PyTorch ships it
(`aten::_flash_attention_forward` with cumulative lengths): no mask is built, no plan is compiled per shape, and
grouped kv heads are read in place. Elsewhere (CPU, float32) each sequence goes through SDPA on its own: the
reference the fast path is tested against.
"""

import torch
import torch.nn.functional as F


def flash_varlen_supported(query: torch.Tensor) -> bool:
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] % 8 == 0


class _FlashVarlenAttention(torch.autograd.Function):
    """PyTorch's flash kernels, forward and backward, on `[T, heads, D]` tensors (kv heads may be fewer)."""

    @staticmethod
    def forward(ctx, query, key, value, cu_seqlens_q, cu_seqlens_k, max_q, max_k, scale):
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            query, key, value, cu_seqlens_q, cu_seqlens_k, max_q, max_k, 0.0, True, False, scale=scale
        )
        ctx.save_for_backward(query, key, value, out, lse, cu_seqlens_q, cu_seqlens_k, rng_state, unused)
        ctx.max_q, ctx.max_k, ctx.scale = max_q, max_k, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse, cu_seqlens_q, cu_seqlens_k, rng_state, unused = ctx.saved_tensors
        grad_query, grad_key, grad_value = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), query, key, value, out, lse, cu_seqlens_q, cu_seqlens_k, ctx.max_q, ctx.max_k,
            0.0, True, rng_state, unused, scale=ctx.scale,
        )  # fmt: skip
        return grad_query, grad_key, grad_value, None, None, None, None, None


def reference_varlen_attention(query, key, value, cu_seqlens, scale, cu_seqlens_k=None):
    """One SDPA call per sequence: slow, obviously right. With keys longer than queries, an explicit causal mask
    aligned to the keys' end."""
    bounds = cu_seqlens.tolist()
    key_bounds = bounds if cu_seqlens_k is None else cu_seqlens_k.tolist()
    outputs = []
    for start, end, key_start, key_end in zip(bounds[:-1], bounds[1:], key_bounds[:-1], key_bounds[1:]):
        q = query[start:end].transpose(0, 1)  # [heads, m, D]
        k, v = (x[key_start:key_end].transpose(0, 1) for x in (key, value))  # [kv_heads, n, D]
        m, n = end - start, key_end - key_start
        mask = None if m == n else torch.ones(m, n, dtype=torch.bool, device=query.device).tril(n - m)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                             enable_gqa=True)  # fmt: skip
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def varlen_attention(query, key, value, cu_seqlens, max_length: int, scale: float, dropout: float = 0.0,
                     cu_seqlens_k=None, max_length_k: int | None = None):  # fmt: skip
    """`query` `[T, heads, D]`, `key`/`value` `[T_k, kv_heads, D]` (heads a multiple of kv_heads, query head `h`
    reading kv head `h // (heads / kv_heads)`), last dims contiguous; returns `[T, heads, D]`. Keys are bounded by
    `cu_seqlens_k` (longest `max_length_k`) when given, else by `cu_seqlens` like the queries."""
    if dropout:
        raise NotImplementedError("attention dropout in padding-free batches; set config.padding_free = False")
    if flash_varlen_supported(query):
        if cu_seqlens_k is None:
            cu_seqlens_k, max_length_k = cu_seqlens, max_length
        return _FlashVarlenAttention.apply(query, key, value, cu_seqlens, cu_seqlens_k, max_length, max_length_k,
                                           scale)  # fmt: skip
    return reference_varlen_attention(query, key, value, cu_seqlens, scale, cu_seqlens_k)
