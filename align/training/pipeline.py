"""SFT, then DPO from the SFT output: the way JetMoE-8B-Chat was made, in one command."""

import json
import logging
from pathlib import Path

from ..config.recipes import Recipe
from .dpo import run_dpo
from .sft import run_sft

logger = logging.getLogger(__name__)


def run_pipeline(sft: Recipe, dpo: Recipe, resume: bool = False, accept_changes: bool = False) -> tuple[Path, Path]:
    """With `resume`, each stage continues from its last checkpoint when it has one (a finished stage then only
    re-saves), so an interrupted pipeline picks up where it stopped; `accept_changes`: `align.runs.resume_changes`."""
    sft_dir = run_sft(sft, resume=resume, require_checkpoint=False, accept_changes=accept_changes)
    dpo_dir = run_dpo(dpo, resume=resume, require_checkpoint=False, accept_changes=accept_changes)
    return sft_dir, dpo_dir


def summary(sft_dir: Path, dpo_dir: Path) -> str:
    """Where the results are, with the headline metrics of each stage and the plots and logs to look at."""
    lines = ["", "Results:"]
    for name, directory, keys in (("SFT", sft_dir, ("train_loss", "eval_loss")),
                                  ("DPO", dpo_dir, ("train_loss", "eval_rewards/accuracies", "eval_rewards/margins"))):
        metrics = json.loads((directory / "metrics.json").read_text())
        flat = {**metrics.get("train", {}), **metrics.get("eval", {})}
        shown = ", ".join(f"{key} {float(flat[key]):.4g}" for key in keys if key in flat)  # "NaN" is NaN
        lines.append(f"  {name}: {directory}/  ({shown}; metrics.json, run.json)")
        plots = ", ".join(sorted(path.name for path in directory.glob("*.png")))
        lines.append(f"       plots: {plots or 'none'}; logs: train.log, trainer_state.json")
    lines.append(f"  Chat model (loads with transformers' JetMoeForCausalLM + AutoTokenizer): {dpo_dir}/")
    lines.append(f"  Try it: python -m align generate {dpo_dir} \"What is 2 plus 3?\"  (or --chat)")
    if any(sft_dir.parent.glob("*/runs")):
        lines.append(f"  TensorBoard: tensorboard --logdir {sft_dir.parent}")
    return "\n".join(lines)
