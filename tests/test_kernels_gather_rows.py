"""Prefix-shared key gather against `index_select` and its autograd (`index_add_`): the same rows, the same sums."""

import pytest
import torch
from kernel_cases import DEVICE, DTYPES, assert_close, randn

from jetmoe_kernels.gather_rows import gather_keys_values
from jetmoe_model.pair_packing import _key_sources


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_and_its_gradient_match_index_select(dtype):
    """Keys strided as the rotary kernel leaves them (`[heads, T, D]` transposed), values as views of the kv
    projection; some tokens read twice (a prompt's, read by both responses), one never."""
    tokens, heads, dim = 9, 4, 16
    key = randn(heads, tokens, dim, dtype=dtype, seed=1).transpose(0, 1)  # [T, heads, D], strided rows
    kv = randn(tokens, 2, heads, dim, dtype=dtype, seed=2)
    value = kv[:, 1]
    index = torch.tensor([0, 1, 2, 3, 0, 1, 4, 5, 6, 7, 2], device=DEVICE)  # token 8 read by no one
    sources = _key_sources(index.cpu(), tokens).to(DEVICE)

    ours = gather_keys_values(key, value, index, sources)
    ref = key.index_select(0, index), value.index_select(0, index)
    for got, want in zip(ours, ref):
        assert got.is_contiguous()
        assert torch.equal(got, want)

    upstream = [randn(*r.shape, dtype=dtype, seed=3 + i, grad=False) for i, r in enumerate(ref)]
    got = torch.autograd.grad(ours, (key, kv), upstream)
    want = torch.autograd.grad(ref, (key, kv), upstream)
    for g, w, name in zip(got, want, ("dkey", "dkv")):
        if dtype == torch.float32 or DEVICE == "cuda":  # two bf16 copies summed in float32 round as index_add_ does
            assert torch.equal(g, w), name
        else:  # Triton's CPU interpreter truncates float32 to bfloat16 where the GPU rounds to nearest
            assert_close(g, w, dtype, name)


def test_sources_list_every_position_of_each_token():
    index = torch.tensor([3, 0, 1, 0, 3, 3])
    assert _key_sources(index, 5).tolist() == [[1, 3, -1], [2, -1, -1], [-1, -1, -1], [0, 4, 5], [-1, -1, -1]]
