"""`train.log` in a stage's output dir: what the terminal showed of the run (our progress lines, transformers' and
TRL's log records, every metrics entry the trainer logs), timestamped, so the run can be read after the terminal
is gone. A resumed stage appends to the same file."""

import functools
import logging
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback

from .atomic_files import json_text

TRAIN_LOG = "train.log"
# Lines for the file only: the console already shows the trainer's metrics entries (transformers' progress bar)
# and a failure (the command's one-line error).
FILE_ONLY = "align.train_log"
LOGGED = ("align", "transformers", "trl", FILE_ONLY)

file_only_logger = logging.getLogger(FILE_ONLY)
file_only_logger.propagate = False
file_only_logger.setLevel(logging.INFO)


def writes_train_log(run_stage):
    """Decorate `run_stage(recipe, ...)`: for the length of the stage, the main process copies the loggers in
    `LOGGED` into `{recipe.training.output_dir}/train.log`."""

    @functools.wraps(run_stage)
    def run_with_train_log(recipe, *args, **kwargs):
        if not PartialState().is_main_process:
            return run_stage(recipe, *args, **kwargs)
        output_dir = Path(recipe.training.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(output_dir / TRAIN_LOG, mode="a", encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        for name in LOGGED:
            logging.getLogger(name).addHandler(handler)
        # Our progress lines reach the file even where logging is left at warnings only (a library caller).
        align_logger = logging.getLogger("align")
        level = align_logger.level
        if not align_logger.isEnabledFor(logging.INFO):
            align_logger.setLevel(logging.INFO)
        try:
            return run_stage(recipe, *args, **kwargs)
        except Exception:
            file_only_logger.exception("%s stage failed", recipe.stage)
            raise
        finally:
            align_logger.setLevel(level)
            for name in LOGGED:
                logging.getLogger(name).removeHandler(handler)
            handler.close()

    return run_with_train_log


class MetricsToTrainLog(TrainerCallback):
    """Each entry the trainer logs (train loss, eval metrics, router losses, rewards), as one JSON line."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            file_only_logger.info("step %d: %s", state.global_step, json_text(logs))
