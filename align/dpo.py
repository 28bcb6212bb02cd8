"""The dDPO stage: TRL's `DPOTrainer` on preference pairs, from the SFT output, with JetMoE's router losses added.

Full fine-tuning compares against a frozen copy of the starting model, passed to TRL explicitly (TRL would
otherwise reload it by name, which a model built in memory does not have). With `precompute_ref_log_probs` the
reference log-probs are computed once, by the starting model before training, and no copy is kept. With LoRA
(`peft_config`) there is no copy either: TRL computes the reference with the policy's adapters disabled.
"""

from trl import DPOTrainer

from .distributed import copy_model
from .recipes import Recipe
from .router_loss import RouterLossMixin
from .stage import StopAtMaxStepsMixin, run_stage
from .tied_weights import TiedWeightsResumeMixin


class JetMoEDPOTrainer(StopAtMaxStepsMixin, TiedWeightsResumeMixin, RouterLossMixin, DPOTrainer):
    """`DPOTrainer` whose loss includes JetMoE's weighted router losses (logged as aux_loss, router_z_loss)."""


def frozen_copy(model):
    reference = copy_model(model).eval()  # ZeRO-3 shards do not survive deepcopy
    reference.requires_grad_(False)
    return reference


def dpo_trainer(args, model, tokenizer, train_dataset, eval_dataset=None, peft_config=None) -> JetMoEDPOTrainer:
    reference = None if args.precompute_ref_log_probs or peft_config else frozen_copy(model)
    return JetMoEDPOTrainer(model=model, ref_model=reference, args=args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config)


def run_dpo(recipe: Recipe, resume: bool = False, require_checkpoint: bool = True):
    return run_stage(recipe, dpo_trainer, resume, require_checkpoint)
