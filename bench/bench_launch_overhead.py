"""The host's Python per expert-kernel call, on a CPU: what a step pays before each launch reaches the GPU.

Where the host paces a training step (docs/benchmarks.md: DPO at 8 pairs, the forwards of full DPO), every
microsecond of Python in front of a kernel launch is a microsecond the GPU waits. Each case below calls one of our
kernel wrappers at the JetMoE-8B shape (bf16, 4096 tokens, top-2 of 8 experts) with the GPU launch replaced by
building its quick-launch key (`kernels/launching.py`), so it times our Python around the launch, not Triton's
launcher or the GPU. Best of 5 rounds of 2,000 calls (`--rounds`, `--calls`).

    PYTHONPATH=. python bench/bench_launch_overhead.py                          # this tree
    PYTHONPATH=. python bench/bench_launch_overhead.py --baseline-tree /tmp/old  # and another checkout's kernels

`--gpu` (on a GPU machine) launches for real, at 64 tokens so that the GPU work is negligible and the host sets the
pace, and splits each call's host time: the whole call; without Triton's launcher (`compiled.run`: the key is built
and looked up); without the quick launch at all (our wrapper's Python only). It also times two PyTorch calls for
scale. The split tells our Python from Triton's, on the host that runs the training.
"""

import argparse
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
import time
from importlib import import_module
from pathlib import Path

ROUNDS, CALLS = 5, 2000
TOKENS, HIDDEN, FFN, EXPERTS, TOP_K, RANK = 4096, 2048, 5632, 8, 2, 64


class KeyOnly:
    """Stands in for a quick-launched kernel: `kernel[grid](...)` builds the launch's key and launches nothing."""

    def __init__(self, quick):
        self.quick = quick

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.quick.key(args, kwargs, 0)


def load_kernels(tree: Path):
    """`tree`'s `kernels/` as `jetmoe_kernels`, whatever is installed: the code timed is that tree's."""
    source = tree / "kernels"
    spec = importlib.util.spec_from_file_location("jetmoe_kernels", source / "__init__.py",
                                                  submodule_search_locations=[str(source)])  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules["jetmoe_kernels"] = module
    spec.loader.exec_module(module)
    return module


def compiled_mode_without_gpu(tree: Path) -> None:
    """Every kernel module as on a Hopper GPU (compiled mode, TMA), its quick-launched kernels replaced by `KeyOnly`."""
    os.environ.pop("TRITON_INTERPRET", None)  # before Triton loads: the kernels as compiled, not interpreted
    kernels = load_kernels(tree)
    from jetmoe_kernels.launching import QuickLaunch

    for info in pkgutil.iter_modules(kernels.__path__):
        module = import_module(f"jetmoe_kernels.{info.name}")
        for name, value in list(vars(module).items()):
            if name == "interpreting":
                setattr(module, name, lambda: False)
            elif name == "_has_tma":
                setattr(module, name, lambda device_index: True)
            elif isinstance(value, QuickLaunch):
                setattr(module, name, KeyOnly(value))


