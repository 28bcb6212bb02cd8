"""MT-Bench: the real question and judge-prompt files parse, as do the hub's questions, and without the network
the run ends in one line naming local files; answers come out in FastChat's format, both turns, sampled per
category; a judge behind a real HTTP server on 127.0.0.1 is scored right, its failures counted and listed, and a
resumed judging asks only for what is missing."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from align.data import DataError
from align.evaluation import published
from align.evaluation.answers import write_answers
from align.evaluation.judge import JudgeClient, judge_requests, run_judging
from align.evaluation.mt_bench import judge_prompts_file
from align.evaluation.questions import TEMPERATURE, Question, load_judge_prompts, load_questions
from align.evaluation.scores import markdown, score_table, write_scores
from align.evaluation.settings import MTBenchSettings
from align.evaluation.stub_judge import judged_answer
from align.inference.generate import ChatModel
from alignment_fixtures import tiny_model, tokenizer_for

MT_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mt_bench"
needs_files = pytest.mark.skipif(not (MT_BENCH / "question.jsonl").is_file(), reason=f"no MT-Bench files at {MT_BENCH}")


@needs_files
def test_the_real_question_and_judge_prompt_files_parse():
    questions = load_questions(MT_BENCH / "question.jsonl")
    assert len(questions) == 80 and {q.category for q in questions} == set(TEMPERATURE)
    assert all(len(q.turns) == 2 for q in questions)
    assert sum(q.category == category for q in questions for category in TEMPERATURE) == 80
    prompts = load_judge_prompts(MT_BENCH / "judge_prompts.jsonl")
    assert "[[rating]]" in prompts["single-v1"]["prompt_template"]


def test_a_malformed_question_file_names_the_row(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "writing", "turns": ["a", "b"]}\n{"question_id": 2}\n')
    with pytest.raises(DataError, match=r"q.jsonl: row 2: field 'category': missing"):
        load_questions(path)


def test_hub_questions_in_huggingfaceh4s_layout_load_as_fastchats(monkeypatch):
    """HuggingFaceH4/mt_bench_prompts (the default) renames FastChat's `turns` to `prompt`, ids rows by `prompt_id`."""
    import datasets

    rows = [{"prompt": ["Write a poem.", "Shorter."], "prompt_id": 1234, "category": "writing", "reference": []},
            {"prompt": ["2+2?", "3+3?"], "prompt_id": 5678, "category": "math", "reference": ["4", "6"]}]
    monkeypatch.setattr(datasets, "load_dataset", lambda dataset_id, split: rows)
    assert load_questions(published.QUESTIONS) == [Question(1234, "writing", ["Write a poem.", "Shorter."]),
                                                   Question(5678, "math", ["2+2?", "3+3?"], ["4", "6"])]


