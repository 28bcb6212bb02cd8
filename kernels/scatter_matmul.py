"""Scattered expert matmul: `y[r] = W[expert(r)] @ x[r]` for routed rows, rows read and written through the index.

Grouped row `r` (rows sorted by expert) reads its input from row `in_rows[r]` of `x` (token `t`, read k times,
or slot `t*k+j`) and writes `out_rows[r]` of `y`, so no gathered copy of the activations is ever materialised.
The same kernel computes the input gradient (`dx = dy @ W[e]`, the weight read transposed). The weight's tiles
come through the TMA (the tensor-memory accelerator of Hopper and later GPUs) where its layout allows (16-byte
aligned rows), else by pointers; the routed rows are always read by pointers, through the index.

For the MLP experts' input projection the epilogue can apply SiLU-GLU (`y = silu(a) * b` for `[a, b] = W[e] x`,
two accumulators per program), writing `[a, b]` only when a backward will read it (`kernels.glu`).

A low-rank term rides along for LoRA: `y[r] = W[e] x[r] + V[e] l[r]`, with `l` `[T*k, R]` rank-R rows in grouped
order computed beforehand (`l = A x` forward, `dy B` backward). The kernel starts its accumulator at
`l[rows] @ V[e]^T` (one K=R dot), so a LoRA expert projection costs one full-width matmul plus rank-R work instead
of three full-width passes. Starting the accumulator with it rather than adding it after the main loop measured
faster on an H100: 0.88 against 1.50 ms of LoRA overhead per JetMoE-8B layer (`bench/bench_lora.py --projections`).
With LoRA dropout the input gradient's low-rank start is masked by the dropout's kept elements before the main loop
adds `dy W[e]`: the dropout's backward, a rank-R input-gradient matmul of its own, its sum over a token's slots and
the add of the two gradients ride in the one kernel.
"""

import functools

import torch
import triton
import triton.language as tl

from .grouped_dw import rank_block, weight_grad
from .launching import quick_launch
from .schedule import (
    RoutingIndex, cdiv, compute_capability, dot_options, interpreting, launch_first_fitting, tile_candidates,
)


