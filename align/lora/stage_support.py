"""What a LoRA training stage needs around TRL: a base that loads by name, and adapter configs stock PEFT loads.

The adapter records `base_model_name_or_path`, and `python -m align export` loads exactly that, so a stage must
train on weights that exist under a name. A pretrained checkpoint is its own name. Weights that exist only in
memory — a random init, or a LoRA adapter merged into its base (DPO after LoRA SFT, so that the reference is the
SFT policy) — are saved to `{output_dir}/base` first, and the stage trains on that checkpoint.
"""

import dataclasses
import logging
from pathlib import Path

from accelerate import PartialState
from peft import PeftConfig, PeftModel
from torch import nn

from jetmoe_model import JetMoEForCausalLM

from ..runs.atomic_files import staged_directory

logger = logging.getLogger(__name__)


def is_adapter_dir(name_or_path: str | None) -> bool:
    return bool(name_or_path) and (Path(name_or_path) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: str | Path) -> str | None:
    return PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path


def merge_adapter(base: JetMoEForCausalLM, adapter_dir: str | Path) -> JetMoEForCausalLM:
    """`base` with the saved adapter merged in, by stock PEFT's `merge_and_unload`."""
    config = PeftConfig.from_pretrained(str(adapter_dir))
    adapted = set(config.target_modules or ()) | set(config.modules_to_save or ())
    if base.config.tie_word_embeddings and adapted & {"lm_head", "embed_tokens"}:
        untie_embeddings(base)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def untie_embeddings(model: JetMoEForCausalLM) -> None:
    """Give `lm_head` its own copy of the tied embedding, so that merging a LoRA into one leaves the other as it is
    (merged into the shared tensor, it would reach both)."""
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False


def lora_base_model(model_args, tokenizer, output_dir: str | Path, seed: int, device=None) -> JetMoEForCausalLM:
    """The model a LoRA stage puts fresh adapters on: the checkpoint its adapter will name, or (weights only in
    memory) the model as just saved under `{output_dir}/base`, which the adapter then names."""
    from ..model.model_loading import build_model

    if is_adapter_dir(model_args.name_or_path):
        base_args = dataclasses.replace(model_args, name_or_path=adapter_base(model_args.name_or_path))
        model = merge_adapter(build_model(base_args, tokenizer, seed=seed, device=device), model_args.name_or_path)
    else:
        model = build_model(model_args, tokenizer, seed=seed, device=device)
        if model_args.init != "random":
            return model
    base_dir = str(Path(output_dir) / "base")
    state = PartialState()
    with staged_directory(base_dir, is_writer=state.is_main_process, barrier=state.wait_for_everyone) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    logger.info("LoRA base, named by the adapter: %s", base_dir)
    model.name_or_path = model.config._name_or_path = base_dir  # what PEFT records as base_model_name_or_path
    return model


def stock_loadable(model: PeftModel) -> PeftModel:
    """Make the adapter configs this model saves loadable by stock PEFT.

    Stock PEFT refuses `lora_dropout != 0` on expert weights (`target_parameters`). Dropout only acts in training
    and the layers already hold their dropout modules, so the saved config says 0; `run.json` keeps the recipe's.
    """
    for config in model.peft_config.values():
        if getattr(config, "target_parameters", None):
            config.lora_dropout = 0.0
    return model
