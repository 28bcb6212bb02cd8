"""Single-answer grading of MT-Bench answers by a judge model behind any OpenAI-compatible chat-completions
endpoint, with the benchmark's own judge prompts: `single-v1` (turn 1) and `single-v1-multi-turn` (turn 2), their
`-math-` versions with reference answers for math, reasoning and coding. Requests run concurrently, with a
time-out and retries; each judgment is appended to the judgments file as it comes, so a rerun asks only for what
is missing (a failed or unparseable judgment is asked again). Nothing is dropped: failures are kept, counted and
listed by `scores`."""

import json
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .questions import NEEDS_REFERENCE, Question

RATING = (re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]"), re.compile(r"\[(\d+(?:\.\d+)?)\]"))  # FastChat's, then its fallback


@dataclass
class JudgeClient:
    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 3

    def complete(self, system: str, user: str) -> str:
        """The judge's reply; raises the last error once `retries` more attempts failed."""
        body = json.dumps({"model": self.model, "temperature": 0, "max_tokens": 2048, "messages": [
            {"role": "system", "content": system}, {"role": "user", "content": user}]}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url.rstrip("/") + "/chat/completions", data=body, headers=headers)
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())["choices"][0]["message"]["content"]
            except (urllib.error.URLError, TimeoutError, ConnectionError, KeyError, json.JSONDecodeError):
                if attempt == self.retries:
                    raise
                time.sleep(min(2**attempt, 30) * 0.5)
        raise AssertionError("unreachable")


def parse_rating(judgment: str) -> float | None:
    for pattern in RATING:
        match = pattern.search(judgment)
        if match:
            return float(match.group(1))
    return None


@dataclass
class JudgeRequest:
    question_id: int
    category: str
    turn: int  # 1 or 2
    prompt_name: str
    system: str
    user: str


def judge_requests(questions: list[Question], answers: dict[int, list[str]], prompts: dict[str, dict],
                   references: dict[int, list[str]]) -> list[JudgeRequest]:
    """Both turns of every answered question. Reference answers: `references` (e.g. GPT-4's, as FastChat uses),
    else the question file's own `reference` field; a reference category without either is judged with the
    general prompt (each judgment records its prompt name, under `judge`)."""
    requests = []
    for question in questions:
        if question.question_id not in answers:
            continue
        answer = answers[question.question_id]
        reference = references.get(question.question_id) or question.reference
        math = question.category in NEEDS_REFERENCE and len(reference) == 2
        fields = {"question": question.turns[0], "answer": answer[0], "question_1": question.turns[0],
                  "answer_1": answer[0], "question_2": question.turns[1], "answer_2": answer[1]}
        if math:
            fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
        for turn, name in ((1, "single-math-v1" if math else "single-v1"),
                           (2, "single-math-v1-multi-turn" if math else "single-v1-multi-turn")):
            prompt = prompts[name]
            requests.append(JudgeRequest(question.question_id, question.category, turn, name,
                                         prompt["system_prompt"], prompt["prompt_template"].format(**fields)))
    return requests


def judged(judgment_file: Path) -> dict[tuple[int, int], dict]:
    """The latest judgment of each (question, turn) in the file."""
    if not judgment_file.is_file():
        return {}
    rows = [json.loads(line) for line in judgment_file.read_text().splitlines() if line.strip()]
    return {(row["question_id"], row["turn"]): row for row in rows}


def run_judging(client: JudgeClient, requests: list[JudgeRequest], judgment_file: Path, model_id: str,
                workers: int = 8, progress=print) -> int:
    """Asks for every request without a scored judgment in the file; returns how many were asked."""
    scored = {key for key, row in judged(judgment_file).items() if row["score"] is not None}
    pending = [r for r in requests if (r.question_id, r.turn) not in scored]
    lock = threading.Lock()
    judgment_file.parent.mkdir(parents=True, exist_ok=True)

    def ask(request: JudgeRequest) -> None:
        try:
            judgment, error = client.complete(request.system, request.user), None
        except Exception as failure:  # kept and listed, never dropped
            judgment, error = "", f"{type(failure).__name__}: {failure}"
        score = parse_rating(judgment) if error is None else None
        if error is None and score is None:
            error = "no [[rating]] in the judgment"
        row = {"question_id": request.question_id, "category": request.category, "turn": request.turn,
               "model": model_id, "judge": [client.model, request.prompt_name], "score": score,
               "judgment": judgment, "error": error, "tstamp": time.time()}
        with lock, judgment_file.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(ask, pending), start=1):
            if done % 20 == 0 or done == len(pending):
                progress(f"mt-bench judging: {done}/{len(pending)} judgments asked")
    return len(pending)
