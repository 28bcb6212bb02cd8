"""`accelerate launch` with 2 CPU processes (gloo) trains exactly like 1 process over the same global batch.

The tiny pipeline (SFT, then DPO from its output) runs twice: 2 processes x 2 rows per device, and 1 process x 2 rows
x 2 gradient-accumulation steps. Both see the same 4 rows per optimizer step in the same order (sequential
sampler), micro-batches of the same shape (same padding), and per-micro-batch router losses: data-parallel
averaging must then give the same losses and gradient norms, step by step, for both stages.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_2PROC = ROOT / "recipes/accelerate_configs/cpu_2proc.yaml"
STEPS = 3
# On CPU, training arguments must say use_cpu: without it transformers sets up no process group under torchrun and
# each process would train alone on the same rows.
COMMON = ["pipeline", "recipes/tiny/pipeline.yaml", "--max_steps", str(STEPS), "--logging_steps", "1",
          "--train_sampling_strategy", "sequential", "--per_device_train_batch_size", "2", "--use_cpu"]


def free_port() -> int:
    """A rendezvous port of our own, so concurrent launches on one machine do not collide on 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1"}
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n" + log.read_text()[-4000:]


def step_logs(stage_dir: Path) -> list[dict]:
    """The per-step training log (loss, grad_norm, router losses) the trainer kept in its last checkpoint."""
    checkpoint = max(stage_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_2PROC),
         "--main_process_port", str(free_port()), "-m", "align", *COMMON,
         "--gradient_accumulation_steps", "1", "--output_dir", str(two)], tmp_path / "two.log")
    run([sys.executable, "-m", "align", *COMMON, "--gradient_accumulation_steps", "2", "--output_dir", str(one)],
        tmp_path / "one.log")

    for stage in ("sft", "dpo"):
        logs_two, logs_one = step_logs(two / stage), step_logs(one / stage)
        assert len(logs_two) == len(logs_one) == STEPS, stage
        for step, (a, b) in enumerate(zip(logs_two, logs_one), start=1):
            assert a["epoch"] == pytest.approx(b["epoch"]), f"{stage} step {step}: a different global batch"
            for key in ("loss", "grad_norm", "aux_loss", "router_z_loss"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), f"{stage} step {step}: {key}"
        # rank 0 alone writes the stage's results: one checkpoint, as from a single process
        assert json.loads((two / stage / "metrics.json").read_text())["train"]["train_loss"] == pytest.approx(
            json.loads((one / stage / "metrics.json").read_text())["train"]["train_loss"], rel=1e-4)
