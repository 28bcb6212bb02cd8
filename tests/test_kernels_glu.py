"""Fused SiLU-GLU, alone and in the expert input projection's epilogue, against `silu(a) * b` in PyTorch."""

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import CASE_IDS, CASES, DTYPES, assert_close, grads, make_routing, randn

from jetmoe_kernels import scattered_experts_reference
from jetmoe_kernels.glu import scattered_matmul_silu_glu, silu_glu
from jetmoe_kernels.schedule import routing_index


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rows,ffn", [(7, 20), (33, 48), (1, 5)])
def test_silu_glu(dtype, rows, ffn):
    ab = randn(rows, 2 * ffn, dtype=dtype, seed=rows + ffn, scale=3.0)
    ours = silu_glu(ab)
    a, b = ab.chunk(2, dim=-1)
    ref = F.silu(a) * b
    assert_close(ours, ref, dtype, "h")
    assert_close(grads(ours, ab)[0], grads(ref, ab)[0], dtype, "dab")


T, E = 19, 4  # 19 tokens: no multiple of the interpreter's 16-row tiles


@pytest.mark.parametrize("routing_kind,dtype", CASES, ids=CASE_IDS)
# (24, 24): the weight read by TMA; (21, 21): b's rows start mid-tile, and weight rows of 21 elements are not
# 16-byte aligned, so the pointer loads run.
@pytest.mark.parametrize("ffn,in_size", [(24, 24), (21, 21)], ids=["tma", "pointers"])
def test_input_projection_with_fused_glu(dtype, routing_kind, ffn, in_size):
    """SiLU-GLU in the matmul's epilogue vs the reference matmul then `silu(a) * b`: outputs, dx, dW, and the
    no-grad forward (which writes no `[a, b]`)."""
    routing, _ = make_routing(routing_kind, T, E, 2, dtype)
    x = randn(T, in_size, dtype=dtype, seed=1)
    weight = randn(E, 2 * ffn, in_size, dtype=dtype, seed=2, scale=0.3)
    ours = scattered_matmul_silu_glu(x, weight, routing_index(routing))
    a, b = scattered_experts_reference(x, weight, routing, grouped_out=True).chunk(2, dim=-1)
    ref = F.silu(a) * b
    assert_close(ours, ref, dtype, "h")
    for name, got, want in zip(("dx", "dW"), grads(ours, (x, weight)), grads(ref, (x, weight))):
        assert_close(got, want, dtype, name)
    with torch.no_grad():
        assert torch.equal(scattered_matmul_silu_glu(x, weight, routing_index(routing)), ours.detach())
