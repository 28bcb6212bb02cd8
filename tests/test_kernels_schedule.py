"""The device-side tile plan: every routed row lands in exactly one tile of its own expert, without host syncs."""

import pytest
import torch
from kernel_cases import ROUTINGS, make_routing

from kernels.schedule import routing_index


@pytest.mark.parametrize("routing_kind", ROUTINGS)
@pytest.mark.parametrize("block_m", [1, 4, 16, 64])
def test_tiles_cover_each_row_once(routing_kind, block_m):
    routing, _ = make_routing(routing_kind, 37, 5, 2, torch.float32)
    plan = routing_index(routing).tiles(block_m)
    assert plan.num_tiles == -(-37 * 2 // block_m) + 5
    covered = torch.zeros(37 * 2, dtype=torch.long)
    for start, end, expert in zip(plan.row_start.tolist(), plan.row_end.tolist(), plan.expert.tolist()):
        rows = torch.arange(start, min(start + block_m, end))
        covered[rows] += 1
        assert (routing.sorted_experts.cpu()[rows] == expert).all()
    assert (covered == 1).all()


def test_index_is_cached_per_routing():
    routing, _ = make_routing("random", 9, 3, 2, torch.float32)
    assert routing_index(routing) is routing_index(routing)
    assert routing_index(routing).tiles(16) is routing_index(routing).tiles(16)
