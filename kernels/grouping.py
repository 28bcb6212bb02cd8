"""Routing bookkeeping in two small kernels: slots grouped by expert, and the tile plan of the grouped rows.

In PyTorch the same bookkeeping is a stable sort, a histogram, a cumsum, int32 casts and about fifteen ops per tile
plan, for each of a JetMoE layer's two routers: each op is a few GPU microseconds but ~10 host microseconds to
launch, and on an H100 the host then fell behind the GPU (JetMoE-8B forward: 110 ms of launches for 90 ms of GPU
work). Here each is one launch: the routing of a step is tens of thousands of slots, and a few passes over them
are cheaper than the launches they replace. The grouping runs one program per expert, each pass a 1-D count or scan:
20 us per router at the JetMoE-8B shape on an H100, against 85-120 us for one program doing every expert at once.
"""

import torch
import triton
import triton.language as tl

from .launching import quick_launch
from .schedule import cdiv


@quick_launch
@triton.jit(do_not_specialize=["num_slots"])  # a batch-dependent size: no recompiles as it changes
def _group_slots_kernel(
    EXPERTS, SORTED_EXPERTS, SORTED_SLOTS, SLOT_ROWS, TOKEN_ROWS, COUNTS, STARTS, ENDS,
    num_slots, TOP_K: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """A counting sort, one program per expert: its group starts after the slots of all lower experts, and its
    slots keep their order (a running count of its own slots gives each one its place)."""
    expert = tl.program_id(0)
    lower = tl.zeros([BLOCK], dtype=tl.int32)
    mine = tl.zeros([BLOCK], dtype=tl.int32)
    for first in range(0, num_slots, BLOCK):
        slots = first + tl.arange(0, BLOCK)
        experts = tl.load(EXPERTS + slots, mask=slots < num_slots, other=-1)  # padding matches no expert
        lower += ((experts >= 0) & (experts < expert)).to(tl.int32)
        mine += (experts == expert).to(tl.int32)
    start = tl.sum(lower, axis=0)
    count = tl.sum(mine, axis=0)
    tl.store(COUNTS + expert, count.to(tl.int64))
    tl.store(STARTS + expert, start)
    tl.store(ENDS + expert, start + count)

    place = start  # where this expert's next slot goes
    for first in range(0, num_slots, BLOCK):
        slots = first + tl.arange(0, BLOCK)
        hit = tl.load(EXPERTS + slots, mask=slots < num_slots, other=-1) == expert
        hits = hit.to(tl.int32)
        dest = place + tl.cumsum(hits, axis=0) - hits
        tl.store(SORTED_EXPERTS + dest, tl.zeros_like(dest).to(tl.int64) + expert, mask=hit)
        tl.store(SORTED_SLOTS + dest, slots.to(tl.int64), mask=hit)
        tl.store(SLOT_ROWS + dest, slots, mask=hit)
        tl.store(TOKEN_ROWS + dest, slots // TOP_K, mask=hit)
        place += tl.sum(hits, axis=0)


@quick_launch
@triton.jit(do_not_specialize=["num_tiles"])  # a batch-dependent size: no recompiles as it changes
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
    _group_slots_kernel[(num_experts,)](
        flat, out["sorted_experts"], out["sorted_slots"], out["slot_rows"], out["token_rows"],
        out["expert_counts"], out["expert_start"], out["expert_end"], num_slots,
        TOP_K=top_k, BLOCK=2048, num_warps=8,
    )  # fmt: skip
    return out


def plan_tiles(expert_start: torch.Tensor, expert_end: torch.Tensor, num_rows: int, block_m: int):
    """`(row_start, row_end, expert)` int32 per tile, `ceil(num_rows / block_m) + E` tiles (a bound needing no sync)."""
    num_experts = expert_start.shape[0]
    num_tiles = cdiv(num_rows, block_m) + num_experts
    row_start, row_end, expert = (
        torch.empty(num_tiles, dtype=torch.int32, device=expert_start.device) for _ in range(3)
    )
    _plan_tiles_kernel[(1,)](
        expert_start, expert_end, row_start, row_end, expert, num_tiles, num_experts,
        BLOCK_M=block_m, BLOCK_T=256, num_warps=4,
    )  # fmt: skip
    return row_start, row_end, expert
