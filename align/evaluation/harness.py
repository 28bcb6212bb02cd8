"""`python -m align eval harness MODEL_DIR [MODEL_DIR ...] --tasks ...`: EleutherAI's lm-evaluation-harness on
saved models (full checkpoints, LoRA adapter dirs merged into their base, hub ids), with lm-eval's own tasks,
metrics and flag names. Each (model, task) pair is one lm-eval run whose results JSON (lm-eval's format) is kept in
`--output_path/MODEL/TASK.json`; a rerun skips the pairs already there with the same settings. Then one table
(`harness.md`, `harness.json`, `harness.png`): a column per model, JetMoE-8B's published numbers beside them.

Task data comes from where lm-eval's tasks say (mostly the hub), fetched before any model loads; a task that cannot
be fetched, or an unknown task name, ends in one line."""

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from ..config.recipes import RecipeError, did_you_mean
from ..data import DataError
from .harness_presets import MODEL_CARD, PRESETS, expand
from .harness_table import harness_table, model_key, result_file, write_table
from .settings import HarnessSettings

INSTALL = "pip install -e '.[harness]' (make harness installs it)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR",
                        help="saved models (full checkpoint or LoRA adapter dir) or hub ids: a table column each")
    parser.add_argument("--tasks", required=True,
                        help=f"comma-separated lm-eval tasks or groups; presets with the model card's shots and "
                             f"metric: {', '.join(PRESETS)}; {MODEL_CARD}: all six")
    parser.add_argument("--num_fewshot", type=int, help="shots for every task (default: a preset's, else the task's)")
    parser.add_argument("--include_path", help="a directory of extra task YAMLs (e.g. tasks on local files)")
    parser.add_argument("--output_path", default="runs/harness",
                        help="results: MODEL/TASK.json (lm-eval's), harness.md/json/png (default: %(default)s)")
    parser.add_argument("--limit", type=float, help="only the first N documents per task (below 1: a fraction)")
    parser.add_argument("--batch_size", default="32", help="requests per batch, or auto (default: %(default)s)")
    parser.add_argument("--max_batch_tokens", type=int, default=32768,
                        help="engine jetmoe: tokens in one packed forward (default: %(default)s)")
    parser.add_argument("--device", help="default: cuda where there is one, else cpu")
    parser.add_argument("--log_samples", action="store_true", help="also write each task's per-document samples")
    parser.add_argument("--engine", choices=("jetmoe", "transformers"), default="jetmoe",
                        help="jetmoe (default): our model, packed scoring, fast decoding; transformers: lm-eval's own "
                             "`hf` model on transformers' JetMoeForCausalLM")


def run(args: argparse.Namespace) -> None:
    try:
        settings = HarnessSettings(**{field.name: getattr(args, field.name) for field in fields(HarnessSettings)})
    except ValueError as error:
        raise RecipeError(f"eval harness: {error}") from None
    evaluate_models(args.model_dirs, settings, args.output_path)


def evaluate_models(model_dirs: list[str], settings: HarnessSettings, output_path: str | Path,
                    task_manager=None, progress=print) -> list[Path]:  # fmt: skip
    """Every task on every model not yet done, then the table; returns the table's files."""
    lm_eval = _lm_eval()
    out = Path(output_path)
    tasks = expand(settings.tasks)
    _check_models(model_dirs)
    manager = task_manager or lm_eval.tasks.TaskManager(include_path=settings.include_path)
    _check_task_names(tasks, manager)
    todo = {model: [task for task in tasks if not _finished(out, model, task, settings)] for model in model_dirs}
    _fetch({task for pending in todo.values() for task in pending}, manager)
    for model_dir, pending in todo.items():
        if not pending:
            progress(f"harness: {model_dir}: all {len(tasks)} tasks already evaluated ({out / model_key(model_dir)})")
            continue
        with loaded_model(model_dir, settings) as lm:
            for number, task in enumerate(pending, 1):
                progress(f"harness: {model_dir}: {task} ({number}/{len(pending)})")
                results = lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=shots(task, settings),
                                                  limit=settings.limit, task_manager=manager,
                                                  log_samples=settings.log_samples)  # fmt: skip
                write_results(out, model_dir, task, results, settings)
    paths = write_table(harness_table(out, model_dirs, tasks), out)
    progress("harness: " + ", ".join(map(str, paths)))
    return paths


