"""MT-Bench answers: each question's two turns (the second sees the first answer), sampled as the benchmark
prescribes per category (a batch mixes categories, each row at its own temperature), written as FastChat's answer
file (one JSON line per question: `question_id`, `answer_id`, `model_id`, `choices[0].turns`, `tstamp`), so its
judge scripts read it unchanged. Questions already in the file are not answered again."""

import json
import time
import uuid
from pathlib import Path

from ..inference.generate import ChatModel, Sampling
from .questions import TEMPERATURE, Question


def answered_ids(answer_file: Path) -> set[int]:
    if not answer_file.is_file():
        return set()
    return {json.loads(line)["question_id"] for line in answer_file.read_text().splitlines() if line.strip()}


def write_answers(chat: ChatModel, questions: list[Question], answer_file: Path, model_id: str,
                  max_new_tokens: int, batch_size: int, progress=print) -> int:
    """Answers the questions not yet in `answer_file`, appending to it; returns how many were answered."""
    done = answered_ids(answer_file)
    todo = sorted((q for q in questions if q.question_id not in done), key=lambda q: TEMPERATURE[q.category])
    answer_file.parent.mkdir(parents=True, exist_ok=True)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        with answer_file.open("a", encoding="utf-8") as out:
            for question, turns in zip(batch, answer_both_turns(chat, batch, sampling)):
                out.write(json.dumps(answer_row(question, turns, model_id)) + "\n")
        progress(f"mt-bench answers: {len(done) + start + len(batch)}/{len(questions)} questions")
    return len(todo)


def answer_both_turns(chat: ChatModel, batch: list[Question], sampling: Sampling) -> list[list[str]]:
    temperatures = [TEMPERATURE[q.category] for q in batch]
    first = chat.answer([[{"role": "user", "content": q.turns[0]}] for q in batch], sampling, temperatures)
    second = chat.answer([[{"role": "user", "content": q.turns[0]}, {"role": "assistant", "content": answer},
                           {"role": "user", "content": q.turns[1]}] for q, answer in zip(batch, first)], sampling,
                         temperatures)
    return [[one.strip(), two.strip()] for one, two in zip(first, second)]


def answer_row(question: Question, turns: list[str], model_id: str) -> dict:
    return {"question_id": question.question_id, "answer_id": uuid.uuid4().hex, "model_id": model_id,
            "choices": [{"index": 0, "turns": turns}], "tstamp": time.time()}
