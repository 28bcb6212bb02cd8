"""Recipes: every shipped recipe parses, takes `--output_dir X --max_steps 3`, rejects unknown keys by name; the
JetMoE-8B-Chat recipes resolve to the real architecture (on the meta device) and the hub datasets, no download."""

import glob
from importlib.resources import files

import datasets
import pytest

from align.config.recipes import RecipeError, load_pipeline, load_recipe, parse_overrides
from align.data import load_mixture
from align.model.model_loading import build_model
from jetmoe_model import JetMoEConfig

STAGE_RECIPES = {path: "dpo" if "dpo" in path else "sft"
                 for path in glob.glob("recipes/**/*.yaml", recursive=True)
                 if "accelerate_configs" not in path and "pipeline" not in path and "lora" not in path}
PIPELINES = glob.glob("recipes/**/pipeline.yaml", recursive=True)
# The 8B recipes ask for bf16, which TrainingArguments only accepts on a GPU or with use_cpu.
ON_CPU = {"use_cpu": True}


def test_the_shipped_recipes_are_found():
    assert {"recipes/tiny/sft.yaml", "recipes/tiny/dpo.yaml", "recipes/jetmoe-8b-chat/sft/config_full.yaml",
            "recipes/jetmoe-8b-chat/dpo/config_full.yaml"} <= set(STAGE_RECIPES)
    assert {"recipes/tiny/pipeline.yaml", "recipes/jetmoe-8b-chat/pipeline.yaml"} <= set(PIPELINES)


@pytest.mark.parametrize("path", sorted(STAGE_RECIPES))
def test_every_recipe_takes_trl_overrides(path, tmp_path):
    overrides = parse_overrides(["--output_dir", str(tmp_path), "--max_steps", "3", "--learning_rate", "1e-4"])
    recipe = load_recipe(path, STAGE_RECIPES[path], {**overrides, **ON_CPU})
    assert recipe.training.output_dir == str(tmp_path)
    assert (recipe.training.max_steps, recipe.training.learning_rate) == (3, 1e-4)
    assert type(recipe.training).__name__ == {"sft": "SFTConfig", "dpo": "DPOConfig"}[STAGE_RECIPES[path]]


@pytest.mark.parametrize("path", sorted(PIPELINES))
def test_pipeline_overrides_reach_both_stages_and_dpo_starts_from_sft(path, tmp_path):
    sft, dpo = load_pipeline(path, {"output_dir": str(tmp_path), "max_steps": 3, "dpo.beta": 0.5, **ON_CPU})
    assert (sft.training.output_dir, dpo.training.output_dir) == (str(tmp_path / "sft"), str(tmp_path / "dpo"))
    assert sft.training.max_steps == dpo.training.max_steps == 3
    assert dpo.training.beta == 0.5
    assert (dpo.model.name_or_path, dpo.model.init) == (str(tmp_path / "sft"), "pretrained")


def test_section_overrides_and_type_conversion():
    recipe = load_recipe("recipes/tiny/sft.yaml", "sft", parse_overrides([
        "--model.moe_backend", "auto", "--model.config.hidden_size", "32", "--data.seed", "7", "--bf16=false",
        "--warmup_steps", "0.1", "--logging_first_step"]))
    assert recipe.model.moe_backend == "auto" and recipe.model.config["hidden_size"] == 32
    assert recipe.data.seed == 7 and recipe.training.warmup_steps == 0.1 and recipe.training.logging_first_step


def test_the_8b_recipes_hold_the_report_settings():
    sft = load_recipe("recipes/jetmoe-8b-chat/sft/config_full.yaml", "sft", ON_CPU)
    dpo = load_recipe("recipes/jetmoe-8b-chat/dpo/config_full.yaml", "dpo", ON_CPU)
    dpo_lora = load_recipe("recipes/jetmoe-8b-chat/dpo/config_lora.yaml", "dpo", ON_CPU)
    rows = {stage: r.training.per_device_train_batch_size * r.training.gradient_accumulation_steps * 8
            for stage, r in (("sft", sft), ("dpo", dpo), ("dpo_lora", dpo_lora))}  # on 8 GPUs, as the comments say
    assert rows["dpo"] == rows["dpo_lora"] == 128
    # SFT rows are packed rows of max_length tokens: the report's 128 conversations of the mixture's mean 837
    # tokens, within 10%.
    assert sft.training.packing and sft.training.padding_free
    assert 0.9 < rows["sft"] * sft.training.max_length / (128 * 837) < 1.1
    assert (sft.training.learning_rate, sft.training.num_train_epochs, sft.training.bf16) == (2e-5, 3, True)
    assert sft.training.assistant_only_loss and dpo.training.train_sampling_strategy == "batch_rebalance"
    assert (dpo.training.learning_rate, dpo.training.num_train_epochs, dpo.training.beta) == (5e-7, 1, 0.01)


