"""A diverging run is stopped at the step it diverges, naming the value, and never published: no model in its
output dir, every checkpoint before it finite, exit status 3, and a pipeline does not start DPO from it. With
`guard.nonfinite: skip` the step's update is skipped (weights unchanged), counted, left out of the logged and
whole-run losses, until `guard.max_skipped_steps` is passed. Every process of a launch decides the same.

The NaN comes from the issue's own command (learning rate 1e20) or from tests/nan_at.py, which makes the loss
NaN at chosen steps.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from nan_at import nan_loss_at
from safetensors.torch import load_file

from align.cli import main
from align.runs.checkpoints import read_loss_tally
from align.training.router_loss import RouterLossMixin

ROOT = Path(__file__).resolve().parent.parent
SAVE_EACH_STEP = ["--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "10", "--logging_steps", "1",
                  "--eval_strategy", "no", "--disable_tqdm", "true"]


def strict_json(path: Path):
    """The file as JSON, refusing the bare NaN / Infinity Python's json writes by default (not JSON)."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def weights(directory: Path) -> dict:
    return load_file(directory / "model.safetensors")


def all_finite(tensors: dict) -> bool:
    return all(tensor.isfinite().all() for tensor in tensors.values())


def checkpoint_names(directory: Path) -> list[str]:
    return sorted((path.name for path in directory.glob("checkpoint-*")), key=lambda name: int(name.split("-")[1]))


def train_entries(directory: Path) -> dict[int, dict]:
    """step -> the training log entry of that step (logging_steps 1), from the newest checkpoint's state."""
    history = strict_json(directory / checkpoint_names(directory)[-1] / "trainer_state.json")["log_history"]
    return {entry["step"]: entry for entry in history if "loss" in entry}


@pytest.mark.slow
def test_the_issues_diverging_run_stops_at_the_step_it_diverges_and_publishes_nothing(tmp_path, capsys):
    argv = ["sft", "recipes/tiny/sft.yaml", "--learning_rate", "1e20", "--max_steps", "10", "--output_dir",
            str(tmp_path), *SAVE_EACH_STEP]
    assert main(argv) == 3
    error = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.fullmatch(r"error: step (\d+): (loss|grad_norm) is (NaN|Infinity|-Infinity) \(guard\.nonfinite: "
                         r"stop\): training stopped, no model saved as the stage's output; the newest checkpoint, "
                         r"checkpoint-(\d+), is from before it", error)
    assert match, error
    step = int(match.group(1))
    assert 1 < step < 10 and int(match.group(4)) == step - 1
    # every step before it was saved, finite; nothing of the stage's output was written
    assert checkpoint_names(tmp_path) == [f"checkpoint-{n}" for n in range(1, step)]
    assert all(all_finite(weights(tmp_path / f"checkpoint-{n}")) for n in range(1, step))
    for output in ("model.safetensors", "metrics.json", "run.json", "trainer_state.json"):
        assert not (tmp_path / output).exists(), output
    # the logged losses before it are the real ones
    logged = train_entries(tmp_path)
    assert sorted(logged) == list(range(1, step)) and all(math.isfinite(e["loss"]) for e in logged.values())
    assert error.removeprefix("error: ") in (tmp_path / "train.log").read_text()


