"""Causal attention over packed sequences: the tokens of several sequences laid end to end, each attending only to
its own earlier tokens, as given by the boundaries `cu_seqlens` (`[0, end_1, ..., end_n]`).

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
    def forward(ctx, query, key, value, cu_seqlens, max_length, scale):
        out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
            query, key, value, cu_seqlens, cu_seqlens, max_length, max_length, 0.0, True, False, scale=scale
        )
        ctx.save_for_backward(query, key, value, out, lse, cu_seqlens, rng_state, unused)
        ctx.max_length, ctx.scale = max_length, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, out, lse, cu_seqlens, rng_state, unused = ctx.saved_tensors
        grad_query, grad_key, grad_value = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), query, key, value, out, lse, cu_seqlens, cu_seqlens, ctx.max_length,
            ctx.max_length, 0.0, True, rng_state, unused, scale=ctx.scale,
        )  # fmt: skip
        return grad_query, grad_key, grad_value, None, None, None


def reference_varlen_attention(query, key, value, cu_seqlens, scale):
    """One SDPA call per sequence: slow, obviously right."""
    bounds = cu_seqlens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (x[start:end].transpose(0, 1) for x in (query, key, value))  # [heads, n, D]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
        outputs.append(out.transpose(0, 1))
    return torch.cat(outputs)


def varlen_attention(query, key, value, cu_seqlens, max_length: int, scale: float, dropout: float = 0.0):
    """`query` `[T, heads, D]`, `key`/`value` `[T, kv_heads, D]` (heads a multiple of kv_heads, query head `h`
    reading kv head `h // (heads / kv_heads)`), last dims contiguous; returns `[T, heads, D]`."""
    if dropout:
        raise NotImplementedError("attention dropout in padding-free batches; set config.padding_free = False")
    if flash_varlen_supported(query):
        return _FlashVarlenAttention.apply(query, key, value, cu_seqlens, max_length, scale)
    return reference_varlen_attention(query, key, value, cu_seqlens, scale)
