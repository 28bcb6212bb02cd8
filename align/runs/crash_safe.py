"""A trainer whose checkpoints survive a kill at any moment, and whose metrics survive a resume.

transformers' `Trainer` writes `checkpoint-N` in place, so a kill during a save leaves a directory that looks like
the newest checkpoint but is not complete; its rotation (`save_total_limit`) may delete the checkpoint a resumed
run came from; and its `train_loss` after a resume averages only the steps run since. This mixin makes the
trainer save into a staging directory that `align.runs.checkpoints.publish` flushes and renames, rotate by step while
keeping the resumed-from checkpoint, and carry the summed loss of every step in each checkpoint (with the count of
steps skipped for a non-finite loss, `align.training.step_guard`, which the mean loss leaves out). Its trainer state is
written as strict JSON (NaN as "NaN"). A save that fails for want of space names the checkpoint and says so.
"""

import dataclasses
import logging
import math
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from .atomic_files import write_json_atomically
from .checkpoints import LossTally, publish, read_loss_tally, rotate, staging_dir, write_loss_tally
from .disk_full import out_of_space_named

logger = logging.getLogger(__name__)


class CrashSafeCheckpointsMixin:
    """Mix in before a transformers trainer: `class JetMoESFTTrainer(CrashSafeCheckpointsMixin, ..., SFTTrainer)`."""

    _staging: Path | None = None
    _resumed_from: str | None = None
    _earlier: LossTally | None = None  # the tally of the checkpoint the run resumed from
    skipped_steps: int = 0  # in the whole run; counted by align.training.step_guard

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        """`resume_from_checkpoint` is a path here (the stage picks the checkpoint)."""
        self._resumed_from = resume_from_checkpoint
        self._earlier = read_loss_tally(resume_from_checkpoint) if resume_from_checkpoint else None
        self.skipped_steps = self._earlier.skipped_steps if self._earlier else 0
        if resume_from_checkpoint and self._earlier is None:
            logger.warning("%s records no loss tally: train_loss will cover the resumed steps only",
                           resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = staging_dir(run_dir, self.state.global_step)
        if self.args.should_save and staging.exists():  # left by a save that was killed
            shutil.rmtree(staging)
        self.accelerator.wait_for_everyone()
        self._staging = staging
        try:
            with out_of_space_named(staging / name):
                super()._save_checkpoint(model, trial)  # into staging/checkpoint-N; its rotation sees only that one
                if self.args.should_save:
                    self._finish_staged_state(staging / name, run_dir / name)
        except Exception:
            if self.args.should_save:  # what the failed save wrote (a full disk: the space it took) goes
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every rank's shards are in before the rename
        if self.args.should_save:
            with out_of_space_named(run_dir / name):
                publish(staging / name, run_dir / name)
            staging.rmdir()
            keep = {Path(path) for path in (self._resumed_from, self.state.best_model_checkpoint) if path}
            rotate(run_dir, self.args.save_total_limit, keep)
        self.accelerator.wait_for_everyone()

    def _finish_staged_state(self, staged: Path, final: Path) -> None:
        """The loss tally, and the trainer state as strict JSON, with a best-checkpoint path that names the
        published directory, not the staging one."""
        loss_sum = self._earlier_loss_sum() + self._total_loss_scalar + self._tr_loss.item()
        write_loss_tally(staged, self.state.global_step, LossTally(loss_sum, self.skipped_steps))
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
        write_json_atomically(staged / "trainer_state.json", dataclasses.asdict(self.state))

    def _earlier_loss_sum(self) -> float:
        return self._earlier.loss_sum if self._earlier else 0.0

    def _whole_run_train_loss(self) -> float | None:
        """The mean loss of every step of the run that trained: after a resume, those before it too (when its
        checkpoint has a loss tally); never the steps whose update was skipped. None where transformers' own
        figure is already that (a fresh run that skipped nothing)."""
        if self._earlier is None and not self.skipped_steps:
            return None
        first_step = 0 if self._earlier else self._initial_global_step
        trained = self.state.global_step - first_step - self.skipped_steps
        loss_sum = self._earlier_loss_sum() + self._total_loss_scalar
        return loss_sum / trained if trained > 0 else math.nan

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "train_loss" in logs:  # the final entry, logged inside `_finalize_training`
            whole_run = self._whole_run_train_loss()
            logs["train_loss"] = logs["train_loss"] if whole_run is None else whole_run
        super().log(logs, *args, **kwargs)

    def _finalize_training(self, *args, **kwargs) -> TrainOutput:
        output = super()._finalize_training(*args, **kwargs)
        train_loss = self._whole_run_train_loss()
        if train_loss is None:
            return output
        output.metrics["train_loss"] = train_loss
        return TrainOutput(output.global_step, train_loss, output.metrics)
