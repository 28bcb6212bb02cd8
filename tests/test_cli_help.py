"""The command line explains itself: --help shows the recipe sections and the override syntax, --help-fields
every field a recipe can set, and a misspelt key names the closest valid ones."""

import pytest

from align.cli import main
from align.config.recipes import override_keys


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["sft", "dpo", "pipeline"])
def test_help_shows_sections_and_override_syntax(command, capsys):
    shown = _help([command, "--help"], capsys)
    for section in ("model:", "tokenizer:", "data:", "training:", "lora:"):
        assert section in shown
    assert "--max_steps 3" in shown and "--model.moe_backend torch" in shown and "--section.field" in shown
    assert "--help-fields" in shown and "--resume" in shown
    assert ("--sft.KEY v / --dpo.KEY v" in shown) == (command == "pipeline")


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_help_fields_lists_every_key_with_type_and_default(command, capsys):
    lines = _help([command, "--help-fields"], capsys).splitlines()
    listed = {line.split()[0][2:] for line in lines if line.startswith("  --")}
    assert listed == set(override_keys(command))
    assert any(line.split() == ["--max_steps", "int", "=", "-1"] for line in lines)
    assert any(line.startswith("  --report_to ") and line.endswith("'tensorboard'") for line in lines)
    assert any(line.split()[:2] == ["--model.moe_backend", "Literal['auto',"] for line in lines)
    assert any(line.split() == ["path", "str", "=", "(required)"] for line in lines)  # a data source's


def test_pipeline_help_fields_lists_both_stages_training_fields(capsys):
    shown = _help(["pipeline", "--help-fields"], capsys)
    assert "training (trl.SFTConfig; sft stage)" in shown and "training (trl.DPOConfig; dpo stage)" in shown
    assert "  --beta " in shown and "  --assistant_only_loss " in shown


@pytest.mark.parametrize("argv, suggested", [
    (["sft", "recipes/tiny/sft.yaml", "--max_stepz", "3"], "did you mean 'max_steps'"),
    (["sft", "recipes/tiny/sft.yaml", "--learning_rat", "1e-4"], "did you mean 'learning_rate'"),
    (["dpo", "recipes/tiny/dpo.yaml", "--model.moe_backnd", "torch"], "did you mean 'moe_backend'"),
    (["sft", "recipes/tiny/sft.yaml", "--modle.dtype", "float32"], "did you mean 'model'"),
    (["pipeline", "recipes/tiny/pipeline.yaml", "--bta", "0.2"], "did you mean 'beta'"),
    (["pipeline", "recipes/tiny/pipeline.yaml", "--data.sed", "1"], "did you mean 'data.seed'"),
])
def test_a_misspelt_key_names_the_closest_valid_one(argv, suggested, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and suggested in err[0], err


def test_a_key_like_no_other_gets_no_suggestion(capsys):
    assert main(["sft", "recipes/tiny/sft.yaml", "--zzzqqq", "1"]) == 2
    assert "did you mean" not in capsys.readouterr().err