def test_eval_without_the_hub_ends_in_one_line_that_names_local_files(chat_model, tmp_path):
    """`make eval` on a machine that cannot reach the hub (forced here by HF_HUB_OFFLINE, whatever the network)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    done = subprocess.run([sys.executable, "-m", "align", "eval", "mt-bench", chat_model.model.config._name_or_path,
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {published.QUESTIONS}: could not fetch MT-Bench's questions from the hub")
    assert "--questions DIR/question.jsonl" in line and "make eval MT_BENCH=DIR" in line


@needs_files
def test_judge_prompts_from_a_url_are_saved_beside_the_results(tmp_path):
    settings = MTBenchSettings(published.QUESTIONS, judge_prompts=(MT_BENCH / "judge_prompts.jsonl").as_uri())
    saved = judge_prompts_file(settings, tmp_path)
    assert saved == tmp_path / "judge_prompts.jsonl"
    assert saved.read_text() == (MT_BENCH / "judge_prompts.jsonl").read_text()


def test_hub_questions_are_judged_with_fastchats_published_prompts_or_one_line_says_why_not(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def unreachable(url, timeout):
        raise urllib.error.URLError(f"no network for {url}")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    with pytest.raises(DataError) as raised:
        judge_prompts_file(MTBenchSettings(published.QUESTIONS), tmp_path)
    assert str(raised.value).startswith(f"{published.JUDGE_PROMPTS}: could not fetch MT-Bench's judge prompts")
    assert "\n" not in str(raised.value) and "--questions DIR/question.jsonl" in str(raised.value)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chat_model")
    tokenizer = tokenizer_for(["Write a poem about the sea.", "What is 2 plus 3?", "Now make it shorter."])
    tiny_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return ChatModel(str(directory))


def test_answers_are_written_in_fastchats_format_with_both_turns_and_the_category_temperature(chat_model, tmp_path):
    questions = [Question(81, "writing", ["Write a poem about the sea.", "Now make it shorter."]),
                 Question(111, "math", ["What is 2 plus 3?", "And 3 plus 4?"]),
                 Question(131, "stem", ["What is water?", "And ice?"])]
    calls = []
    answer = chat_model.answer
    chat_model.answer = lambda conversations, sampling, temperatures: calls.append(
        (conversations, temperatures)) or answer(conversations, sampling, temperatures)
    out = tmp_path / "answers.jsonl"
    assert write_answers(chat_model, questions, out, "tiny", max_new_tokens=4, batch_size=8, progress=str) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(row["question_id"] for row in rows) == [81, 111, 131]
    for row in rows:
        assert row["model_id"] == "tiny" and {"answer_id", "tstamp"} <= set(row)
        assert len(row["choices"]) == 1 and len(row["choices"][0]["turns"]) == 2
    temperatures = {conversation[0]["content"]: temperature for conversations, temperatures in calls
                    for conversation, temperature in zip(conversations, temperatures)}
    assert temperatures == {"Write a poem about the sea.": 0.7, "What is 2 plus 3?": 0.0, "What is water?": 0.1}
    first_answers = {row["question_id"]: row["choices"][0]["turns"][0] for row in rows}
    second_turns = [c for conversations, _ in calls for c in conversations if len(c) == 3]
    assert len(second_turns) == 3  # the second turn sees the question and the first answer
    for conversation in second_turns:
        question = next(q for q in questions if q.turns[0] == conversation[0]["content"])
        assert conversation[1] == {"role": "assistant", "content": conversation[1]["content"]}
        assert conversation[1]["content"].strip() == first_answers[question.question_id]
        assert conversation[2] == {"role": "user", "content": question.turns[1]}
    # Answered questions are not answered again.
    assert write_answers(chat_model, questions, out, "tiny", max_new_tokens=4, batch_size=8, progress=str) == 0


class ScriptedJudge(BaseHTTPRequestHandler):
    """Rates 8 when the answer says GOOD, 3 when BAD; says no rating for MUMBLE; fails (500) for BROKEN."""

    behaviour = {}
    requests = []

    def do_POST(self):  # noqa: N802
        prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["messages"][-1]["content"]
        ScriptedJudge.requests.append(prompt)
        answer = judged_answer(prompt)
        reply = next((reply for word, reply in ScriptedJudge.behaviour.items() if word == answer), "Rating: [[5]]")
        if reply == 500:
            self.send_response(500)
            self.end_headers()
            return
        body = json.dumps({"choices": [{"message": {"content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ScriptedJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    ScriptedJudge.requests = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@needs_files
def test_judging_scores_counts_failures_and_resumes_only_what_is_missing(judge_server, tmp_path):
    prompts = load_judge_prompts(MT_BENCH / "judge_prompts.jsonl")
    questions = [Question(1, "writing", ["q1", "q1b"]), Question(2, "math", ["q2", "q2b"], ["4", "5"]),
                 Question(3, "stem", ["q3", "q3b"])]
    answers = {1: ["GOOD", "GOOD"], 2: ["BAD", "GOOD"], 3: ["MUMBLE", "BROKEN"]}
    requests = judge_requests(questions, answers, prompts, references={})
    assert [r.prompt_name for r in requests if r.question_id == 2] == ["single-math-v1", "single-math-v1-multi-turn"]
    assert "[The Start of Reference Answer]\n4\n" in requests[2].user
    ScriptedJudge.behaviour = {"GOOD": "Good. Rating: [[8]]", "BAD": "Rating: [[3]]", "MUMBLE": "It is fine.",
                               "BROKEN": 500}
    client = JudgeClient(judge_server, "judge", api_key="k", timeout=5, retries=1)
    judgments = tmp_path / "judgments.jsonl"
    assert run_judging(client, requests, judgments, "tiny", workers=3, progress=str) == 6
    assert len(ScriptedJudge.requests) == 7  # the 500 was retried once

    table = score_table(questions, judgments)
    assert table["categories"]["writing"] == {"turn_1": 8, "turn_2": 8, "average": 8, "judged": 2}
    assert table["categories"]["math"] == {"turn_1": 3, "turn_2": 8, "average": 5.5, "judged": 2}
    assert "stem" not in table["categories"] and table["overall"]["average"] == pytest.approx(27 / 4)
    assert sorted((f["question_id"], f["turn"]) for f in table["failed"]) == [(3, 1), (3, 2)]
    assert any("HTTP Error 500" in f["error"] for f in table["failed"])
    assert any("no [[rating]]" in f["error"] for f in table["failed"])

    ScriptedJudge.requests = []
    ScriptedJudge.behaviour = {"MUMBLE": "Rating: [[2]]", "BROKEN": "Rating: [[4]]"}
    assert run_judging(client, requests, judgments, "tiny", workers=3, progress=str) == 2
    assert len(ScriptedJudge.requests) == 2  # only the two that failed
    table = score_table(questions, judgments)
    assert table["categories"]["stem"]["average"] == 3 and not table["failed"] and not table["missing"]
    paths = write_scores(table, tmp_path, "tiny", "Judge: scripted test server.")
    assert [path.name for path in paths] == ["scores.json", "scores.md", "scores.png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[2].stat().st_size > 10_000
    assert "| **overall** | 4.333 | 6.667 | 5.500 | 6 |" in paths[1].read_text()


@needs_files
def test_reference_categories_judged_without_a_reference_are_counted_in_the_table(tmp_path):
    prompts = load_judge_prompts(MT_BENCH / "judge_prompts.jsonl")
    questions = [Question(1, "reasoning", ["q1", "q1b"]), Question(2, "math", ["q2", "q2b"], ["4", "5"]),
                 Question(3, "writing", ["q3", "q3b"])]
    requests = judge_requests(questions, {q.question_id: ["a", "b"] for q in questions}, prompts, references={})
    judgments = tmp_path / "judgments.jsonl"
    judgments.write_text("".join(json.dumps({"question_id": r.question_id, "turn": r.turn, "score": 5,
                                             "judge": ["judge", r.prompt_name], "error": None}) + "\n"
                                 for r in requests))
    table = score_table(questions, judgments)
    assert table["without_reference"] == [{"question_id": 1, "turn": 1}, {"question_id": 1, "turn": 2}]
    assert "without a reference answer (general prompt): 2" in markdown(table, "tiny")


@needs_files
def test_make_eval_on_a_chat_model_writes_the_table_and_chart_with_the_stub_judge(chat_model, tmp_path):
    """What `make eval` runs: answers for two questions of each category, judged by the stub judge over HTTP."""
    import socket
    import subprocess
    import sys

    model_dir = chat_model.model.config._name_or_path
    with socket.socket() as probe:  # a free port for the stub
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stub = subprocess.Popen([sys.executable, "-m", "align.evaluation.stub_judge", "--port", str(port),
                             "--seconds", "120"])
    try:
        done = subprocess.run([sys.executable, "-m", "align", "eval", "mt-bench", model_dir, "--questions",
                               str(MT_BENCH / "question.jsonl"), "--per_category", "2", "--max_new_tokens", "4",
                               "--judge-url", f"http://127.0.0.1:{port}/v1", "--judge-model", "stub",
                               "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    finally:
        stub.kill()
    assert done.returncode == 0, done.stderr[-2000:]
    answers = (tmp_path / "model_answer" / f"{Path(model_dir).name}.jsonl").read_text().splitlines()
    assert len(answers) == 16
    table = json.loads((tmp_path / "scores.json").read_text())
    assert set(table["categories"]) == set(TEMPERATURE) and table["overall"]["judged"] == 32
    assert (tmp_path / "scores.png").stat().st_size > 10_000
    assert "| **overall** |" in (tmp_path / "scores.md").read_text()


def _pipeline_with_eval(tmp_path, evaluation: str) -> Path:
    recipes = Path(__file__).resolve().parents[1] / "recipes" / "tiny"
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"sft: {recipes / 'sft.yaml'}\ndpo: {recipes / 'dpo.yaml'}\noutput_dir: {tmp_path / 'run'}\n"
                    f"eval: {evaluation}\n")
    return path


@pytest.mark.parametrize("section, named", [("{questionz: q.jsonl}", "eval: unknown key 'questionz'"),
                                            ("{questions: q.jsonl, engine: vllm}", "eval: engine 'vllm'")])
def test_a_pipeline_eval_section_with_a_mistake_stops_before_training(tmp_path, section, named):
    import subprocess
    import sys

    path = _pipeline_with_eval(tmp_path, section)
    done = subprocess.run([sys.executable, "-m", "align", "pipeline", str(path)], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2 and named in done.stderr, done.stderr[-1000:]
    assert not (tmp_path / "run" / "sft").exists()


@needs_files
def test_a_pipeline_with_an_eval_section_ends_with_mt_bench_answers(tmp_path):
    import subprocess
    import sys

    path = _pipeline_with_eval(tmp_path, f"{{questions: {MT_BENCH / 'question.jsonl'}, per_category: 1, "
                                         "max_new_tokens: 4}")
    done = subprocess.run([sys.executable, "-m", "align", "pipeline", str(path), "--max_steps", "1"],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    answers = (tmp_path / "run" / "dpo" / "mt_bench" / "model_answer" / "dpo.jsonl").read_text().splitlines()
    assert sorted(json.loads(row)["question_id"] for row in answers) == [81, 91, 101, 111, 121, 131, 141, 151]


def test_an_eval_option_mistake_ends_in_one_named_line(tmp_path, capsys):
    from align.cli import main

    assert main(["eval", "mt-bench", str(tmp_path), "--questions", "q.jsonl", "--batch_size", "0"]) == 2
    assert "eval mt-bench: batch_size and max_new_tokens must be at least 1" in capsys.readouterr().err
