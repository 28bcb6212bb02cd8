"""bench/bench_launch_overhead.py runs against the kernels as they are (their wrappers' signatures change with them):
every case is timed, in this tree and in a baseline tree's process."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_case_is_timed_here_and_in_a_baseline_tree():
    command = [sys.executable, str(REPO / "bench" / "bench_launch_overhead.py"), "--rounds", "1", "--calls", "5",
               "--baseline-tree", str(REPO)]  # fmt: skip
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    rows = [line.strip("|").split("|") for line in table[2:]]
    assert [name.strip() for name, *_ in rows] == [
        "MLP input matmul, forward", "MLP input matmul + SiLU GLU", "MLP input matmul, input gradient",
        "LoRA rank-r rows (A x)", "MLP output weight gradient", "LoRA prologue (A x as the forward calls it)",
        "Routing of one router (gates, grouping, tile plan)",
    ]  # fmt: skip
    for _, here, there, ratio in rows:
        assert float(here) > 0 and float(there) > 0 and ratio.strip().endswith("x")
