"""`python -m align generate` on the demo's chat model: one question (greedy or sampled), a multi-turn chat on
stdin, and a JSONL file of prompts answered in batches with the same answers as one at a time."""

import io
import json

import pytest

from align.cli import main
from align.inference.generate import ChatModel

QUESTIONS = ["What is 2 plus 3?", "Name a colour.", "Write a long sentence about the sea and its many boats."]


def _answer(model_dir, capsys, *options) -> str:
    assert main(["generate", str(model_dir), QUESTIONS[0], "--max_new_tokens", "12", *options]) == 0
    return capsys.readouterr().out.rstrip("\n")


@pytest.mark.slow
def test_sampling_options_change_the_answer_reproducibly(demo_run, capsys):
    model_dir = demo_run[0] / "dpo"
    greedy = _answer(model_dir, capsys)
    assert greedy and greedy == _answer(model_dir, capsys)
    sampled = [_answer(model_dir, capsys, "--temperature", "1.5", "--top_p", "0.95", "--seed", str(seed))
               for seed in (1, 2, 3)]
    assert sampled[0] == _answer(model_dir, capsys, "--temperature", "1.5", "--top_p", "0.95", "--seed", "1")
    assert any(answer != greedy for answer in sampled)


@pytest.mark.slow
def test_both_engines_give_the_same_greedy_answers_and_mixed_temperatures_sample_their_rows_only(demo_run):
    from align.inference.generate import Sampling

    model_dir = str(demo_run[0] / "dpo")
    conversations = [[{"role": "user", "content": question}] for question in QUESTIONS]
    greedy = Sampling(max_new_tokens=24)
    ours, stock = ChatModel(model_dir), ChatModel(model_dir, engine="transformers")
    assert ours.engine == "jetmoe" and type(ours.model).__module__.startswith("jetmoe_model")
    expected = stock.answer(conversations, greedy)
    assert ours.answer(conversations, greedy) == expected
    for chat in (ours, stock):  # ours in one batch, transformers' one temperature at a time
        mixed = chat.answer(conversations, greedy, temperatures=[0.0, 5.0, 0.0])
        assert [mixed[0], mixed[2]] == [expected[0], expected[2]] and mixed[1] != expected[1]


@pytest.mark.slow
def test_chat_mode_keeps_the_conversation_until_reset(demo_run, capsys, monkeypatch):
    asked = []
    answer = ChatModel.answer
    monkeypatch.setattr(ChatModel, "answer", lambda self, conversations, sampling: (
        asked.append([dict(turn) for turn in conversations[0]]) or answer(self, conversations, sampling)))
    monkeypatch.setattr("sys.stdin", io.StringIO("What is 2 plus 3?\nAnd 3 plus 4?\n/reset\nHi\n"))
    assert main(["generate", str(demo_run[0] / "dpo"), "--chat", "--system", "Be brief.",
                 "--max_new_tokens", "8"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("assistant> ") == 3 and "(new conversation)" in shown

    assert [[turn["role"] for turn in conversation] for conversation in asked] == [
        ["system", "user"], ["system", "user", "assistant", "user"], ["system", "user"]]
    first_reply = shown.split("assistant> ")[1].splitlines()[0]
    assert asked[1][2]["content"].strip() == first_reply.strip()
    assert asked[2][1]["content"] == "Hi"


@pytest.mark.slow
def test_a_prompts_file_is_answered_in_batches_like_one_by_one(demo_run, tmp_path, capsys):
    model_dir = demo_run[0] / "dpo"
    prompts, answers = tmp_path / "prompts.jsonl", tmp_path / "out" / "answers.jsonl"
    rows = [{"id": 0, "prompt": QUESTIONS[0]}, {"id": 1, "prompt": QUESTIONS[1]},
            {"id": 2, "messages": [{"role": "user", "content": QUESTIONS[2]}]}]
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["generate", str(model_dir), "--prompts", str(prompts), "--output", str(answers),
                 "--batch_size", "2", "--max_new_tokens", "12"]) == 0
    assert f"answered 3 prompts: {answers}" in capsys.readouterr().out

    written = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [{key: row[key] for key in row if key != "answer"} for row in written] == rows
    one_by_one = [_answer_alone(model_dir, question, capsys) for question in QUESTIONS]
    assert [row["answer"] for row in written] == one_by_one  # left padding changes no answer


def _answer_alone(model_dir, question, capsys) -> str:
    assert main(["generate", str(model_dir), question, "--max_new_tokens", "12"]) == 0
    return capsys.readouterr().out.rstrip("\n")


@pytest.mark.parametrize("argv, named", [
    ([], "give one of a question, --chat or --prompts (got none)"),
    (["Hi", "--chat"], "(got a question, --chat)"),
    (["--prompts", "{tmp}/p.jsonl"], "--prompts needs --output"),
    (["Hi", "--top_p", "1.5"], "--top_p in (0, 1]"),
    (["--prompts", "{tmp}/missing.jsonl", "--output", "{tmp}/a.jsonl"], "missing.jsonl: no such prompts file"),
    (["--prompts", "{tmp}/bad.jsonl", "--output", "{tmp}/a.jsonl"], "bad.jsonl: row 2: expected a 'prompt' text"),
])
def test_generate_mistakes_end_in_one_named_line(argv, named, tmp_path, capsys, monkeypatch):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "hi"}\n{"messages": [{"role": "assistant", "content": "x"}]}\n')
    # the mistakes come before the model
    monkeypatch.setattr(ChatModel, "__init__", lambda self, model_dir, engine="jetmoe": None)
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(["generate", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named.replace("{tmp}", str(tmp_path)) in err[0], err
