"""With `guard.nonfinite: stop` a step's guard row is read on the host one step later, or before anything is
logged, saved or evaluated and before training ends, so the host does not wait for the backward at every step.
These tests hold it to that: nothing is logged or saved from a step that stops the run, the error names the step
the row belongs to, a NaN at the last step still leaves no model, a SIGTERM's checkpoint comes at most one step
late, and `skip` (and DeepSpeed) still decide at once, before the optimizer steps.

The NaN comes from tests/nan_at.py, the SIGTERM from tests/kill_at.py.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from nan_at import nan_loss_at
from test_crash_safety import checkpoint_names
from transformers import Trainer, TrainerControl, TrainerState

from align.cli import main
from align.config.guard_args import GuardArgs
from align.runs.preemption import Preempted, SigtermWatch
from align.training.nonfinite import NonFiniteError
from align.training.router_loss import RouterLossMixin
from align.training.step_guard import StepGuardMixin

ROOT = Path(__file__).resolve().parent.parent
QUIET = ["--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]


# ---- the guard alone, on a stand-in for the trainer ----

class TrainerStandIn:
    """The parts of transformers' `Trainer` the guard calls, recording which of them ran."""

    is_deepspeed_enabled = False

    def __init__(self, output_dir: Path):
        self.ran: list[str] = []
        self.model = torch.nn.Linear(2, 1)
        self.args = SimpleNamespace(output_dir=str(output_dir))
        self.accelerator = SimpleNamespace(gather=lambda tensor: tensor, num_processes=1)
        self.state, self.control = TrainerState(), TrainerControl()
        self._tr_loss = torch.zeros(())

    def _get_grad_norm(self, model, grad_norm=None):
        return grad_norm

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        self.ran.append("log_save_evaluate")

    def _save_checkpoint(self, model, trial):
        self.ran.append("save")

    def _finalize_training(self, *args, **kwargs):
        self.ran.append("finalize")


class Guarded(StepGuardMixin, TrainerStandIn):
    pass


@pytest.fixture
def trainer(tmp_path) -> Guarded:
    trainer = Guarded(tmp_path)
    trainer._sigterm = SigtermWatch(120)  # not entered: `requested` is set by hand
    return trainer


def optimizer_step(trainer: Guarded, loss: float) -> None:
    """What the loop does for one optimizer step, up to `_maybe_log_save_evaluate` (not called)."""
    trainer._step_loss = torch.tensor(loss)
    trainer._get_grad_norm(trainer.model, grad_norm=torch.tensor(1.0))
    trainer.state.global_step += 1