def test_the_stop_line_is_the_last_thing_the_command_prints(tmp_path):
    """The trainer's progress bar is closed before the error line: left open, Python's exit drew it again below."""
    command = [sys.executable, "-m", "align", "sft", "recipes/tiny/sft.yaml", "--learning_rate", "1e20",
               "--max_steps", "10", "--output_dir", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr[-2000:]
    assert re.match(r"error: step \d+: ", done.stderr.rstrip("\n").rsplit("\n", 1)[-1]), done.stderr[-500:]


@pytest.mark.slow
def test_a_nan_loss_stops_the_pipeline_before_dpo(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(RouterLossMixin, "compute_loss", nan_loss_at({2}))
    argv = ["pipeline", "recipes/tiny/pipeline.yaml", "--max_steps", "3", "--output_dir", str(tmp_path),
            *SAVE_EACH_STEP]
    assert main(argv) == 3
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: step 2: loss is NaN (guard.nonfinite: stop): training stopped")
    assert checkpoint_names(tmp_path / "sft") == ["checkpoint-1"]
    assert not (tmp_path / "sft" / "model.safetensors").exists()
    assert not (tmp_path / "dpo").exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A random-init model with the tiny tokenizer, for DPO to start from."""
    out = tmp_path_factory.mktemp("base")
    assert main(["init-tiny", str(out)]) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage, recipe", [("sft", "sft_lora"), ("dpo", "dpo"), ("dpo", "dpo_lora")])
def test_a_nan_loss_stops_lora_and_dpo_stages_too(stage, recipe, base, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(RouterLossMixin, "compute_loss", nan_loss_at({2}))
    start = ["--model.name_or_path", str(base)] if stage == "dpo" else []
    assert main([stage, f"recipes/tiny/{recipe}.yaml", *start, "--max_steps", "3", "--output_dir", str(tmp_path),
                 *SAVE_EACH_STEP]) == 3
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: step 2: loss is NaN (guard.nonfinite: stop): training stopped")
    assert checkpoint_names(tmp_path) == ["checkpoint-1"]
    assert not list(tmp_path.glob("*.safetensors"))  # neither a model nor an adapter


@pytest.mark.slow
def test_skip_mode_skips_the_update_counts_it_and_stops_past_the_limit(tmp_path, monkeypatch, capsys):
    """NaN at steps 2 and 4 with at most 1 skip: step 2 skipped, step 3 trains, step 4 stops the run. Resumed with
    a limit of 2, step 4 is skipped too and the run finishes."""
    monkeypatch.setattr(RouterLossMixin, "compute_loss", nan_loss_at({2, 4}))
    argv = ["sft", "recipes/tiny/sft.yaml", "--max_steps", "5", "--output_dir", str(tmp_path), *SAVE_EACH_STEP,
            "--guard.nonfinite", "skip"]
    assert main([*argv, "--guard.max_skipped_steps", "1"]) == 3
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: step 4: loss is NaN (guard.max_skipped_steps 1 already skipped): training stopped, no model saved "
        "as the stage's output; the newest checkpoint, checkpoint-3, is from before it")
    assert not (tmp_path / "model.safetensors").exists()

    step_1, step_2, step_3 = (weights(tmp_path / f"checkpoint-{n}") for n in (1, 2, 3))
    assert all(step_2[name].equal(step_1[name]) for name in step_1)  # the skipped step changed no weight
    assert not all(step_3[name].equal(step_2[name]) for name in step_2)  # the next one trained
    logged = train_entries(tmp_path)
    assert logged[2]["loss"] == "NaN" and logged[2]["skipped_steps"] == 1  # a window of skipped steps only
    assert logged[3]["skipped_steps"] == 1 and math.isfinite(logged[3]["loss"])
    tally = read_loss_tally(tmp_path / "checkpoint-3")
    assert tally.skipped_steps == 1
    assert tally.loss_sum == pytest.approx(logged[1]["loss"] + logged[3]["loss"], rel=1e-5)

    assert main([*argv, "--guard.max_skipped_steps", "2", "--resume"]) == 0
    logged = train_entries(tmp_path)
    assert logged[4]["loss"] == "NaN" and logged[5]["skipped_steps"] == 2
    metrics = strict_json(tmp_path / "metrics.json")
    trained = [logged[step]["loss"] for step in (1, 3, 5)]
    assert metrics["train"]["train_loss"] == pytest.approx(sum(trained) / 3, rel=1e-5)
    final = strict_json(tmp_path / "trainer_state.json")["log_history"]
    assert [e["train_loss"] for e in final if "train_loss" in e][-1] == pytest.approx(sum(trained) / 3, rel=1e-5)
    assert all_finite(weights(tmp_path))


@pytest.mark.slow
def test_two_processes_stop_together_when_one_alone_sees_nan(tmp_path):
    """Process 1's loss alone is NaN at step 2: both processes stop there (none waits for the other in a
    collective), each naming the step."""
    from test_multiprocess import free_port

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes/accelerate_configs/cpu_2proc.yaml"), "--num_processes", "2",
               "--main_process_port", str(free_port()), str(ROOT / "tests/nan_at.py"), "2", "--rank", "1", "--",
               "sft", "recipes/tiny/sft.yaml", "--use_cpu", "--max_steps", "3", "--per_device_train_batch_size", "2",
               "--output_dir", str(tmp_path), *SAVE_EACH_STEP]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    stopped = [line for line in done.stderr.splitlines() if line.startswith("error: step 2: loss is NaN")]
    assert len(stopped) == 2, done.stderr[-3000:]
    assert checkpoint_names(tmp_path) == ["checkpoint-1"]
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
def test_weights_overflowed_by_a_finite_update_are_never_saved(tmp_path, capsys):
    """Adam's first update is about the learning rate itself: 1e39 overflows float32 weights although the loss
    and gradients of that step are finite. The check before each save stops the run instead of saving them."""
    argv = ["sft", "recipes/tiny/sft.yaml", "--learning_rate", "1e39", "--warmup_steps", "0", "--max_steps", "3",
            "--output_dir", str(tmp_path), *SAVE_EACH_STEP]
    assert main(argv) == 3
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: step 1: weight model\.\S+ holds NaN or infinite values \(before saving "
                        r"checkpoint-1\): training stopped, no model saved as the stage's output; no checkpoint was "
                        r"saved", error), error
    assert not list(tmp_path.glob("*checkpoint-*")) and not (tmp_path / "model.safetensors").exists()
