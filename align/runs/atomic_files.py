"""Files a stage writes, written so that a failure at any moment (a kill, a full disk) leaves the old file or none,
never part of one: each is written under a temporary name beside its target, flushed to disk (`fsync`) and only
then renamed over it, in one step. A saved model (several files) is written into a staging directory inside its
target directory, and its files are then moved over their namesakes one by one, each move atomic.

Out of space on the way, the error names the target and says so (`align.runs.disk_full`), and the temporary file or
staging directory is removed, which frees what it took."""

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .disk_full import out_of_space_named

STAGING_PREFIX = "tmp-"  # staging names start with it; `checkpoint-*` and the published names never do


def fsync_path(path: Path) -> None:
    """Flush `path` (a file or a directory's entries) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(directory: Path) -> None:
    """Flush every file under `directory`."""
    for root, _, files in os.walk(directory):
        for name in files:
            fsync_path(Path(root) / name)


def temporary_path(path: Path) -> Path:
    """Where `write_atomically` writes `path` first: hidden, beside it, this process's own."""
    return path.with_name(f".{path.name}.{STAGING_PREFIX}{os.getpid()}")


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(temporary_path)`, then make the result `path` in one step."""
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with out_of_space_named(path):
            write(temporary)
            fsync_path(temporary)
            os.replace(temporary, path)
            fsync_path(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> None:
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def json_safe(value):
    """`value` with every non-finite float as the string JSON lacks a number for ("NaN", "Infinity",
    "-Infinity"; `float()` reads each back), so the file is valid JSON and still says what happened."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def json_text(content, **dumps_kwargs) -> str:
    """Strict JSON (non-finite numbers as strings, see `json_safe`) for a file a person or a tool reads."""
    return json.dumps(json_safe(content), allow_nan=False, **dumps_kwargs)


def write_json_atomically(path: str | Path, content) -> None:
    write_text_atomically(path, json_text(content, indent=2, default=str) + "\n")


@contextmanager
def staged_directory(target: str | Path, is_writer: bool = True, barrier: Callable[[], None] = lambda: None
                     ) -> Iterator[Path]:
    """Yield a staging directory inside `target` to save into; at the end of the block its entries replace their
    namesakes in `target` (the others there stay). A failure removes the staging directory and leaves `target`
    as it was. Several processes saving together (a sharded model): every one enters the block, `is_writer`
    (one of them) prepares and publishes, and `barrier` waits for all of them around the block."""
    target = Path(target)
    staging = target / f"{STAGING_PREFIX}save"
    try:
        with out_of_space_named(target):
            if is_writer:
                if staging.exists():  # left by a save that was killed
                    shutil.rmtree(staging)
                staging.mkdir(parents=True)
            barrier()
            yield staging
            barrier()  # every process's files are in
            if is_writer:
                publish_entries(staging, target)
    finally:
        if is_writer:
            shutil.rmtree(staging, ignore_errors=True)
    barrier()


def publish_entries(staging: Path, target: Path) -> None:
    """Flush every file under `staging`, then rename each of its entries over the one of that name in `target`."""
    fsync_tree(staging)
    for entry in sorted(staging.iterdir()):
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir():  # a directory cannot be renamed over a non-empty one
            shutil.rmtree(destination)
        os.replace(entry, destination)
    fsync_path(target)
