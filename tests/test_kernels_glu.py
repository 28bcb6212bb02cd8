"""Fused SiLU-GLU forward and backward against `silu(a) * b` in PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import DTYPES, assert_close, grads, randn

from kernels.glu import silu_glu


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,ffn", [(7, 20), (33, 48), (1, 5)])
def test_silu_glu(dtype, rows, ffn):
    ab = randn(rows, 2 * ffn, dtype=dtype, seed=rows + ffn, scale=3.0)
    ours = silu_glu(ab)
    a, b = ab.chunk(2, dim=-1)
    ref = F.silu(a) * b
    assert_close(ours, ref, dtype, "h")
    assert_close(grads(ours, ab)[0], grads(ref, ab)[0], dtype, "dab")
