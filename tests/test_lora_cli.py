"""LoRA through the stages: tiny LoRA SFT, then LoRA DPO from its adapter, then export, all by the CLI."""

import json

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoTokenizer, JetMoeForCausalLM
from trl import DPOConfig
from trl.trainer.utils import use_adapter

from align.cli import main
from align.config.recipes import ModelArgs, load_recipe
from align.inference.generate import load_chat_model
from align.lora.adapters import add_lora
from align.lora.arguments import LoraArguments
from align.lora.config import jetmoe_lora_config
from align.lora.stage_support import lora_base_model
from align.model.tokenizer import load_tokenizer
from align.training.dpo import dpo_trainer
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

QUICK = ["--max_steps", "2", "--max_length", "96", "--per_device_train_batch_size", "4",
         "--per_device_eval_batch_size", "8", "--logging_steps", "1"]


LORA_RECIPES = {
    "recipes/tiny/sft_lora.yaml": "sft",
    "recipes/tiny/dpo_lora.yaml": "dpo",
    "recipes/jetmoe-8b-chat/sft/config_lora.yaml": "sft",
    "recipes/jetmoe-8b-chat/dpo/config_lora.yaml": "dpo",
}


@pytest.mark.parametrize("path", sorted(LORA_RECIPES))
def test_lora_recipes_parse_and_take_lora_overrides(path):
    recipe = load_recipe(path, LORA_RECIPES[path], {"lora.r": 8, "bf16": False})  # bf16 needs a GPU to parse
    assert recipe.lora.r == 8 and recipe.lora.alpha >= 16
    assert jetmoe_lora_config(recipe.lora).target_parameters


@pytest.mark.slow
def test_tiny_lora_sft_then_dpo_then_export(tmp_path):
    sft, dpo, merged = tmp_path / "sft", tmp_path / "dpo", tmp_path / "merged"
    assert main(["sft", "recipes/tiny/sft_lora.yaml", "--output_dir", str(sft), *QUICK]) == 0
    assert main(["dpo", "recipes/tiny/dpo_lora.yaml", "--model.name_or_path", str(sft),
                 "--output_dir", str(dpo), *QUICK]) == 0
    assert main(["export", str(dpo), str(merged)]) == 0

    config = json.loads((dpo / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(dpo / "base")  # the SFT adapter merged: DPO's start
    assert json.loads((dpo / "run.json").read_text())["recipe"]["lora"]["r"] == 16

    tokenizer = AutoTokenizer.from_pretrained(merged)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    stock = JetMoeForCausalLM.from_pretrained(merged).eval()
    adapted = PeftModel.from_pretrained(JetMoEForCausalLM.from_pretrained(dpo / "base"), dpo).eval()
    torch.testing.assert_close(stock(ids).logits, adapted(ids).logits, atol=1e-4, rtol=0)
    assert stock.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]

    chat = load_chat_model(str(dpo))  # what generate and eval mt-bench load for an adapter dir: merged on the fly
    torch.testing.assert_close(chat.model(ids).logits, stock(ids).logits, atol=1e-4, rtol=0)
    assert main(["generate", str(dpo), "What is 2 plus 3?", "--max_new_tokens", "4"]) == 0


def test_lora_dpo_reference_is_the_policy_with_adapters_disabled(tmp_path):
    tokenizer = load_tokenizer("recipes/tiny/tokenizer")
    model = JetMoEForCausalLM(JetMoEConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                           num_key_value_heads=2, kv_channels=8, intermediate_size=32,
                                           num_local_experts=4, moe_backend="torch"))
    pair = {"prompt": [{"role": "user", "content": "Say hi."}], "chosen": [{"role": "assistant", "content": "Hi!"}],
            "rejected": [{"role": "assistant", "content": "No."}]}
    args = DPOConfig(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=2, max_steps=1,
                     bf16=False)
    ids = torch.randint(0, len(tokenizer), (1, 6), generator=torch.Generator().manual_seed(0))
    base_logits = model.eval()(ids).logits.detach()
    trainer = dpo_trainer(args, model, tokenizer, Dataset.from_list([pair] * 2),
                          peft_config=jetmoe_lora_config(LoraArguments(r=2)))
    assert trainer.ref_model is None  # no second copy of the weights
    policy = trainer.model.eval()
    assert isinstance(policy, PeftModel) and list(policy.peft_config) == ["default"]
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter, so policy and reference differ
        with use_adapter(policy, adapter_name=None):  # how TRL's DPO computes the reference
            torch.testing.assert_close(policy(ids).logits, base_logits, atol=1e-6, rtol=0)
        assert (policy(ids).logits - base_logits).abs().max() > 1e-3


def test_a_pretrained_base_is_named_as_it_is_and_not_copied(tmp_path):
    tokenizer = load_tokenizer("recipes/tiny/tokenizer")
    JetMoEForCausalLM(JetMoEConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                   num_key_value_heads=2, kv_channels=8, intermediate_size=32,
                                   num_local_experts=4)).save_pretrained(tmp_path / "pretrained")
    args = ModelArgs(name_or_path=str(tmp_path / "pretrained"), moe_backend="torch")
    model = add_lora(lora_base_model(args, tokenizer, tmp_path / "out", seed=0), LoraArguments(r=2))
    assert model.peft_config["default"].base_model_name_or_path == str(tmp_path / "pretrained")
    assert not (tmp_path / "out" / "base").exists()
