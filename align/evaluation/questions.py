"""MT-Bench's questions and judge prompts, from FastChat's files (`question.jsonl`, `judge_prompts.jsonl`) or
the hub, and how each category is answered and judged."""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..data import DataError
from ..data.jsonl import jsonl_rows

# FastChat's llm_judge: the temperature each category is answered with, and the categories judged against a
# reference answer.
TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1,
               "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0}  # fmt: skip
NEEDS_REFERENCE = ("math", "reasoning", "coding")
PUBLISHED_JETMOE_8B_CHAT = 6.681  # the JetMoE report's MT-Bench average (both turns, all categories)


@dataclass
class Question:
    question_id: int
    category: str
    turns: list[str]
    reference: list[str] = field(default_factory=list)  # reference answers, one per turn, where the file has them


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    rows = []
    for number, row in jsonl_rows(path):
        if not isinstance(row, dict):
            raise DataError(str(path), "expected a JSON object", row=number)
        missing = [key for key in required if key not in row]
        if missing:
            raise DataError(str(path), "missing", row=number, field=missing[0])
        rows.append(row)
    return rows


def load_questions(source: str | Path) -> list[Question]:
    """A `question.jsonl` file, or a hub dataset id (its `train` split) with the same fields."""
    path = Path(source)
    if path.is_file():
        rows = _read_jsonl(path, ("question_id", "category", "turns"))
    elif path.exists() or str(source).startswith((".", "/")):
        raise DataError(str(source), "no question file there")
    else:
        from datasets import load_dataset

        rows = list(load_dataset(str(source), split="train"))
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
