"""`python -m align COMMAND ...` (also installed as `jetmoe-align`).

    sft RECIPE.yaml [--key value ...] [--resume]        one stage (TRL field names: --output_dir X --max_steps 3;
    dpo RECIPE.yaml [--key value ...] [--resume]          other sections: --model.dtype float32; sft --help-fields
                                                          lists them all)
    pipeline PIPELINE.yaml [--key value ...] [--resume] SFT, then DPO from the SFT output
    check RECIPE.yaml [--key value ...] [--resume]      the pre-flight check alone (stage or pipeline recipe)
    prepare RECIPE.yaml [--key value ...]               prepare a recipe's data ahead of training (read, check,
                                                          tokenise, pack: kept on disk, reused by the stages)
    init-tiny OUT_DIR [--recipe R]                      save a recipe's random-init model + tokenizer as a base
    build-tokenizer OUT_DIR [--samples DIR]             train the tiny recipes' BPE tokenizer on sample data
    generate MODEL_DIR QUESTION | --chat | --prompts IN.jsonl --output OUT.jsonl
                                                        answer with a saved chat model (stock transformers);
                                                        sampling: --temperature, --top_p, --max_new_tokens
    export ADAPTER_DIR OUT_DIR [--overwrite]            merge a LoRA adapter into its base: a full checkpoint
    eval mt-bench MODEL_DIR [--questions Q.jsonl] [--judge-url URL]
                                                        MT-Bench answers; with a judge, the score table and chart
    eval harness MODEL_DIR [MODEL_DIR ...] --tasks model_card
                                                        lm-evaluation-harness tasks (lm-eval's flags), one table
                                                          with a column per model and the model card's numbers

Mistakes in recipes, data or arguments end with one line naming the file, key or row, and exit status 2; so does
a full disk (the line names the path). A NaN or infinite loss or gradient stops training with exit status 3,
SIGTERM with 143 after saving a checkpoint (docs/pipeline.md, "What survives what").
`--overwrite_output_dir` lets sft/dpo/pipeline replace an earlier run in the output dir (else refused);
`--resume_accept_changes` lets `--resume` continue with a recipe that changes what the checkpoint was trained with.
"""

import argparse
import logging
import sys
from pathlib import Path

from accelerate import PartialState
from jetmoe_model import JetMoECheckpointError, JetMoEInputError

from ..config.recipes import RecipeError, load_pipeline, load_pipeline_eval, load_recipe, parse_overrides, read_yaml
from ..data import DataError
from ..evaluation import harness, mt_bench
from ..inference.export import ExportError
from ..inference.generate import __doc__ as generate_doc
from ..inference.generate import add_generate_arguments, run_generate
from ..runs.checkpoints import CheckpointFileError, ResumeError
from ..runs.disk_full import disk_full_line
from ..runs.preemption import Preempted
from ..runs.preflight import preflight
from ..runs.run_lock import OutputDirError, clear_earlier_run
from ..training.nonfinite import NonFiniteError
from .help_text import add_accept_changes_argument, add_stage_command

USER_ERRORS = (RecipeError, DataError, ResumeError, ExportError, CheckpointFileError, OutputDirError,
               JetMoECheckpointError, JetMoEInputError, OSError)