def cases() -> dict:
    import torch

    from jetmoe_kernels import grouped_dw, route, scatter_matmul
    from jetmoe_kernels.schedule import RoutingIndex, TilePlan

    rows = TOKENS * TOP_K
    int32 = dict(dtype=torch.int32)
    index = RoutingIndex(token_rows=torch.zeros(rows, **int32), slot_rows=torch.zeros(rows, **int32),
                         expert_start=torch.zeros(EXPERTS, **int32), expert_end=torch.zeros(EXPERTS, **int32),
                         _plans={})  # fmt: skip
    for block_m in (16, 32, 64, 128):  # the tile plans a real routing builds once and caches
        index._plans[block_m] = TilePlan(block_m, *(torch.zeros(rows // block_m + EXPERTS, **int32) for _ in range(3)))
    bf16 = dict(dtype=torch.bfloat16)
    x, hidden_rows = torch.zeros(TOKENS, HIDDEN, **bf16), torch.zeros(rows, 2 * FFN, **bf16)
    w_in, w_out = torch.zeros(EXPERTS, 2 * FFN, HIDDEN, **bf16), torch.zeros(EXPERTS, HIDDEN, FFN, **bf16)
    lora_A, dy_grouped = torch.zeros(EXPERTS, RANK, HIDDEN, **bf16), torch.zeros(rows, HIDDEN, **bf16)
    mm = scatter_matmul.scatter_mm
    logits = torch.zeros(TOKENS, EXPERTS, dtype=torch.float32)
    lora_B = torch.zeros(EXPERTS, 2 * FFN, RANK, **bf16)  # in the activations' dtype: the prologue's casts are no-ops

    def routing_and_tiles():  # one router's bookkeeping: gates, grouping, the tile plan its first matmul reads
        return route(logits, TOP_K, torch.bfloat16, backend="triton")._triton_index.tiles(128)

    return {
        "MLP input matmul, forward": lambda: mm(x, w_in, index, index.token_rows, None, rows),
        "MLP input matmul + SiLU GLU": lambda: mm(x, w_in, index, index.token_rows, None, rows, silu_glu=True),
        "MLP input matmul, input gradient": lambda: mm(hidden_rows, w_in, index, None, index.slot_rows, rows,
                                                       transpose_weight=True),
        "LoRA rank-r rows (A x)": lambda: mm(x, lora_A, index, index.token_rows, None, rows, scale=2.0),
        "MLP output weight gradient": lambda: grouped_dw.grouped_dw(hidden_rows[:, :FFN], dy_grouped, w_out.shape,
                                                                    torch.bfloat16, index, None, None),
        "LoRA prologue (A x as the forward calls it)": lambda: scatter_matmul.lora_prologue(
            x, lora_A, lora_B, 2.0, 0.0, index, index.token_rows),
        "Routing of one router (gates, grouping, tile plan)": routing_and_tiles,
    }  # fmt: skip


def measure(tree: Path, rounds: int = ROUNDS, calls: int = CALLS) -> dict:
    """Microseconds a call of each case; the process's kernel modules stay patched (run it in a process of its own)."""
    compiled_mode_without_gpu(tree)
    results = {}
    for name, call in cases().items():
        for _ in range(min(200, calls)):
            call()
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            for _ in range(calls):
                call()
            best = min(best, (time.perf_counter() - started) / calls)
        results[name] = best * 1e6
    return results


def _host_us(call, rounds: int, calls: int) -> float:
    """Best-of-`rounds` host microseconds a call, the GPU drained at the end of each round."""
    import torch

    for _ in range(min(200, calls)):
        call()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def measure_on_gpu(rounds: int, calls: int) -> str:
    """The `--gpu` table: each case's host time, whole and without Triton's launcher or the quick launch."""
    global TOKENS
    import torch

    import jetmoe_model  # noqa: F401  (makes `jetmoe_kernels` importable in a source checkout)
    from jetmoe_kernels.launching import QuickLaunch

    TOKENS = 64  # tile plans of a few rows: the GPU finishes each kernel in microseconds
    torch.set_default_device("cuda")
    x = torch.zeros(TOKENS, HIDDEN, dtype=torch.bfloat16)
    lines = ["| call | host us |", "|---|---|"]
    for name, call in {"torch.empty": lambda: torch.empty(TOKENS, HIDDEN, dtype=torch.bfloat16),
                       "x.add_(1)": lambda: x.add_(1)}.items():  # fmt: skip
        lines.append(f"| {name} | {_host_us(call, rounds, calls):.1f} |")
    timed = cases()
    whole = {name: _host_us(call, rounds, calls) for name, call in timed.items()}
    launch = QuickLaunch.launch
    QuickLaunch.launch = lambda self, grid, args, kwargs: self.compiled.get(self.key(args, kwargs, 0)[0])
    keyed = {name: _host_us(call, rounds, calls) for name, call in timed.items()}
    QuickLaunch.launch = lambda self, grid, args, kwargs: None
    wrapper = {name: _host_us(call, rounds, calls) for name, call in timed.items()}
    QuickLaunch.launch = launch
    lines += ["", "| call | whole call, us | without Triton's launcher | our wrapper only |", "|---|---|---|---|"]
    lines += [f"| {name} | {whole[name]:.1f} | {keyed[name]:.1f} | {wrapper[name]:.1f} |" for name in timed]
    return "\n".join(lines)


def baseline(tree: Path, rounds: int, calls: int) -> dict:
    """The same cases on another checkout's kernels, in a process of their own."""
    command = [sys.executable, __file__, "--tree", str(tree), "--rounds", str(rounds), "--calls", str(calls), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout whose kernels to time (default: this one)")
    parser.add_argument("--baseline-tree", type=Path, help="another checkout whose kernels to time the same way")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--calls", type=int, default=CALLS, help="calls a round")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (the baseline's process)")
    parser.add_argument("--gpu", action="store_true", help="real launches on this machine's GPU, host time split")
    args = parser.parse_args()
    if args.gpu:
        print(measure_on_gpu(args.rounds, args.calls))
        return
    results = measure(args.tree, args.rounds, args.calls)
    if args.json:
        print(json.dumps(results))
        return
    before = baseline(args.baseline_tree, args.rounds, args.calls) if args.baseline_tree else None
    header = "| call | this tree, us |" + (" baseline, us | baseline / this |" if before else "")
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for name, micros in results.items():
        row = f"| {name} | {micros:.1f} |"
        if before:
            row += f" {before[name]:.1f} | {before[name] / micros:.2f}x |"
        print(row)


if __name__ == "__main__":
    main()
