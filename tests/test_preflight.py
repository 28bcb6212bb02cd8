"""The pre-flight check: every bad input ends in one line naming its file, key or row, exit 2, before any model or
data is loaded; `python -m align check`; output dirs that are unwritable or hold an earlier run; run.json counts
the rows that are trained on."""

import json
import os
import shutil
from pathlib import Path

import pytest

import align.training.dpo
import align.training.sft
import align.training.stage
from align.cli import main

FAST = ["--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1"]


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if a stage gets as far as loading anything."""
    def loading(*args, **kwargs):
        raise AssertionError("the stage started loading")

    monkeypatch.setattr(align.training.stage, "_run_stage", loading)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A saved random-init tiny model with its tokenizer (what a DPO stage starts from)."""
    out = tmp_path_factory.mktemp("base")
    assert main(["init-tiny", str(out)]) == 0
    return out


@pytest.fixture
def truncated_model(saved_model, tmp_path) -> Path:
    copy = tmp_path / "truncated"
    shutil.copytree(saved_model, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


@pytest.fixture
def broken_config(saved_model, tmp_path) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(saved_model, copy)
    (copy / "config.json").write_text('{"model_type": "jetmoe",')
    return copy


@pytest.fixture
def unwritable_dir(tmp_path) -> Path:
    if os.geteuid() == 0:  # root writes through file modes: /proc refuses new files to everyone
        return Path("/proc/self")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked


@pytest.mark.parametrize("argv, named", [
    (["sft", "recipes/tiny/sft.yaml", "--learning_rate", "-1", "--per_device_train_batch_size", "-3",
      "--model.dtype", "float17"],
     ["3 problems: recipes/tiny/sft.yaml: training.learning_rate: -1.0 must be a positive number",
      "training.per_device_train_batch_size: -3 must be at least 1", "model.dtype: unknown dtype 'float17'"]),
    (["sft", "recipes/tiny/sft.yaml", "--max_length", "0", "--model.attn_implementation", "flash"],
     ["training.max_length: 0 must be at least 1", "model.attn_implementation: unknown 'flash'"]),
    (["dpo", "recipes/tiny/dpo.yaml", "--model.name_or_path", "{base}", "--beta", "0"],
     ["recipes/tiny/dpo.yaml: training.beta: 0.0 must be a positive number"]),
    (["sft", "recipes/tiny/sft_lora.yaml", "--lora.dropout", "1.5"], ["lora.dropout: 1.5 must be in [0, 1)"]),
    (["sft", "recipes/tiny/sft.yaml", "--save_steps", "10"],
     ["training.save_steps: 10 has no effect while save_strategy is 'epoch' (add --save_strategy steps)"]),
    (["dpo", "recipes/tiny/dpo.yaml", "--model.name_or_path", "recipes/sftt"],
     ["model.name_or_path: recipes/sftt: no such directory (and not a hub id)"]),
    (["dpo", "recipes/tiny/dpo.yaml", "--model.name_or_path", "{tmp}"],
     ["model.name_or_path: {tmp}: no config.json or adapter_config.json (not a saved model directory)"]),
    (["dpo", "recipes/tiny/dpo.yaml", "--model.name_or_path", "{truncated}"],
     ["model.name_or_path: {truncated}/model.safetensors: not a complete safetensors file"]),
    (["dpo", "recipes/tiny/dpo.yaml", "--model.name_or_path", "{broken}"],
     ["model.name_or_path: {broken}/config.json: not valid JSON"]),
    (["sft", "recipes/tiny/sft.yaml", "--data.sources", "[{path: data/samples/nope.jsonl}]"],
     ["data.sources[0]: data/samples/nope.jsonl: no such file or directory"]),
    (["pipeline", "recipes/tiny/pipeline.yaml", "--dpo.beta", "-1"],  # DPO's mistake, found before SFT runs
     ["dpo.yaml: training.beta: -1.0 must be a positive number"]),
    (["sft", "recipes/tiny/sft.yaml", "--output_dir", "{unwritable}"], ["{unwritable}: not writable"]),
    (["sft", "recipes/tiny/sft.yaml", "--output_dir", "{tmp}/file/out"], ["{tmp}/file/out: cannot be created"]),
    (["sft", "recipes/tiny/sft.yaml", "--resume", "--overwrite_output_dir"], ["--resume continues", "choose one"]),
])
def test_bad_input_is_named_in_one_line_before_anything_loads(argv, named, saved_model, truncated_model, broken_config,
                                                              unwritable_dir, tmp_path, capsys, nothing_loads):
    (tmp_path / "file").write_text("")
    places = {"{base}": saved_model, "{truncated}": truncated_model, "{broken}": broken_config,
              "{unwritable}": unwritable_dir, "{tmp}": tmp_path}

    def place(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, str(value))
        return text

    if "--output_dir" not in argv:
        argv = [*argv, "--output_dir", str(tmp_path / "out")]
    assert main([place(arg) for arg in argv]) == 2
    line = error_line(capsys)
    for text in named:
        assert place(text) in line


def test_check_alone(saved_model, tmp_path, capsys):
    assert main(["check", "recipes/tiny/pipeline.yaml", "--output_dir", str(tmp_path)]) == 0
    assert f"sft -> {tmp_path / 'sft'}, dpo -> {tmp_path / 'dpo'}" in capsys.readouterr().out
    assert main(["check", "recipes/tiny/dpo.yaml", "--model.name_or_path", str(saved_model)]) == 0
    assert "dpo -> runs/tiny/dpo" in capsys.readouterr().out
    assert main(["check", "recipes/tiny/sft.yaml", "--learning_rate", "0"]) == 2
    assert "training.learning_rate: 0.0 must be a positive number" in error_line(capsys)
    (tmp_path / "sft" / "checkpoint-1").mkdir(parents=True)
    assert main(["check", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path / "sft")]) == 2
    assert "checkpoints of an unfinished run (checkpoint-1); pass --resume" in error_line(capsys)
    assert main(["check", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path / "sft"), "--resume"]) == 0