STOPPED = (NonFiniteError, Preempted)  # training stopped on purpose: each says why, with its own exit status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m align", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("sft", "dpo", "pipeline"):
        command = add_stage_command(commands, name)
        command.add_argument("--overwrite_output_dir", action="store_true",
                             help="replace an earlier run (its checkpoints and records) in the output dir")
    check = commands.add_parser("check", help="check a stage or pipeline recipe without loading model or data")
    check.add_argument("recipe")
    check.add_argument("--resume", action="store_true", help="check it for a resumed run")
    add_accept_changes_argument(check)
    check.add_argument("--overwrite_output_dir", action="store_true", help="check it for a run that replaces one")
    prepare = commands.add_parser("prepare", help="prepare a stage or pipeline recipe's data ahead of training")
    prepare.add_argument("recipe")
    init = commands.add_parser("init-tiny", help="save the random-init base model and tokenizer of a recipe")
    init.add_argument("out_dir")
    init.add_argument("--recipe", default="recipes/tiny/sft.yaml")
    tokenizer = commands.add_parser("build-tokenizer", help="train the tiny byte-level BPE tokenizer")
    tokenizer.add_argument("out_dir")
    tokenizer.add_argument("--samples", default="data/samples")
    tokenizer.add_argument("--vocab_size", type=int, default=1024)
    evaluate = commands.add_parser("eval", help="evaluate a saved chat model on a benchmark")
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True)
    mt_bench.add_arguments(benchmarks.add_parser("mt-bench", help="MT-Bench answers, judging, score table, chart",
                                                 description=mt_bench.__doc__))
    harness.add_arguments(benchmarks.add_parser("harness", help="lm-evaluation-harness tasks on one or more models, "
                                                "one table", description=harness.__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    generate = commands.add_parser("generate", description=generate_doc, help="answer with a saved chat model: a "
                                   "question, a chat (--chat) or a file of prompts (--prompts)",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generate_arguments(generate)
    export = commands.add_parser("export", help="merge a LoRA adapter into its base, with the tokenizer")
    export.add_argument("adapter_dir")
    export.add_argument("out_dir")
    export.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty OUT_DIR (never the adapter or its base)")
    return parser


def _run(args, overrides: dict) -> None:
    if args.command in ("sft", "dpo"):
        from ..training.dpo import run_dpo
        from ..training.sft import run_sft

        run = {"sft": run_sft, "dpo": run_dpo}[args.command]
        recipe = load_recipe(args.recipe, args.command, overrides)
        _log_on_main_process_only()
        _prepare_output_dirs([recipe], args)
        output_dir = run(recipe, resume=args.resume, accept_changes=args.resume_accept_changes)
        _say(f"\n{args.command.upper()} results: {output_dir}/ (checkpoint, tokenizer, metrics.json, run.json; "
             f"trainer_state.json, train.log, plots: {', '.join(sorted(p.name for p in output_dir.glob('*.png')))})")
    elif args.command == "pipeline":
        from ..training.pipeline import run_pipeline, summary

        recipes = load_pipeline(args.recipe, overrides)
        evaluation = load_pipeline_eval(args.recipe)
        _log_on_main_process_only()
        _prepare_output_dirs(recipes, args)
        sft_dir, dpo_dir = run_pipeline(*recipes, resume=args.resume, accept_changes=args.resume_accept_changes)
        _say(summary(sft_dir, dpo_dir))
        if evaluation is not None and PartialState().is_main_process:
            _evaluate_pipeline(recipes[0], sft_dir, dpo_dir, evaluation)
    elif args.command == "check":
        recipes = _load_any(args.recipe, overrides)
        preflight(recipes, resume=args.resume, overwrite=args.overwrite_output_dir,
                  accept_changes=args.resume_accept_changes)
        _say(f"{args.recipe}: ok (" + ", ".join(f"{r.stage} -> {r.training.output_dir}" for r in recipes) + ")")
    elif args.command == "prepare":
        from ..model.tokenizer import load_tokenizer
        from ..training.stage import prepare_stage_data

        recipes = _load_any(args.recipe, overrides)
        for recipe in recipes:
            tokenizer = load_tokenizer(_tokenizer_before_training(recipe, recipes), recipe.tokenizer.chat_template)
            data = prepare_stage_data(recipe, tokenizer)
            _say(f"{recipe.stage}: {data.path} ({'already prepared' if data.reused else 'prepared'}: "
                 f"{len(data.train)} train / {len(data.test)} test rows as the trainer takes them; "
                 f"{data.report.train_rows} / {data.report.test_rows} examples)")
    elif args.command == "init-tiny":
        from ..model.model_loading import build_model
        from ..model.tokenizer import load_tokenizer

        recipe = load_recipe(args.recipe, "sft", overrides)
        tokenizer = load_tokenizer(recipe.tokenizer_name_or_path, recipe.tokenizer.chat_template)
        build_model(recipe.model, tokenizer, seed=recipe.training.seed).save_pretrained(args.out_dir)
        tokenizer.save_pretrained(args.out_dir)
        _say(f"base model and tokenizer: {args.out_dir}/")
    elif args.command == "build-tokenizer":
        from ..model.tokenizer import build_tokenizer, corpus_from_files

        samples = Path(args.samples)
        if not samples.is_dir():
            raise RecipeError(f"{samples}: no such directory of sample data")
        build_tokenizer(corpus_from_files(samples.rglob("*.json*")), args.vocab_size).save_pretrained(args.out_dir)
        _say(f"tokenizer: {args.out_dir}/")
    elif args.command == "generate":
        run_generate(args)
    elif args.command == "eval":
        {"mt-bench": mt_bench, "harness": harness}[args.benchmark].run(args)
    elif args.command == "export":
        from ..inference.export import export_merged

        _say(f"merged model and tokenizer: {export_merged(args.adapter_dir, args.out_dir, args.overwrite)}/")


def _evaluate_pipeline(sft_recipe, sft_dir: Path, dpo_dir: Path, evaluation) -> None:
    """MT-Bench on the DPO output; harness tasks on base -> SFT -> DPO, one table in `{output_dir}/harness`."""
    if evaluation.mt_bench is not None:
        mt_bench.evaluate(str(dpo_dir), evaluation.mt_bench)
    if evaluation.harness is not None:
        model = sft_recipe.model
        base = [model.name_or_path] if model.init == "pretrained" and model.name_or_path else []
        harness.evaluate_models([*base, str(sft_dir), str(dpo_dir)], evaluation.harness, sft_dir.parent / "harness")


def _load_any(path: str, overrides: dict) -> list:
    """A pipeline recipe (it names `sft:` and `dpo:` recipes) or a stage recipe (DPO when its data is preference
    pairs)."""
    sections = read_yaml(path)
    if "sft" in sections and "dpo" in sections:
        return list(load_pipeline(path, overrides))
    stage = "dpo" if (sections.get("data") or {}).get("kind") == "preference" else "sft"
    return [load_recipe(path, stage, overrides)]


def _tokenizer_before_training(recipe, recipes: list) -> str:
    """A pipeline's DPO stage takes its tokenizer from the SFT output, which the SFT stage saves as it loaded it:
    before SFT has run, that tokenizer is the SFT recipe's."""
    path = recipe.tokenizer_name_or_path
    for earlier in recipes:
        if earlier is not recipe and path == earlier.training.output_dir and not Path(path).exists():
            return earlier.tokenizer_name_or_path
    return path


def _prepare_output_dirs(recipes: list, args) -> None:
    """The pre-flight check of every stage before any loading; then `--overwrite_output_dir` clears earlier runs."""
    preflight(recipes, resume=args.resume, overwrite=args.overwrite_output_dir, check_lock=_is_main_process(),
              accept_changes=args.resume_accept_changes)
    if args.overwrite_output_dir and _is_main_process():
        for recipe in recipes:
            clear_earlier_run(recipe.training.output_dir)


def _is_main_process() -> bool:
    """`accelerate launch` runs the command in every process; only the main one speaks to the user. (Loading a
    recipe sets up the launch's processes: its training arguments do.)"""
    return PartialState().is_main_process


def _say(text: str) -> None:
    if _is_main_process():
        print(text)


def _log_on_main_process_only() -> None:
    """Our progress lines (the data report, the stages') once per launch; transformers does so for its own logs."""
    logging.getLogger("align").setLevel(logging.NOTSET if _is_main_process() else logging.WARNING)


def _end_progress_bars() -> None:
    """Close the progress bars an error interrupted (the trainer's), so that the error line starts a line of its
    own instead of following the bar on a terminal."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if extra and args.command not in ("sft", "dpo", "pipeline", "init-tiny", "check", "prepare"):
            raise RecipeError(f"command line: unexpected arguments {' '.join(extra)}")
        _run(args, parse_overrides(extra))
    except STOPPED as stop:
        _end_progress_bars()
        print(f"{'stopped' if isinstance(stop, Preempted) else 'error'}: {stop}", file=sys.stderr)
        return stop.EXIT_STATUS
    except Exception as error:
        full_disk = disk_full_line(error)  # anywhere: data preparation and libraries' own files included
        if full_disk is None and not isinstance(error, USER_ERRORS):
            raise
        _end_progress_bars()
        print(f"error: {full_disk or str(error).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
