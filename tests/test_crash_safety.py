"""Runs that survive: a stage killed with SIGKILL during training or inside a checkpoint save, then resumed, ends
with the weights and whole-run train_loss of an uninterrupted run; a damaged checkpoint is skipped, by name; the
checkpoint a run resumed from is not rotated away; one live run per output dir.

The kills come from tests/kill_at.py, which runs `python -m align` with a kill point patched in.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from align.cli import main

ROOT = Path(__file__).resolve().parent.parent
# 3 steps, a checkpoint after each; the tiny recipes keep save_total_limit 2.
STEPS = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
         "--eval_strategy", "no"]


def killed_run(point: str, step: int, argv: list[str]) -> None:
    """Run `python -m align ARGV` in a subprocess that kills itself with SIGKILL at `point` of `step`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at.py"), point, str(step), "--", *argv],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def assert_same_run(resumed: Path, uninterrupted: Path) -> None:
    weights, expected = load_file(resumed / "model.safetensors"), load_file(uninterrupted / "model.safetensors")
    assert weights.keys() == expected.keys()
    assert all(weights[name].equal(expected[name]) for name in expected)
    loss = json.loads((resumed / "metrics.json").read_text())["train"]["train_loss"]
    assert loss == pytest.approx(json.loads((uninterrupted / "metrics.json").read_text())["train"]["train_loss"],
                                 rel=1e-6)
    assert not list(resumed.glob("tmp-checkpoint-*"))


def checkpoint_names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.glob("checkpoint-*"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    """The tiny pipeline run straight through: {dir}/sft and {dir}/dpo."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(["pipeline", "recipes/tiny/pipeline.yaml", "--output_dir", str(out), *STEPS]) == 0
    return out


@pytest.mark.slow
def test_sft_killed_during_a_save_then_resumed_matches_the_uninterrupted_run(uninterrupted, tmp_path):
    argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), *STEPS]
    killed_run("save", 2, argv)
    assert (tmp_path / "tmp-checkpoint-2").is_dir()  # the save cut short keeps its staging name
    assert checkpoint_names(tmp_path) == ["checkpoint-1"]

    assert main([*argv, "--resume"]) == 0
    assert_same_run(tmp_path, uninterrupted / "sft")
    assert json.loads((tmp_path / "run.json").read_text())["resumed_from"].endswith("checkpoint-1")
    # save_total_limit 2, yet the checkpoint the run resumed from stays with the newest
    assert checkpoint_names(tmp_path) == ["checkpoint-1", "checkpoint-3"]


@pytest.mark.slow
@pytest.mark.parametrize("point, step", [("step", 1), ("save", 2)])
def test_dpo_killed_then_resumed_matches_the_uninterrupted_run(point, step, uninterrupted, tmp_path):
    argv = ["dpo", "recipes/tiny/dpo.yaml", "--model.name_or_path", str(uninterrupted / "sft"),
            "--output_dir", str(tmp_path), *STEPS]
    killed_run(point, step, argv)
    assert checkpoint_names(tmp_path) == ["checkpoint-1"]
    assert main([*argv, "--resume"]) == 0
    assert_same_run(tmp_path, uninterrupted / "dpo")


@pytest.mark.slow
def test_pipeline_killed_while_training_sft_then_resumed_runs_both_stages(uninterrupted, tmp_path):
    argv = ["pipeline", "recipes/tiny/pipeline.yaml", "--output_dir", str(tmp_path), *STEPS]
    killed_run("step", 2, argv)  # as step 3 of SFT begins
    assert checkpoint_names(tmp_path / "sft") == ["checkpoint-1", "checkpoint-2"]
    assert not (tmp_path / "dpo").exists()
    assert main([*argv, "--resume"]) == 0
    assert_same_run(tmp_path / "sft", uninterrupted / "sft")
    assert_same_run(tmp_path / "dpo", uninterrupted / "dpo")


@pytest.mark.slow
@pytest.mark.parametrize("damage, named", [
    (lambda checkpoint: (checkpoint / "model.safetensors").write_bytes(
        (checkpoint / "model.safetensors").read_bytes()[:-100]), "model.safetensors: not a complete safetensors"),
    (lambda checkpoint: (checkpoint / "trainer_state.json").unlink(), "trainer_state.json: missing"),
])
def test_resume_skips_a_damaged_checkpoint_by_name(damage, named, uninterrupted, tmp_path, caplog):
    """A checkpoint-N left damaged (copied short, written by an older version) is skipped for the one before."""
    out = tmp_path / "sft"
    shutil.copytree(uninterrupted / "sft", out)
    for record in ("run.json", "metrics.json", "model.safetensors"):
        (out / record).unlink()
    assert checkpoint_names(out) == ["checkpoint-2", "checkpoint-3"]
    damage(out / "checkpoint-3")

    assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), *STEPS, "--resume"]) == 0
    assert f"skipping checkpoint-3: {out / 'checkpoint-3'}" in caplog.text and named in caplog.text
    assert json.loads((out / "run.json").read_text())["resumed_from"].endswith("checkpoint-2")
    weights, expected = load_file(out / "model.safetensors"), load_file(uninterrupted / "sft" / "model.safetensors")
    assert all(weights[name].equal(expected[name]) for name in expected)


def test_a_second_run_on_a_live_output_dir_is_refused_naming_the_first(tmp_path, capsys):
    hold = (f"import time\nfrom align.runs.run_lock import output_dir_lock\nwith output_dir_lock({str(tmp_path)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), *STEPS]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: {tmp_path}: another run is writing to it (pid {holder.pid}: ")
    finally:
        holder.kill()  # as a kill -9 would: the kernel releases the lock with the process
        holder.wait()
    from align.runs.run_lock import output_dir_lock

    with output_dir_lock(tmp_path):
        pass