@pytest.fixture
def host_reads(monkeypatch) -> list[str]:
    """Every read of a tensor's value on the host."""
    reads = []
    for name in ("tolist", "item", "__bool__", "__float__"):
        def spy(tensor, *args, _name=name, _read=getattr(torch.Tensor, name), **kwargs):
            reads.append(_name)
            return _read(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    return reads


def test_a_step_is_checked_without_reading_its_row_and_decided_at_the_next_check(trainer, host_reads):
    optimizer_step(trainer, 1.0)
    assert host_reads == [] and trainer._pending is not None  # gathered, not read
    optimizer_step(trainer, float("nan"))  # step 2: its NaN is not seen yet
    assert host_reads == ["tolist"] and trainer._pending.step == 2  # step 1's row only
    trainer._step_loss = torch.tensor(1.0)
    with pytest.raises(NonFiniteError, match=r"^step 2: loss is NaN \(guard\.nonfinite: stop\): training stopped"):
        trainer._get_grad_norm(trainer.model, grad_norm=torch.tensor(1.0))  # step 3's check names step 2
    assert trainer._pending is None


def test_a_step_where_nothing_is_logged_saved_or_evaluated_leaves_its_row_unread(trainer, host_reads):
    optimizer_step(trainer, float("nan"))
    trainer._maybe_log_save_evaluate()
    assert trainer.ran == ["log_save_evaluate"] and trainer._pending is not None and host_reads == []


@pytest.mark.parametrize("flag", ["should_log", "should_save", "should_evaluate", "should_training_stop"])
def test_a_nan_row_stops_the_run_before_anything_is_logged_saved_or_evaluated(trainer, flag):
    optimizer_step(trainer, float("nan"))
    setattr(trainer.control, flag, True)
    with pytest.raises(NonFiniteError, match=r"^step 1: loss is NaN"):
        trainer._maybe_log_save_evaluate()
    assert trainer.ran == []


@pytest.mark.parametrize("call", [lambda trainer: trainer._save_checkpoint(trainer.model, None),
                                  lambda trainer: trainer._finalize_training()], ids=["save", "end of training"])
def test_a_nan_row_stops_the_run_before_a_checkpoint_or_the_end_of_training(trainer, call):
    optimizer_step(trainer, 1.0)
    optimizer_step(trainer, float("nan"))
    with pytest.raises(NonFiniteError, match=r"^step 2: loss is NaN"):
        call(trainer)
    assert trainer.ran == []


def test_a_sigterm_row_saves_at_the_end_of_the_next_step(trainer):
    trainer._sigterm.requested = True
    optimizer_step(trainer, 1.0)
    trainer._maybe_log_save_evaluate()  # step 1 logs nothing: its row waits
    assert not trainer._preempting and trainer.ran == ["log_save_evaluate"]
    optimizer_step(trainer, 1.0)
    assert trainer._preempting
    with pytest.raises(Preempted, match=r"^SIGTERM: saved checkpoint-2 at the end of step 2;"):
        trainer._maybe_log_save_evaluate()
    assert trainer.control.should_save and trainer.ran == ["log_save_evaluate", "log_save_evaluate"]


def test_skip_drops_the_update_at_once(trainer):
    trainer.guard = GuardArgs(nonfinite="skip")
    trainer._loss_before_step = torch.tensor(5.0)
    trainer._tr_loss = torch.tensor(float("nan"))
    trainer.model.weight.grad = torch.ones_like(trainer.model.weight)
    optimizer_step(trainer, float("nan"))
    assert trainer.model.weight.grad is None and trainer.skipped_steps == 1 and trainer._tr_loss.item() == 5.0
    assert trainer._pending is None


def test_under_deepspeed_a_nan_stops_the_run_at_once(trainer):
    trainer.is_deepspeed_enabled = True
    with pytest.raises(NonFiniteError, match=r"^step 1: loss is NaN"):
        optimizer_step(trainer, float("nan"))


# ---- whole stages ----

@pytest.fixture
def logged(monkeypatch) -> list[tuple[int, dict]]:
    """Every entry the trainer logs, with the step it is logged at."""
    entries = []
    log = Trainer.log

    def log_and_record(self, logs, *args, **kwargs):
        entries.append((self.state.global_step, dict(logs)))
        return log(self, logs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "log", log_and_record)
    return entries


def last_error_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("nan_inf_filter", ["true", "false"])
def test_a_nan_at_a_step_that_logs_and_saves_is_neither_logged_nor_saved(nan_inf_filter, tmp_path, monkeypatch,
                                                                         logged, capsys):
    """Step 4 logs and saves: its row is read before either (with `logging_nan_inf_filter` off, its NaN is in
    the loss the log would average)."""
    monkeypatch.setattr(RouterLossMixin, "compute_loss", nan_loss_at({4}))
    argv = ["sft", "recipes/tiny/sft.yaml", "--max_steps", "6", "--output_dir", str(tmp_path), "--save_strategy",
            "steps", "--save_steps", "2", "--logging_steps", "2", "--logging_nan_inf_filter", nan_inf_filter, *QUIET]
    assert main(argv) == 3
    assert last_error_line(capsys) == (
        "error: step 4: loss is NaN (guard.nonfinite: stop): training stopped, no model saved as the stage's output; "
        "the newest checkpoint, checkpoint-2, is from before it")
    assert checkpoint_names(tmp_path) == ["checkpoint-2"]
    assert [step for step, entry in logged] == [2]
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
def test_a_nan_at_the_last_step_stops_the_stage_before_train_loss_and_its_model(tmp_path, monkeypatch, logged,
                                                                                capsys):
    monkeypatch.setattr(RouterLossMixin, "compute_loss", nan_loss_at({3}))
    argv = ["sft", "recipes/tiny/sft.yaml", "--max_steps", "3", "--output_dir", str(tmp_path), "--save_strategy",
            "no", "--logging_steps", "10", "--logging_nan_inf_filter", "false", *QUIET]
    assert main(argv) == 3
    assert last_error_line(capsys) == (
        "error: step 3: loss is NaN (guard.nonfinite: stop): training stopped, no model saved as the stage's output; "
        "no checkpoint was saved")
    assert logged == []  # not the final entry with train_loss either
    for output in ("model.safetensors", "metrics.json", "run.json"):
        assert not (tmp_path / output).exists(), output


@pytest.mark.slow
def test_sigterm_in_a_step_that_neither_logs_nor_saves_saves_at_the_end_of_the_next(tmp_path):
    """SIGTERM as step 2 begins: step 2's row says so, read at step 3's check; checkpoint-3 is saved."""
    argv = ["sft", "recipes/tiny/sft.yaml", "--max_steps", "5", "--output_dir", str(tmp_path), "--save_strategy",
            "no", "--logging_steps", "10", *QUIET]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_at.py"), "term", "2", "--", *argv], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 143, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "stopped: SIGTERM: saved checkpoint-3 at the end of step 3; exiting with status 143, --resume continues from "
        "it")
    assert checkpoint_names(tmp_path) == ["checkpoint-3"]
