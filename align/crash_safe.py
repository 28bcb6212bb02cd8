"""A trainer whose checkpoints survive a kill at any moment, and whose metrics survive a resume.

transformers' `Trainer` writes `checkpoint-N` in place, so a kill during a save leaves a directory that looks like
the newest checkpoint but is not complete; its rotation (`save_total_limit`) may delete the checkpoint a resumed
run came from; and its `train_loss` after a resume averages only the steps run since. This mixin makes the
trainer save into a staging directory that `align.checkpoints.publish` flushes and renames, rotate by step while
keeping the resumed-from checkpoint, and carry the summed loss of every step in each checkpoint.
"""

import logging
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from .checkpoints import publish, read_loss_tally, rotate, staging_dir, write_loss_tally

logger = logging.getLogger(__name__)


class CrashSafeCheckpointsMixin:
    """Mix in before a transformers trainer: `class JetMoESFTTrainer(CrashSafeCheckpointsMixin, ..., SFTTrainer)`."""

    _staging: Path | None = None
    _resumed_from: str | None = None
    _earlier_loss_sum: float | None = None

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        """`resume_from_checkpoint` is a path here (the stage picks the checkpoint)."""
        self._resumed_from = resume_from_checkpoint
        self._earlier_loss_sum = read_loss_tally(resume_from_checkpoint) if resume_from_checkpoint else None
        if resume_from_checkpoint and self._earlier_loss_sum is None:
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
            super()._save_checkpoint(model, trial)  # into staging/checkpoint-N; its rotation sees only that one
        finally:
            self._staging = None
        if self.args.should_save:
            self._finish_staged_state(staging / name, run_dir / name)
        self.accelerator.wait_for_everyone()  # every rank's shards are in before the rename
        if self.args.should_save:
            publish(staging / name, run_dir / name)
            staging.rmdir()
            keep = {Path(path) for path in (self._resumed_from, self.state.best_model_checkpoint) if path}
            rotate(run_dir, self.args.save_total_limit, keep)
        self.accelerator.wait_for_everyone()

    def _finish_staged_state(self, staged: Path, final: Path) -> None:
        """The loss tally, and a best-checkpoint path that names the published directory, not the staging one."""
        loss_sum = (self._earlier_loss_sum or 0.0) + self._total_loss_scalar + self._tr_loss.item()
        write_loss_tally(staged, self.state.global_step, loss_sum)
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(staged / "trainer_state.json"))

    def _finalize_training(self, *args, **kwargs) -> TrainOutput:
        """After a resume, `train_loss` averages every step of the run, not only those since the resume."""
        output = super()._finalize_training(*args, **kwargs)
        if self._earlier_loss_sum is None:
            return output
        train_loss = (self._earlier_loss_sum + self._total_loss_scalar) / max(self.state.global_step, 1)
        output.metrics["train_loss"] = train_loss
        return TrainOutput(output.global_step, train_loss, output.metrics)
