"""What `--resume` lets a recipe change. A resumed run continues the one its checkpoint belongs to; a recipe that
differs in what the run trains on or how (data, seeds, model, batch shape, optimizer, schedule) would make a run
that neither recipe describes, and transformers would silently keep some old values (the learning rate from the
checkpoint's scheduler) while taking others. So such a difference is refused, each key named, unless the user
accepts it (`--resume_accept_changes`): `run.json` then records the recorded, the new and the used value.

Each checkpoint records the settings it was trained with (`run_settings.json`: the resolved recipe and the number
of processes); a checkpoint from an older version of this code falls back on the output dir's `run.json`.
"""

import json
import logging
from fnmatch import fnmatch
from pathlib import Path

from .checkpoints import ResumeError

logger = logging.getLogger(__name__)

SETTINGS_FILE = "run_settings.json"

# The one list of recipe keys (dotted, shell patterns) a resumed run may change silently: they decide where and how
# often the run writes, logs, evaluates and reports, or how its work is spread over cores and kernels, not what it
# trains. Every other key (data: sources, mixture, seeds, lengths, packing, chat template; the model and its shape;
# LoRA; batch shape: per-device batch, gradient accumulation, launch.num_processes; optimizer and schedule:
# learning rate, scheduler, warmup, weight decay, epochs, max_steps; precision; seeds) changes the training.
ALLOWED_ON_RESUME = (
    "path",  # where the recipe file is: its content is what is compared
    # outputs, logs, trackers, checkpoints, evaluation
    "training.output_dir", "training.overwrite_output_dir", "training.resume_from_checkpoint",
    "training.logging_*", "training.log_*", "training.disable_tqdm", "training.skip_memory_metrics",
    "training.include_num_input_tokens_seen", "training.report_to", "training.run_name", "training.project",
    "training.trackio_*", "training.save_*", "training.enable_jit_checkpoint", "training.push_to_hub",
    "training.hub_*", "training.eval_*", "training.per_device_eval_batch_size", "training.prediction_loss_only",
    "training.include_for_metrics", "training.batch_eval_metrics", "training.metric_for_best_model",
    "training.greater_is_better", "training.load_best_model_at_end", "training.do_train", "training.do_eval",
    "training.do_predict", "training.debug",
    # how the work is spread and computed: the same computation by other processes, kernels or recomputation
    "data.num_proc", "data.prepared_dir", "training.dataset_num_proc", "training.dataloader_num_workers",
    "training.dataloader_pin_memory", "training.dataloader_persistent_workers", "training.dataloader_prefetch_factor",
    "training.dataloader_multiprocessing_context", "training.local_rank", "training.ddp_timeout",
    "model.moe_backend", "model.attn_implementation", "training.activation_checkpointing*",
    "training.gradient_checkpointing*",
    # when a run stops (a non-finite step, a pre-emption's grace): raising the skip limit is how a stopped run goes on
    "guard.*",
)

UNSET = object()  # a key one of the compared settings does not have


def run_settings(recipe) -> dict:
    """What a checkpoint records of the run that wrote it, as JSON would read it back."""
    settings = {**recipe.as_dict(), "launch": {"num_processes": recipe.training.world_size}}
    return json.loads(json.dumps(settings, default=str))


def write_settings(checkpoint: Path, settings: dict) -> None:
    (checkpoint / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n", encoding="utf-8")


def recorded_settings(checkpoint: str | Path) -> dict | None:
    """The settings `checkpoint` was trained with: its own record, else the finished run's `run.json` beside it
    (checkpoints of older versions); None when neither says."""
    checkpoint = Path(checkpoint)
    try:
        return json.loads((checkpoint / SETTINGS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        pass
    except ValueError as error:
        raise ResumeError(f"{checkpoint / SETTINGS_FILE}: not valid JSON ({error})") from None
    run = checkpoint.parent / "run.json"
    try:
        record = json.loads(run.read_text(encoding="utf-8"))
        return {**record["recipe"], **({"launch": record["launch"]} if "launch" in record else {})}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def training_changes(recorded: dict, current: dict) -> dict[str, tuple]:
    """Key -> (recorded, new) for each difference that changes the training (not in `ALLOWED_ON_RESUME`)."""
    return {key: values for key, values in _differences(recorded, current, "")
            if not any(fnmatch(key, pattern) for pattern in ALLOWED_ON_RESUME)}


def _differences(old, new, key: str):
    if isinstance(old, dict) and isinstance(new, dict):
        for name in [*old, *(name for name in new if name not in old)]:
            inner = f"{key}.{name}" if key else name
            if key == "training" and (name not in old or name not in new):
                continue  # a field only one version of transformers/TRL has: nothing to compare
            yield from _differences(old.get(name, UNSET), new.get(name, UNSET), inner)
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for index, (before, after) in enumerate(zip(old, new)):
            yield from _differences(before, after, f"{key}[{index}]")
    elif old != new:
        yield key, (old, new)


def show(value) -> str:
    if value is UNSET:
        return "(unset)"
    return value if isinstance(value, str) else json.dumps(value)


def describe(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{key} {show(old)} -> {show(new)}" for key, (old, new) in changes.items())


def resume_changes(checkpoint: str | Path, settings: dict, accept: bool) -> dict[str, tuple]:
    """The changes resuming from `checkpoint` with `settings` makes; `ResumeError` naming each one unless
    `accept`. A checkpoint that records nothing cannot be compared: said in the log, and resumed."""
    recorded = recorded_settings(checkpoint)
    if recorded is None:
        logger.warning("%s records no run settings (an older version wrote it): the recipe cannot be compared "
                       "with the one it was trained with", checkpoint)
        return {}
    changes = training_changes(recorded, settings)
    if changes and not accept:
        raise ResumeError(f"--resume: {checkpoint} was trained with other settings: {describe(changes)}; resume "
                          "with the settings it recorded, or pass --resume_accept_changes to continue with the new "
                          "ones (run.json records both)")
    return changes


def changes_record(changes: dict[str, tuple], optimizer_in_use: dict) -> dict:
    """What `run.json` says of accepted changes: each key's recorded and new value, and the value the resumed run
    used (read back from the restored optimizer for the keys it holds; the new one for the others)."""
    return {key: {"recorded": None if old is UNSET else old, "new": None if new is UNSET else new,
                  "used": optimizer_in_use.get(key, None if new is UNSET else new)}
            for key, (old, new) in changes.items()}
