"""The device-side tile plan: every routed row lands in exactly one tile of its own expert, without host syncs."""

import pytest
import torch
from kernel_cases import ROUTINGS, make_routing

from jetmoe_kernels.schedule import routing_index


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


def test_tiles_too_big_for_shared_memory_fall_back_once():
    from triton.runtime.errors import OutOfResources

    from jetmoe_kernels.schedule import launch_first_fitting, tile_candidates

    big, small = dict(BLOCK_M=999, tag=1), dict(BLOCK_M=16, tag=2)
    tried = []

    def launch(config):
        tried.append(config["tag"])
        if config is big:
            raise OutOfResources(294912, 232448, "shared memory")

    for _ in range(2):
        launch_first_fitting("test_kernel", torch.float32, tile_candidates([big, small]), launch)
    assert tried == [1, 2, 2]  # the misfit is tried once, then skipped


def test_host_integer_helpers_match_tritons():
    """The launches' grid and tile sizes use plain-Python twins of `triton.cdiv` and `triton.next_power_of_2`."""
    import triton

    from jetmoe_kernels.schedule import cdiv, next_power_of_2

    for a in [1, 2, 3, 15, 16, 17, 63, 64, 65, 1000, 2**31 + 3]:
        assert next_power_of_2(a) == triton.next_power_of_2(a), a
    for a in [0, 1, 15, 16, 17, 1000, 2**31 + 3]:
        for b in [1, 2, 16, 64, 128, 256, 1024]:
            assert cdiv(a, b) == triton.cdiv(a, b), (a, b)
