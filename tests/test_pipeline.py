"""`python -m align pipeline` end to end on the tiny recipe: SFT, then DPO from the SFT output; the chat model
loads with stock transformers (`JetMoeForCausalLM`, `AutoTokenizer` with the chat template) and generates."""

import json
import shlex
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, JetMoeForCausalLM

from align.cli import main
from align.config.recipes import load_pipeline, load_recipe


@pytest.mark.slow
def test_pipeline_output_is_a_stock_transformers_chat_model(tmp_path, capsys):
    argv = ["pipeline", "recipes/tiny/pipeline.yaml", "--output_dir", str(tmp_path), "--max_steps", "2",
            "--eval_strategy", "no", "--save_strategy", "no"]
    assert main(argv) == 0
    assert f"DPO: {tmp_path / 'dpo'}/" in capsys.readouterr().out

    dpo_run = json.loads((tmp_path / "dpo" / "run.json").read_text())
    assert dpo_run["recipe"]["model"]["name_or_path"] == str(tmp_path / "sft")
    assert dpo_run["data"]["kind"] == "preference"

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "dpo")
    model = JetMoeForCausalLM.from_pretrained(tmp_path / "dpo").eval()
    assert tokenizer.chat_template and "{% generation %}" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.slow
def test_resumed_pipeline_keeps_a_finished_sft_and_resumes_dpo(tmp_path):
    from safetensors.torch import load_file

    argv = ["pipeline", "recipes/tiny/pipeline.yaml", "--output_dir", str(tmp_path), "--sft.max_steps", "2",
            "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1"]
    assert main([*argv, "--dpo.max_steps", "1"]) == 0  # as if stopped after DPO's first step
    sft_weights = load_file(tmp_path / "sft" / "model.safetensors")

    assert main([*argv, "--dpo.max_steps", "2", "--resume", "--resume_accept_changes"]) == 0
    assert sorted(path.name for path in (tmp_path / "sft").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    resaved = load_file(tmp_path / "sft" / "model.safetensors")
    assert all(resaved[name].equal(sft_weights[name]) for name in sft_weights)

    dpo = tmp_path / "dpo"
    assert json.loads((dpo / "run.json").read_text())["resumed_from"].endswith("checkpoint-1")
    state = json.loads((dpo / "checkpoint-2" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2]


def header_commands(path: str) -> list[list[str]]:
    """The commands a recipe's header comment shows (lines joined at a trailing backslash)."""
    header = "\n".join(line.lstrip("# ") for line in Path(path).read_text().splitlines() if line.startswith("#"))
    return [shlex.split(line) for line in header.replace("\\\n", " ").splitlines() if "accelerate launch" in line]


def test_the_8b_pipeline_header_launches_the_pipeline_under_zero3_in_one_launch():
    """Both stages in one DeepSpeed launch (tests/test_multiprocess.py runs the tiny pipeline so under ZeRO-3):
    the header's command launches `pipeline` with this file under the ZeRO-3 config, whose stages are the 8B
    stage recipes (which write where the pipeline does, so either stage can also be launched alone)."""
    path = "recipes/jetmoe-8b-chat/pipeline.yaml"
    [command] = [command for command in header_commands(path) if "deepspeed" in " ".join(command)]
    assert command[command.index("--config_file") + 1] == "recipes/accelerate_configs/deepspeed_zero3.yaml"
    assert command[command.index("align") + 1:] == ["pipeline", path]

    on_cpu = {"use_cpu": True}  # the recipes ask for bf16, which TrainingArguments takes only on a GPU or with this
    sft = load_recipe("recipes/jetmoe-8b-chat/sft/config_full.yaml", "sft", on_cpu)
    dpo = load_recipe("recipes/jetmoe-8b-chat/dpo/config_full.yaml", "dpo", on_cpu)
    pipeline_sft, pipeline_dpo = load_pipeline(path, on_cpu)
    assert sft.training.output_dir == pipeline_sft.training.output_dir
    assert dpo.training.output_dir == pipeline_dpo.training.output_dir
    assert pipeline_dpo.model.name_or_path == pipeline_sft.training.output_dir
