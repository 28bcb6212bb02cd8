"""MT-Bench's questions and judge prompts, from FastChat's files (`question.jsonl`, `judge_prompts.jsonl`) or
where they are published (`published`), and how each category is answered and judged."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError
from ..data.jsonl import jsonl_rows
from .published import hub_rows

# FastChat's llm_judge: the temperature each category is answered with, and the categories judged against a
# reference answer.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1,
               "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0}  # fmt: skip
NEEDS_REFERENCE = ("math", "reasoning", "coding")
PUBLISHED_JETMOE_8B_CHAT = 6.681  # the JetMoE report's MT-Bench average (both turns, all categories)
QUESTION_FIELDS = ("question_id", "category", "turns")


@dataclass
class Question:
    question_id: int
    category: str
    turns: list[str]
    reference: list[str] = field(default_factory=list)  # reference answers, one per turn, where the file has them


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    return [_checked(row, required, str(path), number) for number, row in jsonl_rows(path)]


def _checked(row, required: tuple[str, ...], source: str, number: int) -> dict:
    if not isinstance(row, dict):
        raise DataError(source, "expected a JSON object", row=number)
    missing = [key for key in required if key not in row]
    if missing:
        raise DataError(source, "missing", row=number, field=missing[0])
    return row


_H4_NAMES = {"prompt": "turns", "prompt_id": "question_id"}  # HuggingFaceH4/mt_bench_prompts' for FastChat's


def _fastchat_layout(row: dict) -> dict:
    """FastChat's field names for a row of HuggingFaceH4/mt_bench_prompts; rows already in FastChat's layout (e.g. a
    hub copy of question.jsonl) as they are."""
    return row if "turns" in row else {_H4_NAMES.get(key, key): value for key, value in row.items()}


def load_questions(source: str | Path) -> list[Question]:
    """A `question.jsonl` file, or a hub dataset id (its `train` split) in FastChat's or HuggingFaceH4's layout."""
    path = Path(source)
    if path.is_file():
        rows = _read_jsonl(path, QUESTION_FIELDS)
    elif path.exists() or str(source).startswith((".", "/")):
        raise DataError(str(source), "no question file there")
    else:
        rows = [_checked(_fastchat_layout(row), QUESTION_FIELDS, str(source), number)
                for number, row in enumerate(hub_rows(str(source), "MT-Bench's questions"), start=1)]
    questions = []
    for row in rows:
        if row["category"] not in TEMPERATURE:
            raise DataError(str(source), f"question {row['question_id']}: unknown category '{row['category']}'",
                            field="category")
        if len(row["turns"]) != 2:
            raise DataError(str(source), f"question {row['question_id']}: expected 2 turns, got {len(row['turns'])}",
                            field="turns")
        questions.append(Question(row["question_id"], row["category"], list(row["turns"]),
                                  list(row.get("reference") or [])))
    return questions


def first_of_each_category(questions: list[Question], count: int) -> list[Question]:
    seen = Counter()
    kept = []
    for question in questions:
        seen[question.category] += 1
        if seen[question.category] <= count:
            kept.append(question)
    return kept


def load_reference_answers(path: str | Path) -> dict[int, list[str]]:
    """FastChat's reference answer file (`reference_answer/gpt-4.jsonl`): question id -> the two turns."""
    rows = _read_jsonl(Path(path), ("question_id", "choices"))
    return {row["question_id"]: list(row["choices"][0]["turns"]) for row in rows}


def load_judge_prompts(path: str | Path) -> dict[str, dict]:
    """name -> {system_prompt, prompt_template, output_format}; the four single-answer prompts must be there."""
    prompts = {row["name"]: row for row in _read_jsonl(Path(path), ("name", "system_prompt", "prompt_template"))}
    for name in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"):
        if name not in prompts:
            raise DataError(str(path), f"no judge prompt named '{name}'", field="name")
    return prompts
