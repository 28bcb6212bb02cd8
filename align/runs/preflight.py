"""The pre-flight check: everything about a run that can be checked before any model or data is loaded, checked
at once, so a bad value costs seconds instead of a data load or a whole training run.

Values in range (learning rate, batch sizes, lengths, steps, beta, LoRA alpha and dropout; LoRA's rank is
checked as the recipe is read), dtypes and attention implementations known, model and tokenizer paths that exist
locally (with the files a saved model has, valid JSON, intact safetensors headers) or look like hub ids, data
sources that exist with the splits they name (each once), the chat template (a known name, or Jinja that renders
a sample conversation), output directories that are writable, not in use by another run and not holding an
earlier run (unless resuming or overwriting), and on `--resume` a recipe that trains as the checkpoint was
trained (`align.runs.resume_changes`). `python -m align check RECIPE` runs it alone; `sft`, `dpo` and `pipeline` run
it first. Every problem is reported in one line.
"""

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

from ..config.recipes import Recipe, RecipeError
from ..data import DataError
from ..data.sources import HUB_ID, check_local_splits
from ..model.chat_template import chat_template_problem
from .checkpoints import CheckpointFileError, ResumeError, check_safetensors, checkpoint_to_resume
from .resume_changes import resume_changes, run_settings
from .run_lock import OutputDirError, earlier_run_problem, output_dir_lock

