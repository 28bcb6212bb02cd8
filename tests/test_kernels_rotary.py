"""Fused rotary embedding against the model's PyTorch `apply_rotary`: keys, MoA queries, gradient layouts."""

import pytest
import torch
from kernel_cases import DEVICE, DTYPES, assert_close, grads, randn

from jetmoe_model.layers import apply_rotary as reference
from jetmoe_kernels.rotary import apply_rotary

BATCH, LENGTH, DIM = 2, 11, 16


def tables(batch, length, dim, dtype):
    angles = torch.randn(batch, length, dim // 2, generator=torch.Generator().manual_seed(3)) * 3
    angles = torch.cat((angles, angles), dim=-1)  # the model's tables repeat the half
    return angles.cos().to(DEVICE, dtype), angles.sin().to(DEVICE, dtype)


def layouts(dtype):
    """(name, leaf tensor, what the model passes to rotary) for each way the model calls it."""
    contiguous = randn(BATCH, 3, LENGTH, DIM, dtype=dtype, seed=1)
    keys = randn(BATCH, LENGTH, 2, 3, DIM, dtype=dtype, seed=2)  # the kv projection, keys are [:, :, 0]
    queries = randn(BATCH, LENGTH, 2, 3, DIM, dtype=dtype, seed=3)  # MoA slots [B, L, k, kv_heads, D]
    return {
        "contiguous": (contiguous, contiguous),
        "keys": (keys, keys.permute(2, 0, 3, 1, 4)[0]),  # [B, heads, L, D] with gaps: not dense
        "moa-queries": (queries, queries.permute(0, 3, 2, 1, 4)),  # [B, kv_heads, k, L, D]: two-dim heads
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "keys", "moa-queries"])
@pytest.mark.parametrize("table_batch", [1, 2], ids=["shared-tables", "per-row-tables"])
def test_rotary(dtype, layout, table_batch):
    leaf, x = layouts(dtype)[layout]
    cos, sin = tables(table_batch, LENGTH, DIM, dtype)
    ours, ref = apply_rotary(x, cos, sin), reference(x, cos, sin)
    assert ours.shape == ref.shape == (BATCH, x.shape[1] * (x.shape[2] if x.dim() == 5 else 1), LENGTH, DIM)
    assert ours.is_contiguous()
    assert_close(ours, ref, dtype, "y")
    assert_close(grads(ours, leaf)[0], grads(ref, leaf)[0], dtype, "dx")


def test_query_gradient_keeps_the_expert_kernel_layout():
    """The MoA query gradient must come back contiguous in `[B, L, k, heads, D]`: no copy before the expert kernel."""
    queries = randn(BATCH, LENGTH, 2, 3, DIM, dtype=torch.float32, seed=4)
    view = queries.permute(0, 3, 2, 1, 4)
    cos, sin = tables(1, LENGTH, DIM, torch.float32)
    captured = {}
    view.register_hook(lambda grad: captured.setdefault("grad", grad))
    apply_rotary(view, cos, sin).sum().backward()
    assert captured["grad"].permute(0, 3, 2, 1, 4).is_contiguous()


def test_token_major_result_and_the_keys_gradient_layout():
    """`token_major` gives `[B, L, heads, D]` memory (packed attention's `[tokens, heads, D]` as a view), the same
    values; the keys' gradient comes back token by token, as the kv projection lays keys out."""
    leaf, keys = layouts(torch.float32)["keys"]
    cos, sin = tables(1, LENGTH, DIM, torch.float32)
    captured = {}
    keys.register_hook(lambda grad: captured.setdefault("grad", grad))
    ours = apply_rotary(keys, cos, sin, token_major=True)
    assert ours.transpose(1, 2).is_contiguous()
    assert_close(ours, reference(keys, cos, sin), torch.float32, "y")
    ours.sum().backward()
    assert captured["grad"].transpose(1, 2).is_contiguous()
