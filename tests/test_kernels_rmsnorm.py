"""Fused RMSNorm against the model's PyTorch RMSNorm: output and x, weight gradients."""

import pytest
import torch
from kernel_cases import DTYPES, assert_close, grads, randn

from jetmoe_model.layers import RMSNorm
from jetmoe_kernels.rmsnorm import rms_norm


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 5, 24), (7, 48), (3, 1, 37)], ids=str)
def test_rmsnorm(dtype, shape):
    x = randn(*shape, dtype=dtype, seed=sum(shape), scale=2.0)
    norm = RMSNorm(shape[-1], eps=1e-6).to(device=x.device, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(randn(shape[-1], dtype=dtype, seed=1, grad=False))
    ours = rms_norm(x, norm.weight, norm.eps)
    ref = norm(x)
    assert ours.dtype == ref.dtype
    assert_close(ours, ref, dtype, "y")
    for name, got, want in zip(("dx", "dweight"), grads(ours, (x, norm.weight)), grads(ref, (x, norm.weight))):
        assert_close(got, want, dtype, name)