def test_generate_names_a_directory_without_a_model(tmp_path, capsys):
    assert main(["generate", str(tmp_path), "hi"]) == 2
    assert f"{tmp_path}: no config.json (not a saved model directory)" in error_line(capsys)


@pytest.mark.parametrize("left, named", [("run.json", "a finished run (run.json)"),
                                         ("checkpoint-7", "checkpoints of an unfinished run (checkpoint-7)")])
def test_an_earlier_run_is_not_overwritten_unless_asked(left, named, tmp_path, capsys):
    out = tmp_path / "sft"
    (out / "checkpoint-7").mkdir(parents=True)
    (out / left).touch()
    argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), *FAST]
    assert main(argv) == 2
    assert f"{out}: holds {named}; pass --resume to continue it or --overwrite_output_dir" in error_line(capsys)

    assert main([*argv, "--overwrite_output_dir"]) == 0
    assert not (out / "checkpoint-7").exists() and (out / "run.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("stage, recipe, build, max_length", [
    ("sft", "recipes/tiny/sft.yaml", "sft_trainer", 40),
    ("dpo", "recipes/tiny/dpo.yaml", "dpo_trainer", 24),
])
def test_run_json_counts_the_rows_trained_on(stage, recipe, build, max_length, saved_model, tmp_path,
                                             monkeypatch):
    module = getattr(align.training, stage)
    make_trainer, trained = getattr(module, build), {}

    def counting(*args, **kwargs):
        trainer = make_trainer(*args, **kwargs)
        trained["train"], trained["test"] = len(trainer.train_dataset), len(trainer.eval_dataset)
        return trainer

    monkeypatch.setattr(module, build, counting)
    argv = [stage, recipe, "--output_dir", str(tmp_path), "--max_length", str(max_length), *FAST]
    if stage == "dpo":
        argv += ["--model.name_or_path", str(saved_model)]
    assert main(argv) == 0
    data = json.loads((tmp_path / "run.json").read_text())["data"]
    assert data["totals"]["dropped"]["fully_masked"] > 0
    assert (data["train_rows"], data["test_rows"]) == (trained["train"], trained["test"])
