"""What a stage checks at every optimizer step, decided the same way by every process of a launch: a NaN or
infinite loss or gradient norm (stop the run, or skip the update: the recipe's `guard:` section), and a SIGTERM
(save a checkpoint at this step boundary, then exit with status 143).

At the last micro-batch of each optimizer step, once the gradients are reduced and their norm is known and before
the optimizer steps, each process contributes one row — its loss summed over the step's micro-batches, the
gradient norm, whether it got SIGTERM — to one all-gather, and every process decides from the same rows: all stop,
skip or save together, never one rank alone (which would hang the others in their next collective). That is one
3-number collective and one host sync per optimizer step.

What the trainer logs stays true. transformers replaces a non-finite micro-batch loss by the running mean of its
logging window (`logging_nan_inf_filter`), which is 0.0 at a window's first step: every window of a diverged run
logged `loss: 0.0` and its `train_loss` left those steps out. Here the run stops at the first non-finite step,
before any window includes it; a skipped step's loss is left out of both the logged window mean and `train_loss`
(which average the steps that trained), each training log entry carries `skipped_steps`, and a window whose
steps were all skipped logs NaN. Weights are checked for NaN before each save (`align.training.nonfinite`).
"""

import logging

import torch

from ..config.guard_args import GuardArgs
from ..config.recipes import RecipeError
from ..runs.atomic_files import json_safe
from ..runs.checkpoints import checkpoints
from ..runs.preemption import EXIT_STATUS, Preempted, SigtermWatch
from ..runs.run_logging import file_only_logger
from .nonfinite import NonFiniteError, first_nonfinite, nonfinite_flags

logger = logging.getLogger(__name__)

CHECKED = ("loss", "grad_norm")  # the row each process contributes: these, then its SIGTERM flag


class StepGuardMixin:
    """Mix in before `CrashSafeCheckpointsMixin` (which keeps `skipped_steps` across a resume)."""

    guard: GuardArgs = GuardArgs()  # the recipe's `guard:` section; the stage sets it
    skipped_steps: int = 0
    _sigterm: SigtermWatch | None = None
    _step_loss: torch.Tensor | None = None  # this process's loss summed over the current step's micro-batches
    _loss_before_step: torch.Tensor | None = None  # the trainer's logging-window loss sum before this step
    _preempting = False
    _window_steps = 0  # optimizer steps since the last training log entry
    _window_skipped = 0

    def train(self, *args, **kwargs):
        if self.guard.nonfinite == "skip" and self.is_deepspeed_enabled:
            raise RecipeError("guard.nonfinite: skip does not run under DeepSpeed (its engine steps the optimizer "
                              "itself); use stop")
        with SigtermWatch(self.guard.sigterm_grace) as self._sigterm:
            return super().train(*args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        if self._step_loss is None:  # the first micro-batch of an optimizer step
            self._loss_before_step = self._tr_loss.clone()
        loss = super().training_step(model, inputs, *args, **kwargs)
        self._step_loss = loss.detach() if self._step_loss is None else self._step_loss + loss.detach()
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """Called once per optimizer step, after clipping and before `optimizer.step()`: the decision point."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._check_step(model, grad_norm)
        return grad_norm

    def _check_step(self, model, grad_norm) -> None:
        device = self._tr_loss.device
        loss = self._step_loss if self._step_loss is not None else torch.zeros((), device=device)
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # an FSDP DTensor
        row = torch.stack([loss.detach().float().reshape(()).to(device),
                           torch.as_tensor(0.0 if norm is None else norm, dtype=torch.float32, device=device),
                           torch.tensor(float(self._sigterm.requested), device=device)])
        rows = self.accelerator.gather(row).view(-1, len(CHECKED) + 1).tolist()
        self._step_loss = None
        self._window_steps += 1
        if any(row[-1] for row in rows):
            self._preempting = True
            self._sigterm.boundary_reached()
        bad = first_nonfinite(rows, CHECKED)
        if bad is not None:
            self._nonfinite_step(model, *bad)

    def _nonfinite_step(self, model, name: str, value: float) -> None:
        step = self.state.global_step + 1
        if self.guard.nonfinite == "skip" and self.skipped_steps < self.guard.max_skipped_steps:
            model.zero_grad(set_to_none=True)  # the optimizer passes over parameters without a gradient
            self._tr_loss.copy_(self._loss_before_step)  # the logged mean and train_loss leave this step out
            self.skipped_steps += 1
            self._window_skipped += 1
            logger.warning("step %d: %s is %s: its update is skipped (%d of at most %d skipped, guard.nonfinite: "
                           "skip)", step, name, json_safe(value), self.skipped_steps, self.guard.max_skipped_steps)
            return
        why = "guard.nonfinite: stop" if self.guard.nonfinite == "stop" else \
            f"guard.max_skipped_steps {self.guard.max_skipped_steps} already skipped"
        self._stop(f"step {step}: {name} is {json_safe(value)} ({why})")

    def _stop(self, what: str) -> None:
        found = checkpoints(self.args.output_dir)
        kept = f"the newest checkpoint, {found[-1].name}, is from before it" if found else "no checkpoint was saved"
        message = f"{what}: training stopped, no model saved as the stage's output; {kept}"
        file_only_logger.error("%s", message)  # the terminal gets it as the command's error line
        raise NonFiniteError(message)

    def assert_finite_weights(self, what: str) -> None:
        """Refuse to save `what` from weights holding a NaN or an infinity (every process agreeing)."""
        names, flags = nonfinite_flags(self.model)
        if self.accelerator.num_processes > 1:
            flags = self.accelerator.reduce(flags, reduction="sum")
        bad = flags.nonzero()
        if len(bad):
            self._stop(f"step {self.state.global_step}: weight {names[bad[0].item()]} holds NaN or infinite values "
                       f"(before saving {what})")

    def _save_checkpoint(self, model, trial) -> None:
        self.assert_finite_weights(f"checkpoint-{self.state.global_step}")
        super()._save_checkpoint(model, trial)

    def _maybe_log_save_evaluate(self, *args, **kwargs) -> None:
        if self._preempting:  # save at this step boundary (evaluating would only delay it), then stop
            self.control.should_save, self.control.should_evaluate = True, False
            self.control.should_training_stop = True
        super()._maybe_log_save_evaluate(*args, **kwargs)
        if self._preempting:
            message = (f"SIGTERM: saved checkpoint-{self.state.global_step} at the end of step "
                       f"{self.state.global_step}; exiting with status {EXIT_STATUS}, --resume continues from it")
            file_only_logger.warning("%s", message)
            raise Preempted(message)

    def log(self, logs: dict, *args, **kwargs) -> None:
        """A training log entry's `loss` averages the window's steps that trained (transformers divides by all)."""
        if "loss" in logs and self._window_steps:
            trained = self._window_steps - self._window_skipped
            if self._window_skipped:
                logs["loss"] = logs["loss"] * self._window_steps / trained if trained else float("nan")
            if self.guard.nonfinite == "skip":
                logs["skipped_steps"] = self.skipped_steps
            self._window_steps = self._window_skipped = 0
        super().log(logs, *args, **kwargs)
