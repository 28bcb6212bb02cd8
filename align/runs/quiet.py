"""Warnings that flood a run's output without telling its user anything, stopped where they start."""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


def silence_known_floods(training_args) -> None:
    """- transformers pins dataloader memory by default, and with no accelerator torch warns about it for every
      dataloader the trainer builds (each epoch, each evaluation): pinning only speeds up copies to an
      accelerator, so a CPU run does not ask for it;
    - TRL 1.16's DPO reads `model.is_gradient_checkpointing`, which transformers 5.23 deprecates with a
      FutureWarning at every read: a note for TRL's maintainers, filtered by its exact message."""
    if training_args.device.type == "cpu":
        training_args.dataloader_pin_memory = False
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@contextmanager
def errors_only(logger_name: str) -> Iterator[None]:
    """A library logger held at ERROR for the block: for warnings it repeats about something we report ourselves."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
