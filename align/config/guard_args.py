"""A recipe's `guard:` section: what a stage does when its training goes wrong as it runs. Plain data, so recipes
parse fast; the trainer side is `align.training.step_guard`."""

from dataclasses import dataclass
from typing import Literal


@dataclass
class GuardArgs:
    """nonfinite: a step whose loss or gradient norm is NaN or infinite either stops the run there (`stop`: no
        model is saved as the stage's output, the checkpoints before it stay, exit status 3) or has its update
        skipped (`skip`: weights and optimizer state stay as they were, the learning-rate schedule moves on, the
        step is counted) until more than `max_skipped_steps` were skipped in the run, which then stops as `stop`.
    sigterm_grace: seconds from SIGTERM (a scheduler's pre-emption) to the step boundary where a checkpoint is saved
        before the run exits with status 143 (the end of this step or the next: `align.training.step_guard`); a
        step that does not end in time ends the run without one.
    """

    nonfinite: Literal["stop", "skip"] = "stop"
    max_skipped_steps: int = 10
    sigterm_grace: float = 120.0

    def __post_init__(self):
        if self.max_skipped_steps < 0:
            raise ValueError(f"guard.max_skipped_steps must be 0 or more, got {self.max_skipped_steps}")
        if self.sigterm_grace < 0:
            raise ValueError(f"guard.sigterm_grace must be 0 or more seconds, got {self.sigterm_grace}")
