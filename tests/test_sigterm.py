"""Pre-emption: SIGTERM (what SLURM and Kubernetes send before SIGKILL) during step k saves checkpoint-k at the
end of that step, logs it and exits with status 143; `--resume` then ends with the weights and whole-run
train_loss of an uninterrupted run. With two processes, one of them signalled is enough: both save and stop at
the same step boundary.

The signal comes from tests/kill_at.py (`term`), sent by the process to itself as step k begins.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_crash_safety import assert_same_run, checkpoint_names
from test_multiprocess import free_port

from align.cli import main

ROOT = Path(__file__).resolve().parent.parent
# No checkpoint but the one SIGTERM asks for.
STEPS = ["--max_steps", "3", "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
         "--disable_tqdm", "true"]
SAVED = "stopped: SIGTERM: saved checkpoint-2 at the end of step 2; exiting with status 143, --resume continues from it"


def run(command: list[str]) -> subprocess.CompletedProcess:
    """As tests/test_crash_safety.py runs its kills: with this process's threads, so that float sums match."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_matches_the_uninterrupted_run(tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(uninterrupted), *STEPS]) == 0

    out = tmp_path / "terminated"
    argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), *STEPS]
    done = run([sys.executable, str(ROOT / "tests" / "kill_at.py"), "term", "2", "--", *argv])
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == SAVED
    assert checkpoint_names(out) == ["checkpoint-2"]
    assert not (out / "model.safetensors").exists()
    log = (out / "train.log").read_text()
    assert "SIGTERM: saving a checkpoint at the end of this step (within 120 s)" in log and SAVED[9:] in log

    assert main([*argv, "--resume"]) == 0
    assert_same_run(out, uninterrupted)


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(tmp_path):
    done = run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "recipes/accelerate_configs/cpu_2proc.yaml"), "--num_processes", "2",
                "--main_process_port", str(free_port()), str(ROOT / "tests" / "kill_at.py"), "term", "2", "--",
                "sft", "recipes/tiny/sft.yaml", "--use_cpu", "--per_device_train_batch_size", "2",
                "--output_dir", str(tmp_path), *STEPS])
    assert done.returncode != 0
    assert done.stderr.count(SAVED) == 2, done.stderr[-3000:]  # each process, the signalled one and the other
    assert checkpoint_names(tmp_path) == ["checkpoint-2"]


@pytest.mark.slow
def test_sigterm_with_no_grace_exits_at_once_without_a_checkpoint(tmp_path):
    done = run([sys.executable, str(ROOT / "tests" / "kill_at.py"), "term", "2", "--", "sft", "recipes/tiny/sft.yaml",
                "--output_dir", str(tmp_path), *STEPS, "--guard.sigterm_grace", "0"])
    assert done.returncode == 143, done.stderr[-3000:]
    assert ("SIGTERM with guard.sigterm_grace 0: exiting with status 143 without saving a checkpoint; --resume "
            "continues from the newest one") in done.stderr
    assert checkpoint_names(tmp_path) == []