@triton.jit
def _weight_tile(W_DESC, w_ptrs, expert, n0, k0, k_mask, col_mask, W_TMA: tl.constexpr, W_KN: tl.constexpr,
                 EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """The `[BLOCK_K, BLOCK_N]` weight tile at output column n0, reduction index k0; zeros outside the weight."""
    if W_TMA:  # by the tensor-memory accelerator, which fills out-of-range rows and columns with zeros
        if W_KN:
            return W_DESC.load([expert, k0, n0]).reshape(BLOCK_K, BLOCK_N)
        return W_DESC.load([expert, n0, k0]).reshape(BLOCK_N, BLOCK_K).T
    if EVEN_K:
        return tl.load(w_ptrs, mask=col_mask[None, :], other=0.0)
    return tl.load(w_ptrs, mask=k_mask[:, None] & col_mask[None, :], other=0.0)


# num_tiles follows the batch's token count: specialised (divisible by 16 or not), each new kind of value would
# compile a variant of this kernel in the middle of training, a stall of a second or more.
@quick_launch
@triton.jit(do_not_specialize=["num_tiles"])
def _scatter_mm_kernel(
    X, W, W_DESC, Y, AB, in_rows, out_rows, tile_start, tile_end, tile_expert,
    num_tiles, N, K,
    stride_xm, stride_xk, stride_we, stride_wn, stride_wk, stride_ym, stride_yn, stride_abm, scale,
    L, V, R, stride_lm, stride_lr, stride_ve, stride_vn, stride_vr, KEEP, keep_rows, stride_keep, keep_scale,
    IN_INDEXED: tl.constexpr, OUT_INDEXED: tl.constexpr, EVEN_K: tl.constexpr, HAS_LOW_RANK: tl.constexpr,
    HAS_KEEP: tl.constexpr, KEEP_INDEXED: tl.constexpr,
    W_TMA: tl.constexpr, W_KN: tl.constexpr, SILU_GLU: tl.constexpr, KEEP_AB: tl.constexpr,
    PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
    GROUP_M: tl.constexpr,
):  # fmt: skip
    # Grouped launch order: GROUP_M row tiles sweep the output columns together, so weight tiles stay in L2.
    pid = tl.program_id(0)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(num_tiles - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    row_start = tl.load(tile_start + pid_m)
    row_end = tl.load(tile_end + pid_m)
    if row_start >= row_end:  # spare tile: no rows
        return
    expert32 = tl.load(tile_expert + pid_m)
    expert = expert32.to(tl.int64)

    rows = row_start + tl.arange(0, BLOCK_M)
    row_mask = rows < row_end
    src = tl.load(in_rows + rows, mask=row_mask, other=0) if IN_INDEXED else rows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    ks = tl.arange(0, BLOCK_K)

    x_ptrs = X + src.to(tl.int64)[:, None] * stride_xm + ks[None, :] * stride_xk
    w_ptrs = W + expert * stride_we + ks[:, None] * stride_wk + cols[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if HAS_LOW_RANK:  # acc starts as l[rows] @ V[e]^T, the rank padded to BLOCK_R (tl.dot needs 16) with zeros
        rs = tl.arange(0, BLOCK_R)
        r_mask = rs < R
        l_ptrs = L + rows.to(tl.int64)[:, None] * stride_lm + rs[None, :] * stride_lr
        v_ptrs = V + expert * stride_ve + rs[:, None] * stride_vr + cols[None, :] * stride_vn
        low = tl.load(l_ptrs, mask=row_mask[:, None] & r_mask[None, :], other=0.0)
        up = tl.load(v_ptrs, mask=r_mask[:, None] & col_mask[None, :], other=0.0)
        if DOT_FP32:
            low, up = low.to(tl.float32), up.to(tl.float32)
        acc = tl.dot(low, up, acc, input_precision=PRECISION)
        if HAS_KEEP:  # LoRA dropout's backward on the low-rank term: kept elements scaled, dropped ones zero
            keep_src = tl.load(keep_rows + rows, mask=row_mask, other=0) if KEEP_INDEXED else rows
            keep_ptrs = KEEP + keep_src.to(tl.int64)[:, None] * stride_keep + cols[None, :]
            keep = tl.load(keep_ptrs, mask=row_mask[:, None] & col_mask[None, :], other=0)
            acc = tl.where(keep, acc * keep_scale, 0.0)
    if SILU_GLU:  # the second half of the weight's rows (b of [a, b]) in its own accumulator
        acc_b = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    n0 = pid_n * BLOCK_N
    for k0 in range(0, K, BLOCK_K):
        k_mask = (k0 + ks) < K
        if EVEN_K:
            a = tl.load(x_ptrs, mask=row_mask[:, None], other=0.0)
        else:
            a = tl.load(x_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        b = _weight_tile(W_DESC, w_ptrs, expert32, n0, k0, k_mask, col_mask, W_TMA, W_KN, EVEN_K, BLOCK_N, BLOCK_K)
        if DOT_FP32:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if SILU_GLU:
            b = _weight_tile(W_DESC, w_ptrs + N * stride_wn, expert32, n0 + N, k0, k_mask, col_mask, W_TMA, W_KN,
                             EVEN_K, BLOCK_N, BLOCK_K)  # fmt: skip
            if DOT_FP32:
                b = b.to(tl.float32)
            acc_b = tl.dot(a, b, acc_b, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    acc = acc * scale

    dst = tl.load(out_rows + rows, mask=row_mask, other=0) if OUT_INDEXED else rows
    out_mask = row_mask[:, None] & col_mask[None, :]
    if SILU_GLU:  # y = silu(a) * b from a and b rounded as the unfused pair of kernels would store them
        a = acc.to(Y.dtype.element_ty)
        b = (acc_b * scale).to(Y.dtype.element_ty)
        if KEEP_AB:  # the backward's input
            ab_ptrs = AB + dst.to(tl.int64)[:, None] * stride_abm + cols[None, :]
            tl.store(ab_ptrs, a, mask=out_mask)
            tl.store(ab_ptrs + N, b, mask=out_mask)
        a, b = a.to(tl.float32), b.to(tl.float32)
        acc = a * tl.sigmoid(a) * b
    y_ptrs = Y + dst.to(tl.int64)[:, None] * stride_ym + cols[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=out_mask)


# Tiles for the GPU, fixed rather than autotuned: best of `bench/bench_kernels.py --sweep` on an H100 (2026-11-23).
# With the weight read by TMA, 585-622 TFLOP/s on the JetMoE-8B matmuls (forward and input gradient; 568-610 with 3
# stages); 511-545 forward with the weight read by pointers, 448-536 with 128x128x64 tiles.
GPU_CONFIG = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4)
SMALL_CONFIG = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)  # float32 fallback
# With the low-rank term's tiles the tuned config can exceed shared memory: one stage fewer keeps its tile shape.
GPU_CONFIG_3_STAGES = dict(GPU_CONFIG, num_stages=3)
INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=4, num_stages=1)


def _configs() -> list[dict]:
    return [INTERPRETER_CONFIG] if interpreting() else [GPU_CONFIG, GPU_CONFIG_3_STAGES, SMALL_CONFIG]


def tma_readable(tensor: torch.Tensor) -> bool:
    """Whether TMA can read `tensor`: last dim contiguous, 16-byte aligned start and strides (else pointer loads)."""
    size = tensor.element_size()
    aligned = all(stride * size % 16 == 0 for stride in tensor.stride()[:-1])
    return tensor.stride(-1) == 1 and aligned and tensor.data_ptr() % 16 == 0


def _has_tma(device_index: int) -> bool:
    """Hopper (compute capability 9) and later have the TMA; older GPUs keep the pointer loads they were tuned with."""
    return compute_capability(device_index) >= 9


def _weight_descriptor(weight: torch.Tensor, transpose_weight: bool, cfg: dict):
    """A TMA descriptor of `weight` `[E, N, K]` (or `[E, K, N]` applied transposed) in `cfg`'s tiles, or None."""
    on_gpu = weight.device.type == "cuda"
    if not tma_readable(weight) or (on_gpu and not _has_tma(weight.device.index)):
        return None
    from triton.tools.tensor_descriptor import TensorDescriptor

    inner = [cfg["BLOCK_K"], cfg["BLOCK_N"]] if transpose_weight else [cfg["BLOCK_N"], cfg["BLOCK_K"]]
    return TensorDescriptor.from_tensor(weight, [1, *inner])


@functools.cache
def _candidates(silu_glu: bool, n_block: int, interpreter: bool) -> tuple:
    """The tile configs for an output `n_block` wide (a power of two covering it), as `launch_first_fitting` tries
    them. Output tiles are no wider than the output: the rank-r matmuls have N = r, far below the tuned 256 columns.
    With the fused GLU a program holds two accumulators (a and b): half as many columns each, same registers.
    Cached by the interpreter setting too, which `_configs` reads (`bench_kernels.py --sweep` clears it)."""
    glu = (dict(cfg, BLOCK_N=max(16, cfg["BLOCK_N"] // 2)) if silu_glu else cfg for cfg in _configs())
    return tile_candidates(dict(cfg, BLOCK_N=min(cfg["BLOCK_N"], n_block)) for cfg in glu)


def _oriented(weight: torch.Tensor, transpose: bool) -> tuple[int, int, int, int, int]:
    """`(n, k, stride_e, stride_n, stride_k)` of `weight` `[E, N, K]` applied as is, or as `[E, K, N]`."""
    stride_e, stride_0, stride_1 = weight.stride()
    if transpose:
        return weight.shape[2], weight.shape[1], stride_e, stride_1, stride_0
    return weight.shape[1], weight.shape[2], stride_e, stride_0, stride_1


def scatter_mm(
    x: torch.Tensor,
    weight: torch.Tensor,
    index: RoutingIndex,
    in_rows: torch.Tensor | None,
    out_rows: torch.Tensor | None,
    num_out_rows: int,
    *,
    transpose_weight: bool = False,
    scale: float = 1.0,
    low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
    low_rank_keep: tuple[torch.Tensor, torch.Tensor | None, float] | None = None,
    silu_glu: bool = False,
    keep_ab: torch.Tensor | None = None,
    weight_by_tma: bool = True,
) -> torch.Tensor:
    """Launch the kernel. `in_rows`/`out_rows` None mean grouped order.

    With `transpose_weight`, `weight` `[E, N, K]` is applied as `[E, K, N]`: the input gradient of the forward.
    `scale` multiplies the result: LoRA's scaling, applied where it is cheapest, on the rank-r rows (`A x`, `dy B`).
    `low_rank` `(l, v)` adds `v[e] @ l[r]` to grouped row r: `l` `[T*k, R]` in grouped order, `v` laid out as
    `weight` with R for its input dimension (`[E, N, R]`, or `[E, R, N]` with `transpose_weight`).
    `low_rank_keep` `(keep, keep_rows, keep_scale)` multiplies that term by `keep_scale * keep[keep_rows[r]]`
    elementwise (`keep` boolean `[rows, N]`, contiguous; `keep_rows` None: grouped order): LoRA dropout's backward.
    With `silu_glu`, the result is `silu(a) * b` for `[a, b]` the two halves of `W[e] x` (`[T*k, N/2]`), computed
    in the epilogue; `keep_ab` `[T*k, N]`, if given, also receives `[a, b]` (what the GLU's backward reads).
    `weight_by_tma` False reads the weight by pointers even where TMA could: LoRA's rank-r matmuls, whose weight
    tiles are a few KB (the gathered rows dominate their reads), while each launch with a TMA descriptor costs the host
    Triton's per-argument Python and a descriptor fill (about half of a LoRA DPO step's TMA launches).
    """
    n, k, stride_we, stride_wn, stride_wk = _oriented(weight, transpose_weight)
    assert x.shape[1] == k, (x.shape, weight.shape, transpose_weight)
    if silu_glu:
        assert not transpose_weight and low_rank is None and n % 2 == 0, "the fused GLU is the plain forward only"
        n //= 2
    y = torch.empty(num_out_rows, n, device=x.device, dtype=x.dtype)
    if out_rows is not None and num_out_rows > index.slot_rows.shape[0]:
        raise ValueError("scattered outputs cannot hold more rows than routed slots")
    low_rank_args = _low_rank_args(low_rank, low_rank_keep, x, weight.shape[0], n, transpose_weight)
    ab = keep_ab if keep_ab is not None else y  # a placeholder the kernel never writes without KEEP_AB

    def launch(cfg):
        plan = index.tiles(cfg["BLOCK_M"])
        grid = (plan.num_tiles * cdiv(n, cfg["BLOCK_N"]),)
        descriptor = _weight_descriptor(weight, transpose_weight, cfg) if weight_by_tma else None
        _scatter_mm_kernel[grid](
            x, weight, descriptor, y, ab,
            in_rows if in_rows is not None else index.slot_rows,
            out_rows if out_rows is not None else index.slot_rows,
            plan.row_start, plan.row_end, plan.expert,
            plan.num_tiles, n, k,
            x.stride(0), x.stride(1), stride_we, stride_wn, stride_wk, y.stride(0), y.stride(1), ab.stride(0), scale,
            IN_INDEXED=in_rows is not None, OUT_INDEXED=out_rows is not None,
            EVEN_K=k % cfg["BLOCK_K"] == 0, W_TMA=descriptor is not None, W_KN=transpose_weight,
            SILU_GLU=silu_glu, KEEP_AB=keep_ab is not None, **low_rank_args, **dot_options(x.dtype), **cfg,
        )  # fmt: skip

    launch_first_fitting("scatter_mm", x.dtype, _candidates(silu_glu, rank_block(n), interpreting()), launch)
    return y


def _low_rank_args(low_rank, keep, x: torch.Tensor, num_experts: int, n: int, transpose: bool) -> dict:
    """The kernel's low-rank arguments for `low_rank = (l, v)` and its mask `keep`, checked against the main
    matmul's shape.

    Without a low-rank term (or a mask) the pointers are placeholders (`x`) that the kernel never reads.
    """
    keep_args = _keep_args(keep, x, n)
    if low_rank is None:
        assert keep is None, "a mask needs the low-rank term it masks"
        strides = dict(stride_lm=0, stride_lr=0, stride_ve=0, stride_vn=0, stride_vr=0)
        return dict(L=x, V=x, R=0, **strides, HAS_LOW_RANK=False, BLOCK_R=16, **keep_args)
    rows, up = low_rank
    up_n, rank, stride_ve, stride_vn, stride_vr = _oriented(up, transpose)
    if (up.shape[0], up_n, rows.shape[1]) != (num_experts, n, rank):
        raise ValueError(f"low-rank rows {tuple(rows.shape)} and weight {tuple(up.shape)} do not fit the matmul")
    strides = dict(stride_lm=rows.stride(0), stride_lr=rows.stride(1), stride_ve=stride_ve, stride_vn=stride_vn,
                   stride_vr=stride_vr)  # fmt: skip
    return dict(L=rows, V=up, R=rank, **strides, HAS_LOW_RANK=True, BLOCK_R=rank_block(rank), **keep_args)


def _keep_args(keep, placeholder: torch.Tensor, n: int) -> dict:
    if keep is None:
        return dict(KEEP=placeholder, keep_rows=placeholder, stride_keep=0, keep_scale=1.0, HAS_KEEP=False,
                    KEEP_INDEXED=False)  # fmt: skip
    mask, rows, scale = keep
    if mask.dtype != torch.bool or mask.shape[1] != n or mask.stride(1) != 1:
        raise ValueError(f"the low-rank mask must be boolean, contiguous rows of {n}: {mask.dtype} {tuple(mask.shape)}")
    return dict(KEEP=mask, keep_rows=placeholder if rows is None else rows, stride_keep=mask.stride(0),
                keep_scale=scale, HAS_KEEP=True, KEEP_INDEXED=rows is not None)  # fmt: skip


def input_rows(x: torch.Tensor, index: RoutingIndex, grouped: bool) -> torch.Tensor | None:
    """Which row of `x` each grouped row reads: None (grouped), the slot, or the token (`slot // k`)."""
    if grouped:
        return None
    num_slots = index.slot_rows.shape[0]
    if x.shape[0] == num_slots:
        return index.slot_rows
    return index.token_rows


def reduce_token_slots(dx_slots: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Token rows were read k times; their gradient is the sum over the k slots."""
    top_k = dx_slots.shape[0] // num_tokens
    if top_k == 1:
        return dx_slots
    return dx_slots.view(num_tokens, top_k, -1).sum(1)  # PyTorch sums 16-bit floats in float32


def input_grad(dy, weight, index: RoutingIndex, dy_rows, in_rows, num_rows: int, low_rank=None,
               low_rank_keep=None) -> torch.Tensor:  # fmt: skip
    """`dx = dy W[e]` (plus the `low_rank` term, masked by `low_rank_keep`) back in the rows the input was read from."""
    # Token rows are read k times: write per-slot gradients, then sum them per token.
    token_input = in_rows is index.token_rows
    dx_rows = index.slot_rows if token_input else in_rows
    num_slots = index.slot_rows.shape[0]
    dx = scatter_mm(dy, weight, index, dy_rows, dx_rows, num_slots, transpose_weight=True, low_rank=low_rank,
                    low_rank_keep=low_rank_keep)  # fmt: skip
    return reduce_token_slots(dx, num_rows) if token_input else dx


SAVED_OPERANDS = 9  # tensors `save_operands` keeps ahead of a Function's own


def lora_prologue(x, lora_A, lora_B, scaling: float, dropout: float, index: RoutingIndex, in_rows) -> tuple | None:
    """`(x_lora, keep, l, A, B)`: LoRA's input (`x` after dropout, the kept elements `keep`; `x` and None without
    dropout), the rank-r rows `l[r] = s * A[e] x_lora[r]` (grouped order) and the factors as the kernels read them,
    in `x`'s dtype and `B` contiguous (PEFT's layout interleaves the experts). None without LoRA.

    The dropout is `torch.native_dropout`, the kernel `nn.Dropout` runs in training: same random draws, same
    result as PEFT's dropout module in its place."""
    if lora_A is None:
        return None
    x_lora, keep = torch.native_dropout(x, dropout, True) if dropout else (x, None)
    lora_A, lora_B = lora_A.to(x.dtype), lora_B.to(x.dtype, memory_format=torch.contiguous_format)
    rows = scatter_mm(x_lora, lora_A, index, in_rows, None, index.slot_rows.shape[0], scale=scaling,
                      weight_by_tma=False)  # fmt: skip
    return x_lora, keep, rows, lora_A, lora_B


def save_operands(ctx, index: RoutingIndex, in_rows, x, weight, lora: tuple, prologue, *extra) -> None:
    """Keeps what `matmul_grads` reads; `extra` tensors are saved after them (`saved[SAVED_OPERANDS:]`)."""
    lora_A, lora_B, scaling, dropout = lora
    ctx.save_for_backward(x, weight, lora_A, lora_B, *(prologue or (None,) * 5), *extra)
    ctx.index, ctx.in_rows, ctx.scaling = index, in_rows, scaling
    ctx.keep_scale = 1.0 / (1.0 - dropout) if dropout < 1 else 0.0  # as native_dropout scales what it keeps


def matmul_grads(ctx, saved: tuple, dy: torch.Tensor, dy_rows, needs) -> tuple:
    """`(dx, dW, dA, dB)` of `y = W[e] x + s * B[e] A[e] x_lora` from `dy` in rows `dy_rows` (None: grouped), for
    `x_lora` `x` itself or `x` after dropout.

    `saved` is `ctx.saved_tensors`, read once by the caller's backward: activation checkpointing (non-reentrant)
    refuses a second read.

    `needs` says which of the four are wanted. LoRA's rank-r output gradient `dl = s * dy B[e]` comes first; the
    input gradient's matmul adds `dl A[e]` (with dropout, masked by the kept elements and scaled as the dropout
    scaled them). `dA` and `dB` come out in the dtype and strides of the factors given (PEFT's float32 views), so
    nothing is cast or permuted after. A LoRA layer's base weight is frozen: no `dW`.
    """
    x, weight, lora_A, lora_B, x_lora, keep, rows, kernel_A, kernel_B = saved[:SAVED_OPERANDS]
    index, in_rows = ctx.index, ctx.in_rows
    want_dx, want_dw, want_da, want_db = needs
    num_slots = index.slot_rows.shape[0]
    d_rows = None
    if lora_A is not None and (want_dx or want_da):
        d_rows = scatter_mm(dy, kernel_B, index, dy_rows, None, num_slots, transpose_weight=True, scale=ctx.scaling,
                            weight_by_tma=False)  # fmt: skip
    dx = None
    if want_dx:
        low_rank = None if d_rows is None else (d_rows, kernel_A)
        low_rank_keep = None if keep is None else (keep, in_rows, ctx.keep_scale)
        dx = input_grad(dy, weight, index, dy_rows, in_rows, x.shape[0], low_rank, low_rank_keep)
    dw = weight_grad(x, dy, weight, index, in_rows, dy_rows) if want_dw else None
    da = weight_grad(x_lora, d_rows, lora_A, index, in_rows, None) if want_da else None
    db = weight_grad(rows, dy, lora_B, index, None, dy_rows) if want_db else None
    return dx, dw, da, db


class ScatteredMatmul(torch.autograd.Function):
    """Autograd for `scatter_mm`: x in grouped/slot/token rows, y `[T*k, N]` in grouped or slot order.

    With a LoRA pair, `y[r] += s * B[e] A[e] x_lora[r]` (`A` `[E, rank, K]`, `B` `[E, N, rank]`, any float dtype
    and strides; `x_lora` `x` after LoRA's dropout with probability `dropout`, or `x` itself), added inside the
    matmul.
    """

    @staticmethod
    def forward(ctx, x, weight, index: RoutingIndex, grouped_in, grouped_out, lora_A, lora_B, scaling, dropout):
        in_rows = input_rows(x, index, grouped_in)
        out_rows = None if grouped_out else index.slot_rows
        prologue = lora_prologue(x, lora_A, lora_B, scaling, dropout, index, in_rows)
        save_operands(ctx, index, in_rows, x, weight, (lora_A, lora_B, scaling, dropout), prologue)
        ctx.out_rows = out_rows
        low_rank = None if prologue is None else (prologue[2], prologue[4])
        return scatter_mm(x, weight, index, in_rows, out_rows, index.slot_rows.shape[0], low_rank=low_rank)

    @staticmethod
    def backward(ctx, dy):
        needs = ctx.needs_input_grad
        dx, dw, da, db = matmul_grads(ctx, ctx.saved_tensors, dy.contiguous(), ctx.out_rows, needs[:2] + needs[5:7])
        return dx, dw, None, None, None, da, db, None, None


NO_LORA = (None, None, 1.0, 0.0)


def scattered_matmul(
    x, weight, index: RoutingIndex, grouped_in: bool = False, grouped_out: bool = False, *, lora=None
):
    """`lora`: None, or `(A, B, scaling, dropout)` as `ScatteredMatmul` takes them."""
    return ScatteredMatmul.apply(x, weight, index, grouped_in, grouped_out, *(lora or NO_LORA))
