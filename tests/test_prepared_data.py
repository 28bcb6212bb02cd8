"""Prepared data (`align.data.prepare`): the same token ids, labels, packed rows and counts as TRL's own preparation
of the mixture's rows; reused while nothing that shapes it changes, prepared afresh when anything does; never a
half-written cache; one preparation per launch, shared by its ranks; `align prepare` ahead of a stage."""

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from trl import DPOTrainer, SFTTrainer

from align.cli import main
from align.config.recipes import CommandLineValue, load_recipe
from align.data import DataError, load_mixture
from align.data.prepare import TrainerShape, prepare_data
from align.data.truncation import TrainerTruncation
from align.model.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import synthetic_data  # noqa: E402

FAST = ["--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1",
        "--report_to", "none"]


def recipe_for(stage: str, prepared_dir, **overrides):
    path = {"sft": "recipes/tiny/sft.yaml", "dpo": "recipes/tiny/dpo.yaml"}[stage]
    values = {"data.prepared_dir": str(prepared_dir), "use_cpu": "true", **overrides}
    return load_recipe(ROOT / path, stage, {key: CommandLineValue(str(value)) for key, value in values.items()})


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(ROOT / "recipes/tiny/tokenizer"))


def prepared(recipe, tokenizer):
    return prepare_data(recipe.data, tokenizer, TrainerShape.from_args(recipe.training, recipe.data.kind))


def trl_prepared(recipe, tokenizer):
    """Today's path, the oracle: `load_mixture`'s rows (counted with the trainer's cut), prepared by TRL's own
    `_prepare_dataset`."""
    args, kind = recipe.training, recipe.data.kind
    splits, report = load_mixture(recipe.data, tokenizer, TrainerTruncation.for_training(args, tokenizer, kind))
    trainer = types.SimpleNamespace(chat_template=None, completion_only_loss=False, _tokenizer=tokenizer)
    out = {}
    for split in ("train", "test"):
        if kind == "sft":
            packing = args.packing if split == "train" or args.eval_packing is None else args.eval_packing
            out[split] = SFTTrainer._prepare_dataset(trainer, splits[split], tokenizer, args, packing, None, split)
        else:
            out[split] = DPOTrainer._prepare_dataset(trainer, splits[split], tokenizer, args, split)
    return out, report


@pytest.mark.parametrize("stage, overrides", [
    ("sft", {"max_length": 40}),  # truncated, many conversations left with nothing to train on
    ("sft", {"max_length": 40, "truncation_mode": "keep_end", "data.dedupe": "true", "data.num_proc": 1}),
    ("sft", {"max_length": 64, "packing": "true", "padding_free": "true"}),
    ("sft", {"max_length": 64, "assistant_only_loss": "false"}),
    ("dpo", {"max_length": 24}),  # prompts alone filling max_length
    ("dpo", {"max_length": 192}),
])
def test_same_tokens_labels_packed_rows_and_counts_as_trl(stage, overrides, tokenizer, tmp_path):
    recipe = recipe_for(stage, tmp_path, **{"data.num_proc": 2, **overrides})
    ours = prepared(recipe, tokenizer)
    theirs, report = trl_prepared(recipe, tokenizer)
    assert ours.report.as_dict() == report.as_dict()
    assert not ours.reused
    for split in ("train", "test"):
        expected = theirs[split]
        assert len(getattr(ours, split)) == len(expected) > 0
        for column in expected.column_names:
            assert list(getattr(ours, split)[column]) == list(expected[column]), (split, column)
    if stage == "sft" and "packing" not in overrides:
        assert ours.report.train_rows == len(ours.train)


def test_strict_mode_names_the_row_from_a_worker(tmp_path, tokenizer):
    source = tmp_path / "chats"
    source.mkdir()
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    lines = [json.dumps(good)] * 300 + ['{"messages": [}'] + [json.dumps(good)] * 10
    (source / "train.jsonl").write_text("\n".join(lines) + "\n")
    recipe = recipe_for("sft", tmp_path / "prepared", **{"data.sources": f"[{{path: {source}, test_split: null}}]",
                                                         "data.strict": "true", "data.num_proc": 2})
    with pytest.raises(DataError, match=r"train.jsonl: row 301: invalid JSON"):
        prepared(recipe, tokenizer)
    assert not any((tmp_path / "prepared").glob("sft-*")), "a failed preparation leaves nothing to reuse"


def test_reused_until_anything_that_shapes_it_changes(tmp_path, tokenizer):
    data = tmp_path / "data"
    (data / "chats").mkdir(parents=True)
    for name in ("train_sft", "test_sft"):
        (data / "chats" / f"{name}.jsonl").write_text((ROOT / f"data/samples/ultrachat/{name}.jsonl").read_text())
    source = f"[{{path: {data / 'chats'}, train_split: train_sft, test_split: test_sft}}]"
    base = {"data.sources": source}
    first = prepared(recipe_for("sft", tmp_path / "prepared", **base), tokenizer)
    again = prepared(recipe_for("sft", tmp_path / "prepared", **base, **{"data.num_proc": 1}), tokenizer)
    assert again.reused and again.path == first.path and again.report.as_dict() == first.report.as_dict()
    assert list(again.train["input_ids"]) == list(first.train["input_ids"])

    other_template = tokenizer.chat_template.replace("<|assistant|>", "<|bot|>")
    changes = {
        "max_length": (dict(max_length=100), tokenizer),
        "seed": ({"data.seed": 7}, tokenizer),
        "template": ({"tokenizer.chat_template": other_template}, load_tokenizer(str(ROOT / "recipes/tiny/tokenizer"),
                                                                                 other_template)),
        "tokenizer": ({}, _other_tokenizer()),
    }
    paths = {first.path}
    for name, (overrides, tokenizer_used) in changes.items():
        result = prepared(recipe_for("sft", tmp_path / "prepared", **base, **overrides), tokenizer_used)
        assert not result.reused and result.path not in paths, name
        paths.add(result.path)

    train_file = data / "chats" / "train_sft.jsonl"
    lines = train_file.read_text().splitlines()
    train_file.write_text("\n".join(lines[:-1]) + "\n")  # one row fewer
    edited = prepared(recipe_for("sft", tmp_path / "prepared", **base), tokenizer)
    assert not edited.reused and edited.path not in paths
    assert edited.report.as_dict()["totals"]["read"] == first.report.as_dict()["totals"]["read"] - 1


