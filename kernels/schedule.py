"""How the grouped expert kernels split routed rows into tiles, computed on the device without host syncs.

A tile of `block_m` grouped rows must belong to one expert (it multiplies by one weight), so each expert's group
is cut into `ceil(count / block_m)` tiles. Their number depends on the routing, which lives on the GPU; rather than
read it back, we launch the upper bound `ceil(T*k / block_m) + E` and give the spare programs an empty row range.
"""

import functools
import os
from dataclasses import dataclass

import torch

from .routing import Routing


@functools.cache
def interpreting() -> bool:
    """Triton's CPU interpreter (how CI runs the kernels): tiny tiles keep it fast.

    Read once, as Triton reads it once per kernel (when the kernel is decorated): a step asks ~1,900 times, and each
    read of the environment cost 1-2.5 us. Whatever caches a choice made from it is keyed by it too, so that clearing
    this cache (`tests/kernel_cases.py`, where a test changes `TRITON_INTERPRET`) is enough.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def compute_capability(device_index: int) -> int:
    """The GPU's major compute capability (9: Hopper), cached: the kernels' launch paths ask it every call."""
    return torch.cuda.get_device_capability(device_index)[0]


def dot_options(dtype: torch.dtype) -> dict:
    """Compile-time options of the matmul kernels' `tl.dot`.

    float32 stays exact (ieee) so it matches the reference tightly; 16-bit inputs use the tensor cores. Triton's
    interpreter (3.9) computes 16-bit-float dots wrongly (numpy has no bfloat16), so there the operands are
    upcast first: products of 16-bit floats are exact in float32, so the result is what the GPU computes.
    """
    return _dot_options(dtype, interpreting())


@functools.cache
def _dot_options(dtype: torch.dtype, interpreter: bool) -> dict:
    return dict(PRECISION="ieee" if dtype == torch.float32 else "tf32", DOT_FP32=interpreter)  # never mutated


def cdiv(a: int, b: int) -> int:
    """`ceil(a / b)` on the host. Triton's `triton.cdiv` is a constexpr function: called from Python it goes through
    Triton's wrapper, ~5 us a call, and a layer's launches make dozens of such calls."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= `n` (n >= 1), on the host: `triton.next_power_of_2` without its wrapper."""
    return 1 << (n - 1).bit_length()


_DOES_NOT_FIT: set = set()


def tile_candidates(configs) -> tuple:
    """`(key, config)` for each tile config, in order: what `launch_first_fitting` tries. Made once per kind of call
    (the callers cache them), so that a launch does not sort a config's items to look it up."""
    return tuple((tuple(sorted(config.items())), config) for config in configs)


def launch_first_fitting(name: str, dtype: torch.dtype, candidates: tuple, launch) -> None:
    """`launch(config)` with the first config whose tiles fit in the GPU's shared memory.

    The tuned H100 tiles need about 192 KB at 16 bits: float32, or a GPU with less shared memory, falls back to
    the smaller ones. A config that did not fit is remembered per kernel and dtype, so the retry happens once.
    `candidates` come from `tile_candidates`.
    """
    for key, config in candidates:
        if _DOES_NOT_FIT and (name, dtype, key) in _DOES_NOT_FIT:
            continue
        try:
            return launch(config)
        except _out_of_resources():
            _DOES_NOT_FIT.add((name, dtype, key))
    raise RuntimeError(f"{name}: no tile configuration fits in this GPU's shared memory")


@functools.cache
def _out_of_resources() -> type:
    from triton.runtime.errors import OutOfResources  # Triton loads only where its kernels run

    return OutOfResources


@dataclass
class TilePlan:
    """Row range and expert of every row tile (`[num_tiles]` int32 each); spare tiles have `row_start == row_end`."""

    block_m: int
    row_start: torch.Tensor
    row_end: torch.Tensor
    expert: torch.Tensor

    @property
    def num_tiles(self) -> int:
        return self.row_start.shape[0]


@dataclass
class RoutingIndex:
    """Routing in the int32 forms the kernels read, built once per routing and shared by every kernel call."""

    token_rows: torch.Tensor  # [T*k] token row feeding each grouped row (sorted_slots // k)
    slot_rows: torch.Tensor  # [T*k] slot of each grouped row (sorted_slots)
    expert_start: torch.Tensor  # [E] first grouped row of each expert
    expert_end: torch.Tensor  # [E] one past its last grouped row
    _plans: dict

    def tiles(self, block_m: int) -> TilePlan:
        if block_m not in self._plans:
            self._plans[block_m] = _plan_tiles(self, block_m)
        return self._plans[block_m]

    @property
    def num_experts(self) -> int:
        return self.expert_end.shape[0]


def routing_index(routing: Routing) -> RoutingIndex:
    """The `RoutingIndex` of `routing`, cached on the routing object (the MoA uses one routing twice).

    Routings made with `route(..., backend="triton")` come with it; others get it from a few PyTorch ops.
    """
    cached = getattr(routing, "_triton_index", None)
    if cached is None:
        slots = routing.sorted_slots
        end = routing.expert_offsets
        cached = RoutingIndex(
            token_rows=(slots // routing.top_k).to(torch.int32),
            slot_rows=slots.to(torch.int32),
            expert_start=(end - routing.expert_counts).to(torch.int32),
            expert_end=end.to(torch.int32),
            _plans={},
        )
        routing._triton_index = cached
    return cached


def _plan_tiles(index: RoutingIndex, block_m: int) -> TilePlan:
    from .grouping import plan_tiles

    row_start, row_end, expert = plan_tiles(index.expert_start, index.expert_end, index.slot_rows.shape[0], block_m)
    return TilePlan(block_m, row_start, row_end, expert)