def shots(task: str, settings: HarnessSettings) -> int | None:
    if settings.num_fewshot is not None:
        return settings.num_fewshot
    return PRESETS[task].num_fewshot if task in PRESETS else None


def _run_settings(model_dir: str, task: str, settings: HarnessSettings) -> dict:
    """What makes a result: a pair run with other settings is run again."""
    return {"model_dir": str(model_dir), "engine": settings.engine, "num_fewshot": shots(task, settings),
            "limit": settings.limit}


def _finished(out: Path, model_dir: str, task: str, settings: HarnessSettings) -> bool:
    path = result_file(out, model_dir, task)
    wanted = _run_settings(model_dir, task, settings)
    try:
        recorded = json.loads(path.read_text())["align"]
        return {key: recorded.get(key) for key in wanted} == wanted
    except (OSError, ValueError, KeyError, TypeError):  # missing, or cut short: evaluated again
        return False


def write_results(out: Path, model_dir: str, task: str, results: dict, settings: HarnessSettings) -> Path:
    """lm-eval's results dict as it writes it (its JSON encoder), with the settings of this run under "align";
    samples, when logged, beside it as JSON lines. Written under a temporary name first: a killed run leaves no
    half file that a rerun would take as done."""
    from lm_eval.utils import handle_non_serializable

    path = result_file(out, model_dir, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = results.pop("samples", None)
    if samples:
        with (path.parent / f"samples_{task}.jsonl").open("w", encoding="utf-8") as file:
            for name, rows in samples.items():
                for row in rows:
                    file.write(json.dumps({"task": name, **row}, default=handle_non_serializable) + "\n")
    record = {**results, "align": _run_settings(model_dir, task, settings) | {"batch_size": settings.batch_size}}
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2, default=handle_non_serializable, ensure_ascii=False) + "\n")
    partial.replace(path)
    return path


@contextmanager
def loaded_model(model_dir: str, settings: HarnessSettings) -> Iterator:
    """The lm-eval model of `settings.engine` on the checkpoint (an adapter dir merged into its base first)."""
    from ..inference.export import full_checkpoint

    with full_checkpoint(model_dir) as checkpoint:  # both engines load everything while it exists
        if settings.engine == "jetmoe":
            from .harness_lm import JetMoEAlignLM

            lm = JetMoEAlignLM(checkpoint, batch_size=settings.batch_size, device=settings.device,
                               max_batch_tokens=settings.max_batch_tokens)  # fmt: skip
        else:
            import torch
            from lm_eval.models.huggingface import HFLM

            device = settings.device or ("cuda" if torch.cuda.is_available() else "cpu")
            lm = HFLM(pretrained=checkpoint, batch_size=settings.batch_size, device=device, dtype="auto")
    yield lm


def _lm_eval():
    try:
        import lm_eval
        import lm_eval.tasks
    except ImportError:
        raise RecipeError(f"eval harness needs lm-evaluation-harness: {INSTALL}") from None
    return lm_eval


def _check_models(model_dirs: list[str]) -> None:
    from ..runs.checkpoints import CheckpointFileError
    from ..runs.preflight import path_problems

    for model_dir in model_dirs:
        problems = path_problems("eval harness", model_dir, set(), ("config.json", "adapter_config.json"))
        if problems:
            raise CheckpointFileError(problems[0])


def _check_task_names(tasks: list[str], manager) -> None:
    for task in tasks:
        if task not in manager.all_tasks:
            raise RecipeError(f"eval harness: unknown task '{task}'{did_you_mean(task, manager.all_tasks)} (lm-eval's "
                              f"task and group names, {MODEL_CARD}, or tasks of --include_path)")


def _fetch(tasks: set[str], manager) -> None:
    """Build the tasks (lm-eval downloads their data, into the datasets cache) before any model loads."""
    for task in sorted(tasks):
        try:
            manager.load([task])
        except OSError as error:  # the hub client's and datasets' failures to reach or find data are all OSErrors
            raise DataError(task, f"could not fetch the task's data ({_first_line(error)}); lm-eval fetches it from "
                                  f"where the task says (mostly the Hugging Face hub): run once with network access "
                                  f"(it is cached), or define the task on local files (--include_path)") from None
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(task, f"lm-eval could not build the task: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