def _shipped_8b_config(name_or_path, **kwargs):
    assert name_or_path == "jetmoe/jetmoe-8b"
    return JetMoEConfig.from_json_file(str(files("align") / "assets/jetmoe-8b/config.json"))


def test_8b_recipe_builds_the_real_architecture_on_meta(monkeypatch):
    monkeypatch.setattr(JetMoEConfig, "from_pretrained", _shipped_8b_config)
    recipe = load_recipe("recipes/jetmoe-8b-chat/sft/config_full.yaml", "sft", ON_CPU)
    model = build_model(recipe.model, meta=True)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads, config.kv_channels,
            config.intermediate_size, config.num_local_experts, config.num_experts_per_tok, config.vocab_size) == (
        24, 2048, 16, 128, 5632, 8, 2, 32000)
    assert next(model.parameters()).device.type == "meta"
    assert 8.0e9 < model.num_parameters() < 9.0e9  # "8B parameters in total"


@pytest.mark.parametrize("path, expected", [
    ("recipes/jetmoe-8b-chat/sft/config_full.yaml", {
        (name, split) for name in ("HuggingFaceH4/ultrachat_200k", "HuggingFaceH4/airoboros-3.2",
                                   "HuggingFaceH4/Code-Feedback", "HuggingFaceH4/orca-math-word-problems-200k",
                                   "HuggingFaceH4/SystemChat", "HuggingFaceH4/capybara")
        for split in ("train_sft", "test_sft")}),
    ("recipes/jetmoe-8b-chat/dpo/config_full.yaml", {
        ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs"),
        ("HuggingFaceH4/ultrafeedback_binarized", "test_prefs")}),
])
def test_8b_recipes_resolve_their_hub_datasets_by_name(path, expected, monkeypatch):
    asked = set()

    def fake_load_dataset(name, config=None, split=None, **kwargs):
        asked.add((name, split))
        turns = [{"role": "user", "content": f"q {name}"}, {"role": "assistant", "content": "a"}]
        return datasets.Dataset.from_list([{"messages": turns, "prompt": turns[:1], "chosen": turns[1:],
                                            "rejected": [{"role": "assistant", "content": "b"}]}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stage = "dpo" if "dpo" in path else "sft"
    splits, report = load_mixture(load_recipe(path, stage, ON_CPU).data)
    assert asked == expected
    assert len(splits["train"]) == len(expected) // 2


@pytest.mark.parametrize("content, message", [
    ("model: {name_or_path: x, colour: red}\ndata: {sources: [{path: x}]}\n", "unknown key 'colour'"),
    ("model: {name_or_path: x}\ndata: {sources: [{path: x}]}\ntraining: {learning_rat: 1}\n",
     "unknown key 'learning_rat'"),
    ("model: {name_or_path: x}\ndata: {sources: [{path: x, wieght: 1}]}\n", "unknown key 'wieght'"),
    ("model: {name_or_path: x}\ndata: {sources: [{path: x}]}\nextra: 1\n", "unknown key 'extra'"),
    ("model: {name_or_path: x}\ndata: {sources: [{path: x}]}\ntraining: {max_steps: many}\n",
     "training.max_steps: 'many' is not a valid value"),
    ("model: {name_or_path: x, moe_backend: cuda}\ndata: {sources: [{path: x}]}\n", "model.moe_backend: 'cuda'"),
    ("model: [\n", "not valid YAML"),
])
def test_bad_recipe_files_name_the_file_and_key(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(RecipeError, match=message) as error:
        load_recipe(path, "sft")
    assert str(path) in str(error.value)


def test_unknown_command_line_keys_are_named():
    with pytest.raises(RecipeError, match="unknown key 'max_stepz'"):
        load_recipe("recipes/tiny/sft.yaml", "sft", {"max_stepz": 3})
    with pytest.raises(RecipeError, match="unknown key '--betta'"):
        load_pipeline("recipes/tiny/pipeline.yaml", {"betta": 0.1})
    with pytest.raises(RecipeError, match="unknown key 'beta'"):  # a DPO field sent to the SFT stage
        load_pipeline("recipes/tiny/pipeline.yaml", {"sft.beta": 0.1})
