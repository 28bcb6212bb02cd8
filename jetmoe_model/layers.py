"""Building blocks shared by attention and MLP: RMSNorm and rotary position embeddings.

Each runs either in plain PyTorch (the reference) or as one fused Triton kernel (`jetmoe_kernels.rmsnorm`,
`jetmoe_kernels.rotary`), chosen by the model's `moe_backend` like the expert kernels: unfused, these small ops took a
fifth of a JetMoE-8B training step on an H100 (docs/benchmarks.md).
"""

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update


def resolve_backend(backend: str, device: torch.device) -> str:
    """"auto" means Triton where it can run (CUDA), the PyTorch reference elsewhere."""
    if backend == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return backend


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled in the input dtype (as JetMoE's checkpoints were trained)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, backend: str = "torch"):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if resolve_backend(self.backend, x.device) == "triton":
            from jetmoe_kernels.rmsnorm import rms_norm

            return rms_norm(x, self.weight, self.eps)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for the given positions, with the config's RoPE scaling (any type transformers knows: linear,
    dynamic, yarn, ...). Types that rescale with the length seen ("dynamic", "longrope") do so through transformers'
    `dynamic_rope_update`, and transformers' weight init rebuilds the (unsaved) frequency buffers after loading: both
    read the attributes and method named here as they expect them."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters.get("rope_type", "default")
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        default = self.rope_type == "default"
        rope_init = self.compute_default_rope_parameters if default else ROPE_INIT_FUNCTIONS[self.rope_type]
        inv_freq, self.attention_scaling = rope_init(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device=None, **kwargs) -> tuple[torch.Tensor, float]:
        """Unscaled RoPE over a head (`kv_channels`) wide."""
        dim = config.kv_channels
        steps = torch.arange(0, dim, 2, dtype=torch.float, device=device) / dim
        return 1.0 / (config.rope_parameters["rope_theta"] ** steps), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _fused_rotary(x: torch.Tensor, backend: str) -> bool:
    """Whether the Triton kernel rotates `x`: the Triton backend, and a head size that is a power of two (its tiles)."""
    head_dim = x.shape[-1]
    return resolve_backend(backend, x.device) == "triton" and head_dim & (head_dim - 1) == 0


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "torch", token_major: bool = False
) -> torch.Tensor:
    """Rotate `x` `[B, heads, L, D]` by position tables `[B, L, D]`; heads may come as two dims `[B, H1, H2, L, D]`.

    Returns `[B, H1 * H2, L, D]`: the fused kernel reads the two-dim heads in place, PyTorch copies them first.
    `token_major`: the fused kernel lays its result out as `[B, L, heads, D]` (what packed attention reads).
    """
    if _fused_rotary(x, backend):
        from jetmoe_kernels.rotary import apply_rotary as fused_rotary

        return fused_rotary(x, cos, sin, token_major)
    x = x.flatten(1, 2) if x.dim() == 5 else x
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


def apply_rotary_pair(
    query: torch.Tensor, key: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "torch",
    token_major: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`apply_rotary` of a layer's queries and keys; the fused kernel rotates both in one launch."""
    if _fused_rotary(query, backend):
        from jetmoe_kernels.rotary import apply_rotary_pair as fused_rotary_pair

        return fused_rotary_pair(query, key, cos, sin, token_major)
    return tuple(apply_rotary(x, cos, sin, backend, token_major) for x in (query, key))
