"""Build the model a recipe names: our `JetMoEForCausalLM`, loaded explicitly (never through AutoModel, since
transformers' JetMoe shares the "jetmoe" model type), or a seeded random init for tiny runs."""

import torch
from transformers.integrations import is_deepspeed_zero3_enabled

from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

from ..config.recipes import ModelArgs

def _dtype(name: str):
    return name if name == "auto" else getattr(torch, name)


def _token_ids(tokenizer) -> dict:
    return {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def model_config(args: ModelArgs, tokenizer=None) -> JetMoEConfig:
    """The config a random init starts from: `name_or_path`'s config.json (default JetMoEConfig without one),
    updated with `args.config`; vocabulary and special tokens follow the tokenizer unless `args.config` says."""
    base = JetMoEConfig.from_pretrained(args.name_or_path).to_dict() if args.name_or_path else {}
    if tokenizer is not None:
        base.update({"vocab_size": len(tokenizer), **_token_ids(tokenizer)})
    base.update({**args.config, "moe_backend": args.moe_backend})
    base.pop("model_type", None)
    return JetMoEConfig(**base)


def build_model(args: ModelArgs, tokenizer=None, seed: int = 0, meta: bool = False,
                device: torch.device | str | None = None) -> JetMoEForCausalLM:
    """`meta=True` builds the architecture without weights (no memory, no download beyond config.json).

    `device`: where the weights are made or loaded (a random JetMoE-8B takes minutes on a CPU, seconds on a GPU).
    A random init is whole on every rank, the same from the same seed, also under ZeRO-3 (which shards it when
    the trainer starts): the same weights as one process gets. Under ZeRO-3 `from_pretrained` loads sharded."""
    if args.init == "random" or meta:
        config = model_config(args, tokenizer)
        if args.attn_implementation:
            config._attn_implementation = args.attn_implementation
        if meta:
            with torch.device("meta"):
                return JetMoEForCausalLM(config)
        torch.manual_seed(seed)
        with torch.device(device or "cpu"):
            model = JetMoEForCausalLM(config)
        if args.dtype != "auto":
            model = model.to(_dtype(args.dtype))
    else:
        on_device = device is not None and not is_deepspeed_zero3_enabled()
        model = JetMoEForCausalLM.from_pretrained(
            args.name_or_path,
            dtype=_dtype(args.dtype),
            attn_implementation=args.attn_implementation,
            moe_backend=args.moe_backend,
            device_map={"": torch.device(device)} if on_device else None,
            **args.config,
        )
    if tokenizer is not None:
        # Generation stops at the chat template's end of turn and pads with the tokenizer's pad token.
        model.generation_config.update(**_token_ids(tokenizer))
    return model
