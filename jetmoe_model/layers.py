"""Building blocks shared by attention and MLP: RMSNorm and rotary position embeddings.

Each runs either in plain PyTorch (the reference) or as one fused Triton kernel (`jetmoe_kernels.rmsnorm`,
`jetmoe_kernels.rotary`), chosen by the model's `moe_backend` like the expert kernels: unfused, these small ops took a
fifth of a JetMoE-8B training step on an H100 (docs/benchmarks.md).
"""

import torch
from torch import nn
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS


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
    """cos/sin tables for the given positions; any RoPE scaling type transformers knows is accepted."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        inv_freq, self.attention_scaling = self.compute_inv_freq()
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def compute_inv_freq(self) -> tuple[torch.Tensor, float]:
        """Also called by `_init_weights`: the buffer is not saved, so loading a checkpoint must rebuild it."""
        rope = self.config.rope_parameters
        rope_type = rope.get("rope_type", "default")
        if rope_type != "default":
            return ROPE_INIT_FUNCTIONS[rope_type](self.config)
        dim = self.config.kv_channels
        return 1.0 / (rope["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Rotate `x` `[B, heads, L, D]` by position tables `[B, L, D]`; heads may come as two dims `[B, H1, H2, L, D]`.

    Returns `[B, H1 * H2, L, D]`: the fused kernel reads the two-dim heads in place, PyTorch copies them first.
    """
    head_dim = x.shape[-1]
    if resolve_backend(backend, x.device) == "triton" and head_dim & (head_dim - 1) == 0:  # the kernel's tiles
        from jetmoe_kernels.rotary import apply_rotary as fused_rotary

        return fused_rotary(x, cos, sin)
    x = x.flatten(1, 2) if x.dim() == 5 else x
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin
