"""Pre-flight checks found by trying the toolkit as a new user: a chat template that is neither a known name nor
Jinja that renders a conversation, a split held twice (`train.jsonl` and `train.parquet`), a model dir without a
tokenizer. Each ends in one line naming the field or files, exit 2, before data or model is loaded."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import tiny_config_kwargs

import align.training.stage
from align.cli import main
from align.config.recipes import RecipeError, load_recipe
from align.data import DataError, DataSource
from align.data.sources import read_split
from align.training.sft import run_sft
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

SAMPLES = Path("data/samples")


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("template, named", [
    ("nosuchtemplate", "tokenizer.chat_template: unknown chat template 'nosuchtemplate': expected one of ['zephyr']"),
    ("{% for m in messages %}{{ m.content }", "tokenizer.chat_template: the Jinja template does not render a sample "
                                             "conversation (line 1): TemplateSyntaxError"),
    ("{{ raise_exception('no user turns here') }}", "does not render a sample conversation: TemplateError: no user"),
    ("{{ messages[0].content.text.upper() }}", "does not render a sample conversation: UndefinedError"),
])
def test_a_chat_template_that_cannot_render_is_named(template, named, tmp_path, capsys):
    argv = ["recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), "--tokenizer.chat_template", template]
    assert main(["check", *argv]) == 2
    assert named in error_line(capsys)


def test_a_custom_jinja_template_that_renders_passes(tmp_path, capsys):
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}{{ eos_token }}{% endfor %}"
    assert main(["check", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path),
                 "--tokenizer.chat_template", template]) == 0
    assert "ok" in capsys.readouterr().out


def test_the_stage_refuses_a_bad_template_before_loading_data(tmp_path, monkeypatch):
    """As a library call, without the CLI's pre-flight check: the same line, before any data is read."""
    monkeypatch.setattr(align.training.stage, "prepare_data", lambda *args: pytest.fail("the stage read its data"))
    recipe = load_recipe("recipes/tiny/sft.yaml", "sft", {"output_dir": str(tmp_path),
                                                          "tokenizer.chat_template": "nosuchtemplate"})
    with pytest.raises(RecipeError, match=r"^tokenizer.chat_template: unknown chat template 'nosuchtemplate'"):
        run_sft(recipe)


@pytest.mark.parametrize("layout", [("train.jsonl", "train.parquet"), ("train.jsonl", "data/train.parquet"),
                                    ("data/train-00000.jsonl", "data/train-00000.parquet")])
def test_a_split_held_twice_is_refused_naming_both_files(layout, tmp_path, capsys):
    source = tmp_path / "chats"
    for name in layout:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        sample = "sharegpt/train.jsonl" if name.endswith(".jsonl") else "systemchat/train_sft.parquet"
        shutil.copy(SAMPLES / sample, source / name)
    first, second = (str(source / name) for name in layout)

    with pytest.raises(DataError, match="split 'train' is in both"):
        read_split(DataSource(str(source), test_split=None), "train")
    sources = json.dumps([{"path": str(source), "test_split": None}])
    assert main(["check", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path / "out"),
                 "--data.sources", sources]) == 2
    line = error_line(capsys)
    assert f"data.sources[0]: {source}: split 'train' is in both" in line
    assert first in line and second in line


def test_one_split_per_format_stays_fine(tmp_path):
    """Different splits in different formats, and shards of one split, are not duplicates."""
    source = tmp_path / "chats"
    (source / "data").mkdir(parents=True)
    shutil.copy(SAMPLES / "sharegpt" / "train.jsonl", source / "data" / "train-00000.jsonl")
    shutil.copy(SAMPLES / "sharegpt" / "train.jsonl", source / "data" / "train-00001.jsonl")
    shutil.copy(SAMPLES / "systemchat" / "test_sft.parquet", source / "data" / "test.parquet")
    rows = len(read_split(DataSource(str(source)), "train"))
    assert rows == 2 * len(read_split(DataSource(str(SAMPLES / "sharegpt")), "train"))
    assert len(read_split(DataSource(str(source)), "test")) > 0


def test_generate_names_a_model_dir_without_a_tokenizer(tmp_path, capsys):
    JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs())).save_pretrained(tmp_path)
    capsys.readouterr()  # the save's progress bar
    assert main(["generate", str(tmp_path), "What is 2 plus 3?"]) == 2
    line = error_line(capsys)
    assert f"{tmp_path}: no tokenizer (tokenizer_config.json or tokenizer.json) beside the model" in line
    assert "sentencepiece" not in line.lower() and "tiktoken" not in line.lower()
