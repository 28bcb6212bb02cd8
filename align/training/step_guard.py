"""What a stage checks at every optimizer step, decided the same way by every process of a launch: a NaN or
infinite loss or gradient norm (stop the run, or skip the update: the recipe's `guard:` section), and a SIGTERM
(save a checkpoint at a step boundary, then exit with status 143).

At the last micro-batch of each optimizer step, once the gradients are reduced and their norm is known and before
the optimizer steps, each process contributes one row — its loss summed over the step's micro-batches, the
gradient norm, whether it got SIGTERM — to one all-gather, and every process decides from the same rows: all stop,
skip or save together, never one rank alone (which would hang the others in their next collective). That is one
3-number collective per optimizer step. With `guard.nonfinite: stop` (the default) the host does not wait for it:
the rows are read at the next step's check, or before that wherever something is logged, saved or evaluated or
training ends (reading them at once would hold the host until the step's whole backward had run, unable to issue
the next step's work). So a step that stops the run has had its update applied in memory, but nothing is logged
or saved from it, and the error names that step; and a SIGTERM in step N's row has its checkpoint saved at the end
of step N+1, or of step N where that step logs, saves, evaluates or is the last. `skip`, and any run under
DeepSpeed (whose engine reads the norm on the host anyway), read the rows at once: a skipped update is dropped
before the optimizer steps.

What the trainer logs stays true. transformers replaces a non-finite micro-batch loss by the running mean of its
logging window (`logging_nan_inf_filter`), which is 0.0 at a window's first step: every window of a diverged run
logged `loss: 0.0` and its `train_loss` left those steps out. Here the run stops at the first non-finite step,
before any window includes it; a skipped step's loss is left out of both the logged window mean and `train_loss`
(which average the steps that trained), each training log entry carries `skipped_steps`, and a window whose
steps were all skipped logs NaN. Weights are checked for NaN before each save (`align.training.nonfinite`).
"""

import logging
from dataclasses import dataclass

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


def scalar_on(device: torch.device, value: torch.Tensor | float) -> torch.Tensor:
    """`value` as a 0-d float32 tensor on `device`; a Python number is filled in there, not copied from the host
    (`torch.tensor(x, device=...)` waits for the device)."""
    if isinstance(value, torch.Tensor):
        return value.detach().float().reshape(()).to(device)
    return torch.full((), float(value), dtype=torch.float32, device=device)


@dataclass
class GatheredRows:
    """One step's rows from every process, on their way to the host: on CUDA, copied without blocking into pinned
    memory, an event marking when the copy is done."""

    step: int
    rows: torch.Tensor
    copied: torch.cuda.Event | None = None

    @classmethod
    def start_copy(cls, step: int, rows: torch.Tensor) -> "GatheredRows":
        if rows.device.type != "cuda":
            return cls(step, rows)
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        host.copy_(rows, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return cls(step, host, copied)

    def read(self) -> list[list[float]]:
        if self.copied is not None:
            self.copied.synchronize()
        return self.rows.tolist()


class StepGuardMixin:
    """Mix in before `CrashSafeCheckpointsMixin` (which keeps `skipped_steps` across a resume)."""

    guard: GuardArgs = GuardArgs()  # the recipe's `guard:` section; the stage sets it
    skipped_steps: int = 0
    _sigterm: SigtermWatch | None = None
    _step_loss: torch.Tensor | None = None  # this process's loss summed over the current step's micro-batches
    _loss_before_step: torch.Tensor | None = None  # the trainer's logging-window loss sum before this step
    _pending: GatheredRows | None = None  # the last step's rows, not yet read (`guard.nonfinite: stop`)
    _preempting = False
    _window_steps = 0  # optimizer steps since the last training log entry
    _window_skipped = 0

    def train(self, *args, **kwargs):
        if self.guard.nonfinite == "skip" and self.is_deepspeed_enabled:
            raise RecipeError("guard.nonfinite: skip does not run under DeepSpeed (its engine steps the optimizer "
                              "itself); use stop")
        self._pending = None  # left by a `train()` that raised: not this run's
        with SigtermWatch(self.guard.sigterm_grace) as self._sigterm:
            return super().train(*args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        if self._step_loss is None:  # the first micro-batch of an optimizer step
            self._loss_before_step = self._tr_loss.clone()
        loss = super().training_step(model, inputs, *args, **kwargs)
        self._step_loss = loss.detach() if self._step_loss is None else self._step_loss + loss.detach()
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        """Called once per optimizer step, after clipping and before `optimizer.step()`: where each step is checked."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._check_step(model, grad_norm)
        return grad_norm

    def _check_step(self, model, grad_norm) -> None:
        """Gather this step's rows; decide from them now (`skip`, DeepSpeed) or keep them to read later (`stop`),
        after deciding from the step before's."""
        self._resolve_pending()
        device = self._tr_loss.device
        norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # an FSDP DTensor
        row = torch.stack([scalar_on(device, 0.0 if self._step_loss is None else self._step_loss),
                           scalar_on(device, 0.0 if norm is None else norm),
                           scalar_on(device, self._sigterm.requested)])
        rows = self.accelerator.gather(row).view(-1, len(CHECKED) + 1)
        self._step_loss = None
        self._window_steps += 1
        step = self.state.global_step + 1
        if self.guard.nonfinite == "skip" or self.is_deepspeed_enabled:  # skip: before the optimizer steps
            self._decide(GatheredRows(step, rows), model)
        else:
            self._pending = GatheredRows.start_copy(step, rows)

    def _resolve_pending(self) -> None:
        """Read and act on the rows kept from the last step (`guard.nonfinite: stop`), if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._decide(pending, model=None)

    def _decide(self, gathered: GatheredRows, model) -> None:
        rows = gathered.read()
        if any(row[-1] for row in rows):
            self._preempting = True
            self._sigterm.boundary_reached()
        bad = first_nonfinite(rows, CHECKED)
        if bad is not None:
            self._nonfinite_step(model, gathered.step, *bad)

    def _nonfinite_step(self, model, step: int, name: str, value: float) -> None:
        """`model`: the one whose gradients `skip` drops (None where the rows were read after its update)."""
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
        self._resolve_pending()  # a step that stops the run is never saved
        self.assert_finite_weights(f"checkpoint-{self.state.global_step}")
        super()._save_checkpoint(model, trial)

    def _maybe_log_save_evaluate(self, *args, **kwargs) -> None:
        control = self.control
        if control.should_log or control.should_save or control.should_evaluate or control.should_training_stop:
            self._resolve_pending()  # nothing is logged, saved or evaluated from a step that stops the run
        if self._preempting:  # save at this step boundary (evaluating would only delay it), then stop
            self.control.should_save, self.control.should_evaluate = True, False
            self.control.should_training_stop = True
        super()._maybe_log_save_evaluate(*args, **kwargs)
        if self._preempting:
            message = (f"SIGTERM: saved checkpoint-{self.state.global_step} at the end of step "
                       f"{self.state.global_step}; exiting with status {EXIT_STATUS}, --resume continues from it")
            file_only_logger.warning("%s", message)
            raise Preempted(message)

    def _finalize_training(self, *args, **kwargs):
        self._resolve_pending()  # the last step's rows: before `train_loss` is logged and the stage saves its model
        return super()._finalize_training(*args, **kwargs)

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
