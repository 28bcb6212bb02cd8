"""What a stage leaves next to its checkpoint: `metrics.json` (final train/eval metrics) and `run.json` (how the
run was made: the resolved recipe, data counts, package versions, git commit), so any output can be traced back."""

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("jetmoe-align", "torch", "transformers", "trl", "peft", "datasets", "accelerate", "tokenizers",
            "deepspeed", "triton")


def package_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(repo: Path = Path(__file__).resolve().parents[2]) -> dict:
    """The commit the code ran from, and whether the tree had uncommitted changes (None outside a git checkout)."""

    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10)

    try:
        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def run_record(recipe, data, resumed_from: str | None, started: float, settings: dict,
               resume_changes: dict) -> dict:
    """`data`: the stage's `PreparedData` (its counts, and where it was prepared); `settings`: the run's
    (`align.runs.resume_changes.run_settings`); `resume_changes`: the changed settings a resume accepted, each with
    its recorded, new and used value."""
    return {
        "stage": recipe.stage,
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "resumed_from": resumed_from,
        "resume_changes": resume_changes,
        "recipe": recipe.as_dict(),
        "launch": settings["launch"],
        "data": data.report.as_dict(),
        "prepared_data": data.record(),
        "versions": package_versions(),
        "git": git_state(),
    }
