"""What a run leaves to look at: in each stage's output dir `trainer_state.json`, `train.log`, TensorBoard event
files and PNG plots of its curves; a terminal output without warning floods; a resume without a false alarm about
the tied `lm_head`."""

import json
import re
from collections import Counter

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from align.config.recipes import load_recipe
from align.runs.plots import plot_log_history
from align.training.tied_weights import TiedWeightsResumeMixin, tied_parameter_names
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

from conftest import tiny_config_kwargs

STAGE_PLOTS = {
    "sft": ["loss.png", "router_losses.png"],
    "dpo": ["accuracies.png", "loss.png", "margins.png", "rewards.png", "router_losses.png"],
}
# TensorBoard scalars each stage must have logged (transformers' TensorBoard callback: train/..., eval/...)
STAGE_SCALARS = {
    "sft": ["train/loss", "eval/loss", "train/aux_loss", "train/router_z_loss"],
    "dpo": ["train/loss", "eval/loss", "train/rewards/chosen", "train/rewards/rejected", "train/rewards/margins",
            "train/rewards/accuracies"],
}


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_each_stage_leaves_its_history_log_events_and_plots(stage, demo_run):
    output_dir, _ = demo_run
    directory = output_dir / stage

    history = json.loads((directory / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 3, 4, 5, 6]
    assert [entry["step"] for entry in history if "eval_loss" in entry][:2] == [3, 6]

    log = (directory / "train.log").read_text()
    assert f"{stage}: model" in log and "data: reading data/samples/" in log  # our progress lines
    first_step = re.search(r"step 1: (\{.*\})", log)
    assert first_step and json.loads(first_step.group(1))["loss"] == history[0]["loss"]

    (run_dir,) = (directory / "runs").iterdir()  # transformers' default: runs/{date}_{host}/
    events = EventAccumulator(str(run_dir))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in STAGE_SCALARS[stage]:
        assert tag in scalars, (tag, scalars)
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]

    assert sorted(path.name for path in directory.glob("*.png")) == STAGE_PLOTS[stage]
    for name in STAGE_PLOTS[stage]:
        with Image.open(directory / name) as image:
            assert image.format == "PNG" and image.size == (800, 450)
            darkest, lightest = image.convert("L").getextrema()
            assert lightest - darkest > 100  # lines and text on a background, not a blank canvas
        assert (directory / name).stat().st_size > 10_000


@pytest.mark.slow
def test_the_demo_prints_no_warning_twice_and_names_its_plots(demo_run):
    output_dir, printed = demo_run
    lines = [line.strip() for line in re.split(r"[\r\n]", printed) if "warn" in line.lower()]
    assert not [line for line, count in Counter(lines).items() if count > 1], lines
    assert "pin_memory" not in printed and "is_gradient_checkpointing" not in printed
    assert "plots: loss.png, router_losses.png" in printed
    assert f"tensorboard --logdir {output_dir}" in printed


def test_plots_follow_the_metrics_a_history_has(tmp_path):
    sft = [{"step": 1, "loss": 3.0, "aux_loss": 1.0, "router_z_loss": 2.0}, {"step": 2, "eval_loss": 2.5},
           {"step": 2, "loss": 2.0, "aux_loss": 1.1, "router_z_loss": 2.1}, {"step": 2, "train_loss": 2.5}]
    assert [path.name for path in plot_log_history(sft, tmp_path, "sft")] == \
        ["loss.png", "router_losses.png"]
    dpo = [{"step": step, "loss": 0.7, "rewards/chosen": 0.1, "rewards/rejected": -0.1, "rewards/margins": 0.2,
            "rewards/accuracies": 0.5} for step in (1, 2)]
    names = [path.name for path in plot_log_history(dpo, tmp_path, "dpo")]
    assert names == ["loss.png", "rewards.png", "margins.png", "accuracies.png"]  # no router losses logged
    assert plot_log_history([{"step": 1, "train_loss": 1.0}], tmp_path, "sft") == []


def test_recipes_report_to_tensorboard_unless_they_say_otherwise(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text("model: {init: random, config: {hidden_size: 32}}\n"
                      "tokenizer: {name_or_path: recipes/tiny/tokenizer}\n"
                      "data: {sources: [{path: data/samples/ultrachat}]}\n"
                      "training: {bf16: false, activation_checkpointing: false}\n")
    assert load_recipe(recipe, "sft").training.report_to == ["tensorboard"]
    assert load_recipe(recipe, "sft", {"report_to": "none"}).training.report_to == []
    assert load_recipe("recipes/tiny/dpo.yaml", "dpo").training.report_to == ["tensorboard"]


class _ReportedLoad:
    """Stands in for `Trainer`'s report of a loaded checkpoint: keeps what it was given."""

    def _issue_warnings_after_load(self, load_result):
        self.reported = load_result


class _ResumingTrainer(TiedWeightsResumeMixin, _ReportedLoad):
    def __init__(self, model):
        self.model = model
        self.accelerator = type("Accelerator", (), {"unwrap_model": staticmethod(lambda model: model)})()


def test_a_resume_reports_no_tied_lm_head_but_still_a_really_missing_key():
    model = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs(), tie_word_embeddings=True))
    assert tied_parameter_names(model) == {"lm_head.weight"}
    checkpoint = {name: tensor for name, tensor in model.state_dict().items()
                  if name not in ("lm_head.weight", "model.norm.weight")}  # as saved: the tied head left out
    trainer = _ResumingTrainer(model)
    trainer._issue_warnings_after_load(model.load_state_dict(checkpoint, strict=False))
    assert trainer.reported.missing_keys == ["model.norm.weight"]
    assert model.lm_head.weight is model.model.embed_tokens.weight

    untied = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs(), tie_word_embeddings=False))
    assert tied_parameter_names(untied) == set()
    trainer = _ResumingTrainer(untied)
    trainer._issue_warnings_after_load(untied.load_state_dict(
        {name: tensor for name, tensor in untied.state_dict().items() if name != "lm_head.weight"}, strict=False))
    assert trainer.reported.missing_keys == ["lm_head.weight"]  # not tied: its absence is real