DTYPES = ("auto", "float32", "float16", "bfloat16", "float64")
# Attention implementations JetMoE runs: transformers' registered ones (flash, flex, sdpa) and its eager path.
BUILTIN_ATTENTION = ("eager", "sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


class PreflightError(RecipeError):
    """A run cannot start; the message lists every problem found, each naming its file and key."""


def preflight(recipes: list[Recipe], resume: bool = False, overwrite: bool = False, check_lock: bool = True,
              accept_changes: bool = False) -> None:
    """Raise `PreflightError` listing every problem of these recipes (the stages of one command, in order).
    `check_lock` off: leave the output dirs' locks to the main process (the other processes of a launch would
    find its lock taken). `accept_changes`: `--resume` may change what the checkpoints were trained with."""
    problems = []
    if resume and overwrite:
        problems.append("command line: --resume continues the run in the output dir, --overwrite_output_dir "
                        "deletes it: choose one")
    if accept_changes and not resume:
        problems.append("command line: --resume_accept_changes goes with --resume")
    count = len(problems)
    produced = set()  # output directories of earlier stages: a later stage may start from them
    for recipe in recipes:
        in_recipe = recipe_problems(recipe, produced)
        if in_recipe:
            problems.append(f"{recipe.path}: " + "; ".join(in_recipe))
        in_output = output_dir_problems(recipe.training.output_dir, resume, overwrite, check_lock)
        if resume and not in_output:
            in_output = resume_problems(recipe, accept_changes)
        problems += in_output
        count += len(in_recipe) + len(in_output)
        produced.add(os.path.normpath(recipe.training.output_dir))
    if problems:
        raise PreflightError((f"{count} problems: " if count > 1 else "") + "; ".join(problems))


def recipe_problems(recipe: Recipe, produced: set[str] = frozenset()) -> list[str]:
    template = chat_template_problem(recipe.tokenizer.chat_template)
    return [*training_problems(recipe.training), *model_problems(recipe, produced), *lora_problems(recipe.lora),
            *([f"tokenizer.chat_template: {template}"] if template else []), *data_problems(recipe)]


def training_problems(args) -> list[str]:
    problems = []

    def require(name: str, ok, wanted: str) -> None:
        value = getattr(args, name, None)
        if value is not None and not ok(value):
            problems.append(f"training.{name}: {value!r} must be {wanted}")

    require("learning_rate", lambda v: math.isfinite(v) and v > 0, "a positive number")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        require(name, lambda v: v >= 1, "at least 1")
    require("max_steps", lambda v: v == -1 or v > 0, "positive (or -1: use num_train_epochs)")
    require("num_train_epochs", lambda v: v > 0, "positive")
    require("warmup_steps", lambda v: v >= 0, "at least 0")
    require("max_length", lambda v: v >= 1, "at least 1 (or null: no truncation)")
    require("max_prompt_length", lambda v: v >= 1, "at least 1 (or null)")
    require("max_completion_length", lambda v: v >= 1, "at least 1 (or null)")
    require("beta", lambda v: math.isfinite(v) and v > 0, "a positive number")
    for kind in ("save", "eval"):
        strategy = str(getattr(getattr(args, f"{kind}_strategy"), "value", getattr(args, f"{kind}_strategy")))
        default = next(f.default for f in dataclasses.fields(args) if f.name == f"{kind}_steps")
        steps = getattr(args, f"{kind}_steps")
        if strategy != "steps" and steps != default:
            problems.append(f"training.{kind}_steps: {steps:g} has no effect while {kind}_strategy is '{strategy}' "
                            f"(add --{kind}_strategy steps)")
    return problems


def model_problems(recipe: Recipe, produced: set[str]) -> list[str]:
    model, problems = recipe.model, []
    if model.dtype not in DTYPES:
        problems.append(f"model.dtype: unknown dtype {model.dtype!r} (one of {', '.join(DTYPES)})")
    if model.attn_implementation is not None and model.attn_implementation not in BUILTIN_ATTENTION \
            and "/" not in model.attn_implementation:  # "org/kernel": a hub kernel, resolved by transformers
        problems.append(f"model.attn_implementation: unknown {model.attn_implementation!r} "
                        f"(one of {', '.join(BUILTIN_ATTENTION)})")
    if model.name_or_path:
        problems += path_problems("model.name_or_path", model.name_or_path, produced,
                                  ("config.json", "adapter_config.json"))
    if recipe.tokenizer.name_or_path:
        problems += path_problems("tokenizer.name_or_path", recipe.tokenizer.name_or_path, produced,
                                  ("tokenizer_config.json", "tokenizer.json"))
    return problems


def path_problems(key: str, name_or_path: str, produced: set[str], markers: tuple[str, ...]) -> list[str]:
    """A local directory must hold one of `markers` and intact safetensors files; a name that is not on disk must
    look like a hub id (`org/name`, `name`) whose first part is not a local directory (`runs/sftt` is a typo in a
    local path, not a repository)."""
    path = Path(name_or_path)
    if os.path.normpath(name_or_path) in produced:
        return []
    if not path.exists():
        if HUB_ID.match(name_or_path) and not Path(path.parts[0]).is_dir():
            return []
        return [f"{key}: {name_or_path}: no such directory (and not a hub id)"]
    if not path.is_dir():
        return [f"{key}: {name_or_path}: not a directory"]
    if not any((path / marker).is_file() for marker in markers):
        return [f"{key}: {name_or_path}: no {' or '.join(markers)} (not a saved model directory)"]
    problems = []
    for marker in markers:
        if marker.endswith(".json") and (path / marker).is_file():
            try:
                json.loads((path / marker).read_text(encoding="utf-8"))
            except (ValueError, OSError) as error:
                problems.append(f"{key}: {path / marker}: not valid JSON ({error})")
    for file in sorted(path.glob("*.safetensors")):
        try:
            check_safetensors(file)
        except CheckpointFileError as error:
            problems.append(f"{key}: {error}")
    return problems


def lora_problems(lora) -> list[str]:
    if lora is None:
        return []
    problems = []  # lora.r is checked as the recipe is read
    if not lora.alpha > 0:
        problems.append(f"lora.alpha: {lora.alpha} must be positive")
    if not 0 <= lora.dropout < 1:
        problems.append(f"lora.dropout: {lora.dropout} must be in [0, 1)")
    return problems


def data_problems(recipe: Recipe) -> list[str]:
    problems = []
    for index, source in enumerate(recipe.data.sources):
        try:
            check_local_splits(source)
        except DataError as error:
            problems.append(f"data.sources[{index}]: {error}")
    return problems


def output_dir_problems(output_dir: str, resume: bool, overwrite: bool, check_lock: bool = True) -> list[str]:
    """Writable, not locked by a live run, and (unless resuming or overwriting) not holding an earlier run."""
    directory = Path(output_dir)
    existing = next((parent for parent in (directory, *directory.parents) if parent.exists()), Path("."))
    if not existing.is_dir():
        return [f"{output_dir}: cannot be created ({existing} is not a directory)"]
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        return [f"{output_dir}: not writable ({error.strerror or error})"]
    if not directory.is_dir():
        return []
    try:
        if check_lock:
            with output_dir_lock(directory):
                pass
    except OutputDirError as error:
        return [str(error)]
    problem = None if resume or overwrite else earlier_run_problem(output_dir)
    return [problem] if problem else []


def resume_problems(recipe: Recipe, accept_changes: bool) -> list[str]:
    """A resume whose recipe changes what its checkpoint was trained with, unless accepted."""
    checkpoint = checkpoint_to_resume(recipe.training.output_dir, required=False)
    try:
        if checkpoint:
            resume_changes(checkpoint, run_settings(recipe), accept_changes)
    except ResumeError as error:
        return [str(error)]
    return []
