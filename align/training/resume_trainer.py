"""The trainer's side of `align.runs.resume_changes`: every checkpoint records the settings it was trained with, a
resume that accepted changes trains with the recipe's optimizer hyperparameters, and one that changed the model's
shape ends in one line.

transformers restores the optimizer's param groups (learning rate, weight decay, betas, epsilon) and the
scheduler's base learning rates from the checkpoint, over the recipe's; only the schedule's shape (scheduler
type, warmup, length) follows the recipe. After an accepted change the recipe's values are put back, keeping the
checkpoint's optimizer moments and step count, so the run trains with what `run.json` says it used.
"""

import logging
from pathlib import Path

from torch.optim.lr_scheduler import LambdaLR

from ..runs.checkpoints import CheckpointFileError
from ..runs.resume_changes import write_settings

logger = logging.getLogger(__name__)


class ResumeSettingsMixin:
    """Mix in before `CrashSafeCheckpointsMixin` (whose staged checkpoints it adds the settings to)."""

    _run_settings: dict | None = None
    _apply_recipe_optimizer: bool = False
    optimizer_in_use: dict = {}  # after a resume: the hyperparameters the restored optimizer holds, by recipe key

    def use_run_settings(self, settings: dict, changed_on_resume: bool) -> None:
        """`settings` go into every checkpoint; `changed_on_resume`: the recipe's optimizer values replace the
        checkpoint's."""
        self._run_settings, self._apply_recipe_optimizer = settings, changed_on_resume

    def _finish_staged_state(self, staged: Path, final: Path) -> None:
        super()._finish_staged_state(staged, final)
        if self._run_settings is not None:
            write_settings(staged, self._run_settings)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """A model shape changed on an accepted resume: one line naming the first weight that does not fit, not
        torch's list of every mismatch."""
        try:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
        except RuntimeError as error:
            mismatch = next((line.strip().rstrip(".") for line in str(error).splitlines() if "size mismatch" in line),
                            None)
            if mismatch is None:
                raise
            raise CheckpointFileError(f"{resume_from_checkpoint}: its weights do not fit the recipe's model "
                                      f"({mismatch}); a model's shape cannot change on resume: start afresh "
                                      "(--overwrite_output_dir or another --output_dir)") from None

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        fresh = [{key: value for key, value in group.items() if key != "params"}
                 for group in self.optimizer.param_groups] if checkpoint else []
        super()._load_optimizer_and_scheduler(checkpoint)
        if not checkpoint:
            return
        if self._apply_recipe_optimizer:
            if self.is_deepspeed_enabled or not isinstance(self.lr_scheduler, LambdaLR):
                logger.warning("resume: the optimizer keeps the checkpoint's hyperparameters (DeepSpeed or a "
                               "%s scheduler): run.json records them as used", type(self.lr_scheduler).__name__)
            else:
                self._apply_recipe_hyperparameters(fresh)
        self.optimizer_in_use = self._optimizer_values()

    def _apply_recipe_hyperparameters(self, fresh: list[dict]) -> None:
        scheduler = self.lr_scheduler
        for group, recipe_values in zip(self.optimizer.param_groups, fresh):
            group.update(recipe_values)
        scheduler.base_lrs = [group["initial_lr"] for group in fresh]
        current = [base * factor(scheduler.last_epoch) for base, factor in zip(scheduler.base_lrs,
                                                                               scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, current):
            group["lr"] = lr
        scheduler._last_lr = current  # what get_last_lr() (the logged learning_rate) reports until the next step

    def _optimizer_values(self) -> dict:
        """The restored optimizer's hyperparameters, under the recipe's keys (the largest over param groups:
        transformers keeps a group without weight decay)."""
        groups = self.optimizer.param_groups
        base_lrs = getattr(self.lr_scheduler, "base_lrs", None) or [group.get("initial_lr") for group in groups]
        values = {"training.learning_rate": max(base_lrs),
                  "training.weight_decay": max(group.get("weight_decay", 0.0) for group in groups)}
        if "betas" in groups[0]:
            values["training.adam_beta1"], values["training.adam_beta2"] = map(float, groups[0]["betas"])
        if "eps" in groups[0]:
            values["training.adam_epsilon"] = groups[0]["eps"]
        return values
