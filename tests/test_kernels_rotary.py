"""Fused rotary embedding against the model's PyTorch `apply_rotary`: keys, MoA queries, gradient layouts, and a
layer's queries and keys in one launch."""

import pytest
import torch
from kernel_cases import DEVICE, DTYPES, assert_close, grads, randn

from jetmoe_model.layers import apply_rotary as reference
import jetmoe_kernels.rotary
from jetmoe_kernels.rotary import apply_rotary, apply_rotary_pair

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


@pytest.mark.parametrize("token_major", [False, True], ids=["head-major", "token-major"])
def test_queries_and_keys_in_one_launch_each_way_equal_each_rotated_alone(monkeypatch, token_major):
    query_leaf, queries = layouts(torch.float32)["moa-queries"]  # 6 heads as [B, 3, 2, L, D]
    key_leaf, keys = layouts(torch.float32)["keys"]  # 3 heads, strided
    cos, sin = tables(1, LENGTH, DIM, torch.float32)
    launches = []
    launch = jetmoe_kernels.rotary._launch
    monkeypatch.setattr(jetmoe_kernels.rotary, "_launch", lambda pairs, *args, **kwargs: launches.append(len(pairs))
                        or launch(pairs, *args, **kwargs))  # fmt: skip
    ours = apply_rotary_pair(queries, keys, cos, sin, token_major=token_major)
    weights = [randn(*y.shape, dtype=torch.float32, seed=5 + i, grad=False) for i, y in enumerate(ours)]
    sum((y * w).sum() for y, w in zip(ours, weights)).backward()
    assert launches == [2, 2]  # both tensors, forward and backward
    ours_grads = [leaf.grad.clone() for leaf in (query_leaf, key_leaf)]

    for leaf in (query_leaf, key_leaf):
        leaf.grad = None
    expected = [reference(x, cos, sin) for x in (queries, keys)]
    sum((y * w).sum() for y, w in zip(expected, weights)).backward()
    for name, got, want in zip(("query", "key"), ours, expected):
        assert_close(got, want, torch.float32, name)
    for name, got, leaf in zip(("query", "key"), ours_grads, (query_leaf, key_leaf)):
        assert_close(got, leaf.grad, torch.float32, f"d{name}")
    if token_major:
        assert all(y.transpose(1, 2).is_contiguous() for y in ours)