def _other_tokenizer():
    from align.model.tokenizer import build_tokenizer, corpus_from_files

    return build_tokenizer(corpus_from_files((ROOT / "data/samples").rglob("*.jsonl")), vocab_size=600)


PREPARE_THEN_SIGNAL = """
import sys
from align.config.recipes import CommandLineValue, load_recipe
from align.data import prepare
from align.model.tokenizer import load_tokenizer
from align.training.stage import prepare_stage_data

def announce_then_encode(*args, _encode=prepare._encode_chunk):  # the parent, preparing: say so once
    print("PREPARING", flush=True)
    return _encode(*args)

prepare._encode_chunk = announce_then_encode
overrides = {k: CommandLineValue(v) for k, v in [a.split("=", 1) for a in sys.argv[1:]]}
recipe = load_recipe("recipes/tiny/sft.yaml", "sft", overrides)
data = prepare_stage_data(recipe, load_tokenizer(recipe.tokenizer_name_or_path))
print("DONE", data.path, data.reused, len(data.train), flush=True)
"""


@pytest.mark.slow
def test_a_kill_during_preparation_leaves_nothing_a_later_run_uses(tmp_path, tokenizer):
    data = synthetic_data.write_dataset(tmp_path / "data", "sft", tokenizer, rows=3000, seed=1)
    args = [f"data.sources=[{{path: {data}, train_split: train_sft, test_split: test_sft}}]",
            f"data.prepared_dir={tmp_path / 'prepared'}", "data.num_proc=1", "max_length=512", "use_cpu=true"]
    command = [sys.executable, "-c", PREPARE_THEN_SIGNAL, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "PREPARING"
    time.sleep(1.0)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    leftovers = list((tmp_path / "prepared").glob(".sft-*.tmp-*"))
    assert leftovers and not list((tmp_path / "prepared").glob("sft-*")), "killed mid-way: only a temporary dir"

    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    path, reused, rows = done.stdout.strip().splitlines()[-1].split()[1:]
    assert reused == "False" and not any(leftover.exists() for leftover in leftovers)
    settings = dict(arg.split("=", 1) for arg in args if not arg.startswith("data.prepared_dir="))
    fresh = prepared(recipe_for("sft", tmp_path / "fresh", **settings), tokenizer)
    assert Path(path).name == fresh.path.name and int(rows) == len(fresh.train)


RANK_REPORT = """
import hashlib, json, sys
from accelerate import PartialState
from align.config.recipes import CommandLineValue, load_recipe
from align.model.tokenizer import load_tokenizer
from align.training.stage import prepare_stage_data

overrides = {k: CommandLineValue(v) for k, v in [a.split("=", 1) for a in sys.argv[1:]]}
recipe = load_recipe("recipes/tiny/sft.yaml", "sft", overrides)
state = PartialState()
data = prepare_stage_data(recipe, load_tokenizer(recipe.tokenizer_name_or_path))
digest = hashlib.sha256(json.dumps([list(data.train["input_ids"]), list(data.train["labels"])]).encode()).hexdigest()
print("RANK", state.process_index, data.path, data.reused, digest, flush=True)
"""


@pytest.mark.slow
def test_ranks_of_a_two_process_launch_share_one_preparation(tmp_path):
    from test_multiprocess import CONFIGS, free_port

    script = tmp_path / "rank_report.py"
    script.write_text(RANK_REPORT)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
               "--num_processes", "2", "--main_process_port", str(free_port()), str(script),
               f"data.prepared_dir={tmp_path / 'prepared'}", "use_cpu=true"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = sorted(line.split()[1:] for line in done.stdout.splitlines() if line.startswith("RANK "))
    assert [rank[0] for rank in ranks] == ["0", "1"]
    assert ranks[0][1] == ranks[1][1] and ranks[0][3] == ranks[1][3], "both ranks train on the same prepared data"
    assert sorted(rank[2] for rank in ranks) == ["False", "True"], "prepared once, by one of them"


@pytest.mark.slow
def test_align_prepare_then_a_stage_prepares_nothing_twice(tmp_path, capsys):
    prepared_dir = tmp_path / "prepared"
    assert main(["prepare", "recipes/tiny/pipeline.yaml", "--data.prepared_dir", str(prepared_dir)]) == 0
    said = capsys.readouterr().out
    assert "sft: " in said and "dpo: " in said and "(prepared:" in said
    made = sorted(path.name for path in prepared_dir.iterdir() if not path.name.startswith("."))
    assert main(["pipeline", "recipes/tiny/pipeline.yaml", "--output_dir", str(tmp_path / "run"),
                 "--data.prepared_dir", str(prepared_dir), "--use_cpu", *FAST]) == 0
    assert sorted(path.name for path in prepared_dir.iterdir() if not path.name.startswith(".")) == made
    for stage in ("sft", "dpo"):
        record = json.loads((tmp_path / "run" / stage / "run.json").read_text())["prepared_data"]
        assert record["reused"] is True and Path(record["path"]).name in made
