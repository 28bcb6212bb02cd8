"""What JetMoE needs from the engines that `accelerate launch` drives: DDP, DeepSpeed ZeRO-2/3 and FSDP.

ZeRO-3 keeps each parameter as a shard and gathers a module's own parameters in that module's forward pre-hook.
JetMoE calls every expert projection (`ParallelExperts`, one `[E, out, in]` weight), router and `kv_proj` as a
module, so each of those forwards runs and its hook fires. One parameter is read outside its owner's forward:
`MoAExperts` is used through its `map` and `reduce` methods, never its own forward, so its shared output `bias`
would be fetched on access, as a DeepSpeed "external parameter" outside the prefetch schedule. Marking
`MoAAttention` and `MoEMLP` as ZeRO-3 leaf modules gathers every parameter under them (that bias included) in one
fetch in their pre-forward (and pre-backward) hook, instead of one small gather per projection and router. Every
rank gathers the whole `[E, out, in]` expert weights whatever its tokens routed to, so all ranks issue the same
collectives in the same order: no hang on an expert that one rank's tokens skipped.

DDP, ZeRO-2 and FSDP need nothing here: DDP and ZeRO-2 keep whole weights on every rank, and FSDP
(`recipes/accelerate_configs/fsdp.yaml`) shards per `JetMoEDecoderLayer`, which gathers the layer's expert weights
for its whole forward and backward.

Router losses: each rank computes the load-balancing and z-losses on its own micro-batch
(`align/training/router_loss.py`), and the data-parallel engines average gradients over ranks, so the router term
trains on the mean of the per-rank losses, as gradient accumulation does over micro-batches.
tests/test_multiprocess.py checks 2 processes against 1 process with 2 accumulation steps.
"""

import copy
import os

from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from jetmoe_model.attention import MoAAttention
from jetmoe_model.experts import MoEMLP

from ..config.recipes import RecipeError

EXPERT_LAYERS = (MoAAttention, MoEMLP)


def prepare_for_sharding(*models: nn.Module | None) -> None:
    """Mark the expert layers of each model (policy, frozen reference) as ZeRO-3 leaves; a no-op without ZeRO-3.

    Call after the `TrainingArguments` exist (they tell transformers that ZeRO-3 is on) and before the trainer
    hands the models to DeepSpeed: DPO's reference model is wrapped in the trainer's constructor.
    """
    if not is_deepspeed_zero3_enabled():
        return
    from deepspeed.utils import set_z3_leaf_modules

    for model in models:
        if model is not None:
            set_z3_leaf_modules(model, list(EXPERT_LAYERS))


def is_partitioned(model: nn.Module) -> bool:
    """Whether ZeRO-3 already holds the parameters as shards (a model loaded under `zero.Init`)."""
    return any(hasattr(param, "ds_id") for param in model.parameters())


def copy_model(model):
    """An independent copy of a `PreTrainedModel`, e.g. DPO's frozen reference.

    `deepcopy` of a ZeRO-3-partitioned model keeps only each rank's empty local shard and drops DeepSpeed's
    bookkeeping, so such a model is loaded again from its checkpoint, sharded the same way.
    """
    if not is_partitioned(model):
        return copy.deepcopy(model)
    reference = type(model).from_pretrained(model.name_or_path, config=copy.deepcopy(model.config), dtype=model.dtype)
    prepare_for_sharding(reference)
    return reference


def uses_fsdp2(args) -> bool:
    """FSDP version 2, from `accelerate launch` (a config's `fsdp_version: 2`) or the training arguments."""
    launched = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" \
        and os.environ.get("FSDP_VERSION") == "2"
    return launched or (getattr(args, "fsdp_plugin_args", None) or {}).get("fsdp_version") == 2


def refuse_fsdp2_evaluation(args, stage: str) -> None:
    """FSDP2 trains and saves JetMoE, but its evaluation fails deep inside the first forward: accelerate puts the
    tied embeddings, final norm and LM head in one FSDP2 unit, and TRL's fused LM head reads the head's weight
    without running that unit's forward (a plain tensor meets a DTensor). Refused before the model loads."""
    if uses_fsdp2(args):
        raise RecipeError(f"{stage}: evaluation under FSDP version 2 does not work (the tied embeddings, norm and LM "
                          "head share one FSDP2 unit whose weight TRL's LM head reads without its forward): use "
                          "recipes/accelerate_configs/fsdp.yaml (version 1), or train without an evaluation "
                          "(--eval_strategy no and no test_split in the data sources)")
