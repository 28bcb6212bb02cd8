"""The dSFT stage: TRL's `SFTTrainer` on conversational data, with JetMoE's router losses added. Our recipes set
`assistant_only_loss: true`, so only the assistant's answers (marked by the chat template) are trained on."""

import copy

from trl import SFTTrainer

from ..config.recipes import Recipe
from .stage import run_stage
from .trainer_mixins import JetMoETrainerMixin


class JetMoESFTTrainer(JetMoETrainerMixin, SFTTrainer):
    """`SFTTrainer` whose loss includes JetMoE's weighted router losses (logged as aux_loss, router_z_loss)."""

    def _policy_head_outputs(self):
        return ("entropy", "is_top1")  # TRL's SFT metrics


def sft_trainer(args, model, tokenizer, train_dataset, eval_dataset=None, peft_config=None) -> JetMoESFTTrainer:
    """Conversations are tokenised (and packed) by TRL; data prepared by `align.data.prepare` (tokenised, with
    `labels`) is taken as it is."""
    if "labels" in train_dataset.column_names:
        args = copy.copy(args)
        # The labels already leave out what assistant_only_loss leaves out; TRL would insist on conversations.
        args.assistant_only_loss = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    return JetMoESFTTrainer(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            processing_class=tokenizer, peft_config=peft_config)


def run_sft(recipe: Recipe, resume: bool = False, require_checkpoint: bool = True,
            accept_changes: bool = False):
    return run_stage(recipe, sft_trainer, resume, require_checkpoint, accept_changes)
