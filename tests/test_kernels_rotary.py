"""Fused rotary embedding against the model's PyTorch `apply_rotary`, on a contiguous and a permuted input."""

import pytest
import torch
from kernel_cases import DEVICE, DTYPES, assert_close, grads, randn

from jetmoe_model.layers import apply_rotary as reference
from kernels.rotary import apply_rotary


def tables(batch, length, dim, dtype):
    angles = torch.randn(batch, length, dim // 2, generator=torch.Generator().manual_seed(3)) * 3
    angles = torch.cat((angles, angles), dim=-1)  # the model's tables repeat the half
    return angles.cos().to(DEVICE, dtype), angles.sin().to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("permuted", [False, True], ids=["contiguous", "permuted"])
@pytest.mark.parametrize("table_batch", [1, 2], ids=["shared-tables", "per-row-tables"])
def test_rotary(dtype, permuted, table_batch):
    batch, heads, length, dim = 2, 3, 11, 16
    if permuted:  # keys in the model: a [B, L, heads, D] projection seen as [B, heads, L, D]
        x = randn(batch, length, heads, dim, dtype=dtype, seed=1)
        x_in = x.transpose(1, 2)
    else:
        x = x_in = randn(batch, heads, length, dim, dtype=dtype, seed=1)
    cos, sin = tables(table_batch, length, dim, dtype)
    ours, ref = apply_rotary(x_in, cos, sin), reference(x_in, cos, sin)
    assert_close(ours, ref, dtype, "y")
    assert_close(grads(ours, x)[0], grads(ref, x)[0], dtype, "dx")
