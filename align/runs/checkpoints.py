"""Checkpoints on disk: which ones are complete, which one to resume from, how a new one is published and which
old ones are deleted.

A checkpoint is written under a temporary name (`tmp-checkpoint-N/checkpoint-N`), flushed to disk and only then
renamed to `checkpoint-N`, so a `checkpoint-N` directory is never half written by us. Resuming still verifies
what it picks (the trainer state and every safetensors file), because a directory can be damaged otherwise (a
copy cut short, a full disk, an older version of this code), and falls back to the newest complete one.
"""

import json
import logging
import re
import shutil
import zipfile
from pathlib import Path
from typing import NamedTuple

from safetensors import SafetensorError, safe_open

from .atomic_files import STAGING_PREFIX, fsync_path, fsync_tree, json_text
from .deepspeed_checkpoints import deepspeed_problem, is_deepspeed_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# The summed training loss of every step up to this checkpoint, and how many steps were skipped for a non-finite
# loss or gradient (`guard.nonfinite: skip`): whole-run metrics that survive a resume.
LOSS_TALLY = "loss_tally.json"


class ResumeError(ValueError):
    """Nothing usable to resume from; the message names the directory."""


class CheckpointFileError(ValueError):
    """A checkpoint or model file cannot be used; the message names the file and what is wrong with it."""


def checkpoint_step(path: str | Path) -> int | None:
    match = CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """The `checkpoint-N` directories of `output_dir`, oldest step first (staging directories excluded)."""
    directory = Path(output_dir)
    found = [path for path in directory.iterdir() if path.is_dir() and checkpoint_step(path) is not None] \
        if directory.is_dir() else []
    return sorted(found, key=checkpoint_step)


def check_safetensors(path: Path) -> None:
    """Read the header of a safetensors file: a truncated or foreign file fails here, naming the file."""
    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError) as error:
        raise CheckpointFileError(f"{path}: not a complete safetensors file ({error}); it was probably cut short "
                                  "while being written or copied") from None


def verify_checkpoint(path: Path) -> None:
    """Raise `CheckpointFileError` naming the first missing or damaged file of checkpoint `path`."""
    state_file = path / "trainer_state.json"
    try:
        step = json.loads(state_file.read_text())["global_step"]
    except FileNotFoundError:
        raise CheckpointFileError(f"{state_file}: missing (the save was cut short)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointFileError(f"{state_file}: unreadable ({error})") from None
    if step != checkpoint_step(path):
        raise CheckpointFileError(f"{state_file}: global_step {step} does not match the directory name")
    engine = is_deepspeed_checkpoint(path)
    if engine and (problem := deepspeed_problem(path)):
        raise CheckpointFileError(problem)
    weights = sorted(path.glob("*.safetensors"))
    if not weights and not engine:  # DeepSpeed keeps its own shards in global_step*/
        raise CheckpointFileError(f"{path}: no model weights (*.safetensors)")
    for file in weights:
        check_safetensors(file)
    for file in sorted([*path.glob("*.pt"), *path.glob("*.pth"), *path.glob("*.bin")]):
        if not zipfile.is_zipfile(file):  # torch.save writes a zip archive, whose directory is at its end
            raise CheckpointFileError(f"{file}: not a complete torch file (cut short while being written?)")


def checkpoint_to_resume(output_dir: str, required: bool = True) -> str | None:
    """The newest complete checkpoint in `output_dir`; damaged newer ones are skipped, each named in the log."""
    skipped = []
    for path in reversed(checkpoints(output_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointFileError as problem:
            logger.warning("resume: skipping %s: %s", path.name, problem)
            skipped.append(str(problem))
            continue
        return str(path)
    if required:
        damaged = f" (skipped {len(skipped)} damaged, the newest: {skipped[0]})" if skipped else ""
        raise ResumeError(f"--resume: no complete checkpoint-* directory in {output_dir} to resume from{damaged}")
    return None


def staging_dir(output_dir: str | Path, step: int) -> Path:
    """Where checkpoint `step` is written before it is published (not matched by `checkpoint-*`)."""
    return Path(output_dir) / f"{STAGING_PREFIX}checkpoint-{step}"


def publish(staged: Path, final: Path) -> None:
    """Flush every file of `staged` to disk, then rename it to `final` in one step (replacing a damaged one)."""
    fsync_tree(staged)
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)
    fsync_path(final.parent)


def rotate(output_dir: str | Path, limit: int | None, keep: set[Path]) -> None:
    """Delete the oldest checkpoints beyond `limit`, never the newest nor those in `keep` (the checkpoint a run
    resumed from, the best one): transformers' own rotation would delete the checkpoint a resumed run came from."""
    if not limit or limit <= 0:
        return
    found = checkpoints(output_dir)
    protected = {found[-1], *(path for path in found if path.resolve() in {k.resolve() for k in keep})} \
        if found else set()
    excess = len(found) - max(limit, len(protected))
    for path in found:
        if excess <= 0:
            break
        if path not in protected:
            logger.info("deleting %s (save_total_limit %d)", path, limit)
            shutil.rmtree(path, ignore_errors=True)
            excess -= 1


class LossTally(NamedTuple):
    loss_sum: float  # over the steps that trained
    skipped_steps: int = 0  # steps whose update was skipped: they count in global_step, not in the mean loss


def read_loss_tally(checkpoint: str | Path) -> LossTally | None:
    """The whole-run loss tally up to `checkpoint`, if it recorded one."""
    path = Path(checkpoint) / LOSS_TALLY
    if not path.is_file():
        return None
    tally = json.loads(path.read_text())
    return LossTally(float(tally["loss_sum"]), tally.get("skipped_steps", 0))


def write_loss_tally(checkpoint: Path, step: int, tally: LossTally) -> None:
    """Into a staged checkpoint (published whole, so no write of its own needs to be atomic)."""
    content = {"global_step": step, "loss_sum": tally.loss_sum, "skipped_steps": tally.skipped_steps}
    (checkpoint / LOSS_TALLY).write_text(json_text(content) + "\n")
