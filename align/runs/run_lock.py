"""One live run per output directory, and no silent overwrite of a finished one.

Two runs writing to one directory delete each other's checkpoints (rotation) and leave a mix of both, so a stage
holds an exclusive `fcntl` lock on `{output_dir}/.align.lock` while it runs. The lock file records who holds it
(pid, command, start time) for the message the second run shows. The kernel drops the lock when its process dies,
so a killed run never leaves the directory locked; the stale file is simply locked again.
"""

import fcntl
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .checkpoints import STAGING_PREFIX, checkpoints

LOCK_FILE = ".align.lock"
RUN_RECORDS = ("run.json", "metrics.json")


class OutputDirError(ValueError):
    """The output directory is in use, or holds a run this command must not replace; the message says which."""


@contextmanager
def output_dir_lock(output_dir: str | Path):
    """Hold the output directory's lock for the block, or raise `OutputDirError` naming the run that holds it."""
    path = Path(output_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirError(f"{output_dir}: another run is writing to it ({_holder(path)}); wait for it to "
                                 "end or choose another --output_dir") from None
        os.ftruncate(descriptor, 0)
        holder = {"pid": os.getpid(), "command": " ".join(sys.argv),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.write(descriptor, json.dumps(holder).encode())
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']}: {holder['command']}, since {holder['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def earlier_run(output_dir: str | Path) -> str | None:
    """What an earlier run left in `output_dir` that a fresh start would mix with, in words (None: nothing)."""
    directory = Path(output_dir)
    if (directory / "run.json").is_file():
        return "a finished run (run.json)"
    found = checkpoints(directory)
    return f"checkpoints of an unfinished run ({found[-1].name})" if found else None


def earlier_run_problem(output_dir: str | Path) -> str | None:
    """Why a fresh start must not write to `output_dir`: it would silently overwrite (or, through rotation, mix
    with) an earlier run."""
    found = earlier_run(output_dir)
    if found:
        return f"{output_dir}: holds {found}; pass --resume to continue it or --overwrite_output_dir to replace it"
    return None


def clear_earlier_run(output_dir: str | Path) -> None:
    """What `--overwrite_output_dir` removes: the earlier run's checkpoints (finished or cut short) and records."""
    directory = Path(output_dir)
    for path in [*checkpoints(directory), *directory.glob(f"{STAGING_PREFIX}checkpoint-*")]:
        shutil.rmtree(path)
    for name in RUN_RECORDS:
        (directory / name).unlink(missing_ok=True)


@contextmanager
def claimed_output_dir(training_args, resume: bool):
    """The stage's hold on its output directory: the lock (taken by the process that saves), and a refusal to
    start afresh over an earlier run."""
    if not training_args.should_save:
        yield
        return
    with output_dir_lock(training_args.output_dir):
        problem = None if resume else earlier_run_problem(training_args.output_dir)
        if problem:
            raise OutputDirError(problem)
        yield
