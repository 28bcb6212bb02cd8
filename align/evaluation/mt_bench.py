"""`python -m align eval mt-bench MODEL_DIR`: answers (resumable), then, given `--judge-url`, judgments
(resumable), the score table and the chart, all in `--out` (default `MODEL_DIR/mt_bench`). Questions and judge
prompts come from where they are published (`published`) unless `--questions` names a local question.jsonl."""

import argparse
import json
import os
from dataclasses import fields
from pathlib import Path

from ..config.recipes import RecipeError
from ..data import DataError
from ..inference.generate import add_engine_argument, load_chat_model
from . import published
from .answers import write_answers
from .judge import JudgeClient, judge_requests, run_judging
from .questions import first_of_each_category, load_judge_prompts, load_questions, load_reference_answers
from .scores import score_table, write_scores
from .settings import MTBenchSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a saved chat model (full checkpoint or LoRA adapter dir)")
    parser.add_argument("--questions", default=published.QUESTIONS,
                        help="MT-Bench's question.jsonl (FastChat's llm_judge/data/mt_bench) or a hub dataset id "
                             "(default: %(default)s)")
    parser.add_argument("--judge-prompts", help="judge_prompts.jsonl or its URL (default: beside a question file; "
                        "for questions from the hub, FastChat's published file)")
    parser.add_argument("--reference-answers", help="reference answers for math/reasoning/coding (FastChat's "
                        "reference_answer/gpt-4.jsonl); default: the question file's own `reference` field")
    parser.add_argument("--out", help="output dir (default: MODEL_DIR/mt_bench)")
    parser.add_argument("--model-id", help="the name in the answer file (default: MODEL_DIR's name)")
    parser.add_argument("--max_new_tokens", type=int, default=1024)
    parser.add_argument("--batch_size", type=int, default=40,
                        help="questions answered together (the cache, in GPU memory, grows with it)")
    parser.add_argument("--per_category", type=int, help="only the first N questions of each category (a quick run)")
    parser.add_argument("--judge-url", help="an OpenAI-compatible API base, e.g. https://api.openai.com/v1")
    parser.add_argument("--judge-model", default="gpt-4")
    parser.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="the variable holding the API key")
    parser.add_argument("--judge-workers", type=int, default=8, help="judge requests at once")
    parser.add_argument("--note", default="", help="a line for the score table (e.g. which judge this was)")
    add_engine_argument(parser)


def run(args: argparse.Namespace) -> None:
    try:
        settings = MTBenchSettings(**{field.name: getattr(args, field.name) for field in fields(MTBenchSettings)})
    except ValueError as error:
        raise RecipeError(f"eval mt-bench: {error}") from None
    evaluate(args.model_dir, settings, args.out, args.model_id)


def evaluate(model_dir: str, settings: MTBenchSettings, out: str | None = None, model_id: str | None = None) -> None:
    questions = load_questions(settings.questions)
    if settings.per_category:
        questions = first_of_each_category(questions, settings.per_category)
    model_id = model_id or Path(model_dir).resolve().name
    out = Path(out or Path(model_dir) / "mt_bench")
    # Read before answering: a missing or unreachable file stops the run before the model loads.
    prompts = load_judge_prompts(judge_prompts_file(settings, out)) if settings.judge_url else None
    answer_file = out / "model_answer" / f"{model_id}.jsonl"
    answered = write_answers(load_chat_model(model_dir, settings.engine), questions, answer_file, model_id,
                             settings.max_new_tokens, settings.batch_size)
    print(f"mt-bench: {answered} questions answered now, all in {answer_file}")
    if not settings.judge_url:
        return
    references = load_reference_answers(settings.reference_answers) if settings.reference_answers else {}
    requests = judge_requests(questions, read_answers(answer_file), prompts, references)
    client = JudgeClient(settings.judge_url, settings.judge_model, os.environ.get(settings.judge_key_env))
    judgment_file = out / "model_judgment" / f"{settings.judge_model}_single.jsonl"
    asked = run_judging(client, requests, judgment_file, model_id, workers=settings.judge_workers)
    table = score_table(questions, judgment_file)
    note = settings.note or f"Judge: {settings.judge_model} at {settings.judge_url}."
    paths = write_scores(table, out, model_id, note)
    overall = table["overall"]["average"]
    print(f"mt-bench: {asked} judgments asked now; overall {overall if overall is None else f'{overall:.3f}'} "
          f"({len(table['failed'])} failed, {len(table['missing'])} missing); " + ", ".join(map(str, paths)))


def judge_prompts_file(settings: MTBenchSettings, out: Path) -> Path:
    """`--judge-prompts` (a file, or a URL fetched into `out`); else judge_prompts.jsonl beside a question file, or
    FastChat's published file for questions from the hub."""
    questions = Path(settings.questions)
    source = settings.judge_prompts or (
        str(questions.parent / "judge_prompts.jsonl") if questions.is_file() else published.JUDGE_PROMPTS
    )
    if "://" in source:
        return published.fetch(source, out / "judge_prompts.jsonl", "MT-Bench's judge prompts")
    if not Path(source).is_file():
        raise DataError(source, "no judge prompts file there (pass --judge-prompts)")
    return Path(source)


def read_answers(answer_file: Path) -> dict[int, list[str]]:
    rows = [json.loads(line) for line in answer_file.read_text().splitlines() if line.strip()]
    return {row["question_id"]: row["choices"][0]["turns"] for row in rows}
