"""`accelerate launch` with 2 CPU processes (gloo) trains exactly like 1 process over the same global batch.

The tiny recipes (SFT, then DPO from its output) run with 1 process x 2 rows x 2 gradient-accumulation steps, and
with 2 processes x 2 rows: under DDP (the `pipeline` command, both stages in one launch) and, where DeepSpeed is
installed, under ZeRO-2 and ZeRO-3 (one launch per stage: accelerate takes one DeepSpeed config per process).
Every run sees the same 4 rows per optimizer step in the same order (sequential sampler), micro-batches of the same
shape and per-micro-batch router losses, so data-parallel averaging must give the same losses, router losses and
gradient norms, step by step, in both stages. Under DeepSpeed DPO starts from the consolidated checkpoint SFT
saved.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes/accelerate_configs"
STEPS = 3
# On CPU the training arguments must say use_cpu: without it transformers sets up no process group under torchrun,
# and each process would train alone on the same rows.
TRAINING = ["--max_steps", str(STEPS), "--logging_steps", "1", "--train_sampling_strategy", "sequential",
            "--per_device_train_batch_size", "2", "--use_cpu"]


def free_port() -> int:
    """A rendezvous port of our own, so concurrent launches on one machine do not collide on 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], log: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    with log.open("w") as out:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=600)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n" + log.read_text()[-4000:]


def launch(config: str, *arguments: str) -> list[str]:
    """`accelerate launch` of `python -m align ...` on 2 processes."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / config),
            "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "align", *arguments]


def step_logs(stage_dir: Path) -> list[dict]:
    """The per-step training log (loss, grad_norm, router losses) the trainer kept in its last checkpoint."""
    checkpoint = max(stage_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


def assert_same_training(runs: Path, reference: Path) -> None:
    for stage in ("sft", "dpo"):
        logs, expected = step_logs(runs / stage), step_logs(reference / stage)
        assert len(logs) == len(expected) == STEPS, stage
        for step, (got, want) in enumerate(zip(logs, expected), start=1):
            assert got["epoch"] == pytest.approx(want["epoch"]), f"{stage} step {step}: a different global batch"
            for key in ("loss", "grad_norm", "aux_loss", "router_z_loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), f"{stage} step {step}: {key}"
        # rank 0 alone writes the stage's results, as a single process does
        metrics = json.loads((runs / stage / "metrics.json").read_text())["train"]
        assert metrics["train_loss"] == pytest.approx(
            json.loads((reference / stage / "metrics.json").read_text())["train"]["train_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_process")
    run([sys.executable, "-m", "align", "pipeline", "recipes/tiny/pipeline.yaml", *TRAINING,
         "--gradient_accumulation_steps", "2", "--output_dir", str(out)], out / "log")
    return out


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_accumulation(one_process, tmp_path):
    run(launch("cpu_2proc.yaml", "pipeline", "recipes/tiny/pipeline.yaml", *TRAINING,
               "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path)), tmp_path / "log")
    assert_same_training(tmp_path, one_process)


@pytest.mark.slow
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_two_processes_match_one_process_with_accumulation(config, one_process, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is optional (`make deepspeed`)")
    for stage, start in (("sft", []), ("dpo", ["--model.name_or_path", str(tmp_path / "sft")])):
        run(launch(config, stage, f"recipes/tiny/{stage}.yaml", *start, *TRAINING,
                   "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path / stage)),
            tmp_path / f"{stage}.log")
    assert_same_training(tmp_path, one_process)
