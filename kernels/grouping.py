"""Routing bookkeeping in two small kernels: slots grouped by expert, and the tile plan of the grouped rows.

In PyTorch the same bookkeeping is a stable sort, a histogram, a cumsum, int32 casts and about fifteen ops per tile
plan, for each of a JetMoE layer's two routers: each op is a few GPU microseconds but ~10 host microseconds to
launch, and on an H100 the host then fell behind the GPU (JetMoE-8B forward: 110 ms of launches for 90 ms of GPU
work). Here each is one launch of one program: the routing of a step is tens of thousands of slots, a few passes
over them in one block are cheaper than the launches they replace.
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _group_slots_kernel(
    EXPERTS, SORTED_EXPERTS, SORTED_SLOTS, SLOT_ROWS, TOKEN_ROWS, COUNTS, STARTS, ENDS,
    num_slots, num_experts, TOP_K: tl.constexpr, E_PAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """A counting sort: count each expert's slots, then give every slot its place (stable: slot order kept)."""
    es = tl.arange(0, E_PAD)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for first in range(0, num_slots, BLOCK):
        slots = first + tl.arange(0, BLOCK)
        experts = tl.load(EXPERTS + slots, mask=slots < num_slots, other=E_PAD)  # padding matches no expert
        counts += tl.sum((experts[:, None] == es[None, :]).to(tl.int32), axis=0)
    ends = tl.cumsum(counts, axis=0)
    real = es < num_experts
    tl.store(COUNTS + es, counts.to(tl.int64), mask=real)
    tl.store(STARTS + es, ends - counts, mask=real)
    tl.store(ENDS + es, ends, mask=real)

    next_place = ends - counts  # where each expert's next slot goes
    for first in range(0, num_slots, BLOCK):
        slots = first + tl.arange(0, BLOCK)
        valid = slots < num_slots
        experts = tl.load(EXPERTS + slots, mask=valid, other=E_PAD)
        one_hot = (experts[:, None] == es[None, :]).to(tl.int32)
        earlier = tl.cumsum(one_hot, axis=0) - one_hot  # same-expert slots before this one in the block
        place = tl.sum((next_place[None, :] + earlier) * one_hot, axis=1)
        tl.store(SORTED_EXPERTS + place, experts.to(tl.int64), mask=valid)
        tl.store(SORTED_SLOTS + place, slots.to(tl.int64), mask=valid)
        tl.store(SLOT_ROWS + place, slots, mask=valid)
        tl.store(TOKEN_ROWS + place, slots // TOP_K, mask=valid)
        next_place += tl.sum(one_hot, axis=0)


@triton.jit
def _plan_tiles_kernel(
    STARTS, ENDS, ROW_START, ROW_END, TILE_EXPERT, num_tiles, num_experts,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr,
):  # fmt: skip
    """Expert e's rows `[start_e, end_e)` become consecutive tiles of BLOCK_M rows; the rest are empty spares."""
    ts = tl.arange(0, BLOCK_T)
    first_tile = 0
    for expert in range(0, num_experts):
        start = tl.load(STARTS + expert)
        end = tl.load(ENDS + expert)
        tiles = (end - start + BLOCK_M - 1) // BLOCK_M
        for t0 in range(0, tiles, BLOCK_T):
            t = t0 + ts
            mask = t < tiles
            tl.store(ROW_START + first_tile + t, start + t * BLOCK_M, mask=mask)
            tl.store(ROW_END + first_tile + t, tl.zeros_like(t) + end, mask=mask)
            tl.store(TILE_EXPERT + first_tile + t, tl.zeros_like(t) + expert, mask=mask)
        first_tile += tiles
    for t0 in range(first_tile, num_tiles, BLOCK_T):
        t = t0 + ts
        mask = t < num_tiles
        zero = tl.zeros_like(t)
        tl.store(ROW_START + t, zero, mask=mask)
        tl.store(ROW_END + t, zero, mask=mask)
        tl.store(TILE_EXPERT + t, zero, mask=mask)


def group_slots(experts: torch.Tensor, num_experts: int) -> dict[str, torch.Tensor]:
    """Slots `[T, k]` of chosen experts, grouped by expert: the `Routing` and `RoutingIndex` tensors, one launch."""
    top_k = experts.shape[1]
    flat = experts.reshape(-1)
    num_slots = flat.shape[0]
    device = flat.device
    out = dict(
        sorted_experts=torch.empty(num_slots, dtype=torch.long, device=device),
        sorted_slots=torch.empty(num_slots, dtype=torch.long, device=device),
        slot_rows=torch.empty(num_slots, dtype=torch.int32, device=device),
        token_rows=torch.empty(num_slots, dtype=torch.int32, device=device),
        expert_counts=torch.empty(num_experts, dtype=torch.long, device=device),
        expert_start=torch.empty(num_experts, dtype=torch.int32, device=device),
        expert_end=torch.empty(num_experts, dtype=torch.int32, device=device),
    )
    e_pad = triton.next_power_of_2(num_experts)
    _group_slots_kernel[(1,)](
        flat, out["sorted_experts"], out["sorted_slots"], out["slot_rows"], out["token_rows"],
        out["expert_counts"], out["expert_start"], out["expert_end"], num_slots, num_experts,
        TOP_K=top_k, E_PAD=e_pad, BLOCK=max(16, 4096 // e_pad), num_warps=4,
    )  # fmt: skip
    return out


def plan_tiles(expert_start: torch.Tensor, expert_end: torch.Tensor, num_rows: int, block_m: int):
    """`(row_start, row_end, expert)` int32 per tile, `ceil(num_rows / block_m) + E` tiles (a bound needing no sync)."""
    num_experts = expert_start.shape[0]
    num_tiles = triton.cdiv(num_rows, block_m) + num_experts
    row_start, row_end, expert = (
        torch.empty(num_tiles, dtype=torch.int32, device=expert_start.device) for _ in range(3)
    )
    _plan_tiles_kernel[(1,)](
        expert_start, expert_end, row_start, row_end, expert, num_tiles, num_experts,
        BLOCK_M=block_m, BLOCK_T=256, num_warps=4,
    )  # fmt: skip
    return row_start, row_end, expert
