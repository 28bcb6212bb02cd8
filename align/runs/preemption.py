"""SIGTERM, what SLURM and Kubernetes send before SIGKILL when they pre-empt a job: the run saves a checkpoint at
the end of the step it is in, or of the next one (`align.training.step_guard`), and exits with status 143, so the
steps since the last checkpoint are not lost and the scheduler, or a wrapper script, requeues the job, which
`--resume` continues.

143 (128 + 15) is the status of a process ended by SIGTERM, so rules already written for a plain SIGTERM keep
applying (a Kubernetes `podFailurePolicy` on exit code 143, a wrapper that resubmits on it), and no other way our
runs end gives it. Whether a checkpoint was saved is in the log and the final line.

Only the training loop waits for its step boundary: before it (loading, preparing data) and after it (the final
save, written atomically) a SIGTERM ends the process at once, as it always did.
"""

import logging
import os
import signal
import sys
import threading

logger = logging.getLogger(__name__)

EXIT_STATUS = 143


class Preempted(Exception):
    """The run stopped on SIGTERM after saving a checkpoint; the message names it."""

    EXIT_STATUS = EXIT_STATUS


class SigtermWatch:
    """For the length of a `with` block (in the main thread), SIGTERM only sets `requested`: the trainer checks it
    at each step boundary. A step that does not end within `grace` seconds, a second SIGTERM, or a grace of 0
    end the process at once, with status 143 and a line saying that no checkpoint was saved."""

    def __init__(self, grace: float):
        self.grace = grace
        self.requested = False
        self._timer: threading.Timer | None = None
        self._previous = None
        self._pid = os.getpid()

    def __enter__(self) -> "SigtermWatch":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc_info) -> None:
        self.boundary_reached()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def boundary_reached(self) -> None:
        """The trainer reached the step boundary it saves at: no deadline any more."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_sigterm(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked child (a data loader worker) ends as it would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self.requested:
            exit_without_checkpoint("a second SIGTERM")
        self.requested = True
        if self.grace <= 0:
            exit_without_checkpoint("SIGTERM with guard.sigterm_grace 0")
        logger.warning("SIGTERM: saving a checkpoint at the end of this step (within %g s), then exiting with "
                       "status %d", self.grace, EXIT_STATUS)
        self._timer = threading.Timer(self.grace, exit_without_checkpoint,
                                      args=(f"SIGTERM, and no step ended within guard.sigterm_grace {self.grace:g} s",))
        self._timer.daemon = True
        self._timer.start()


def exit_without_checkpoint(why: str) -> None:
    """End the process now (from any thread), saying so; a save cut short here keeps its staging name."""
    logger.error("%s: exiting with status %d without saving a checkpoint; --resume continues from the newest one",
                 why, EXIT_STATUS)
    logging.shutdown()  # flush train.log
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STATUS)
