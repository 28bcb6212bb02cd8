"""The dDPO stage: TRL's `DPOTrainer` on preference pairs, from the SFT output, with JetMoE's router losses added.

Full fine-tuning compares against a frozen copy of the starting model, passed to TRL explicitly (TRL would
otherwise reload it by name, which a model built in memory does not have). With `precompute_ref_log_probs` the
reference log-probs are computed once, by the starting model before training, and no copy is kept. With LoRA
(`peft_config`) there is no copy either: TRL computes the reference with the policy's adapters disabled.

Every forward of a pair batch, policy and reference, tells the model the batch is preference pairs, so that it
computes each pair's prompt once (`jetmoe_model.pair_packing`; `model.config.share_pair_prefix: false` turns it off):
TRL's loss code runs unchanged on the same log-probs.
"""

import torch
from datasets import Dataset
from trl import DPOTrainer

from ..config.recipes import Recipe
from ..data.encoding import pair_length
from ..lora.adapter_switch import install_quick_adapter_switch
from .distributed import copy_model
from .dpo_loss import DPOLossWithoutWaitsMixin, completion_labels, completion_logps, forward_inputs
from .stage import run_stage
from .trainer_mixins import JetMoETrainerMixin


class PairLengthsMixin:
    """Token-sized micro-batches for DPO (`align.training.token_batches`, `train_sampling_strategy:
    batch_rebalance`: the effective batch stays `per_device_train_batch_size * gradient_accumulation_steps * GPUs`
    pairs). The sampler reads a `length` column, which DPO's tokenised data lacks: a pair's chosen plus rejected
    tokens."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if isinstance(dataset, Dataset) and {"prompt_ids", "length"} <= set(dataset.column_names):
            return dataset  # prepared by `align.data.prepare`: tokenised, cut and measured
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if args.train_sampling_strategy != "batch_rebalance" or not isinstance(dataset, Dataset):
            return dataset
        return dataset.map(pair_length, fn_kwargs={"max_length": args.max_length},
                           desc=f"Measuring {dataset_name} pairs")

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, "length"]


class SharedPromptsMixin:
    """TRL's DPO batch holds each pair's prompt twice, in its chosen and its rejected row: our model, told that the
    rows are pairs, computes it once. TRL makes its pair forwards in these two methods; the model keyword reaches
    the model through them (a PEFT model passes it on)."""

    def _compute_loss(self, model, inputs, return_outputs):
        return super()._compute_loss(model, {**inputs, "preference_pairs": True}, return_outputs)

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {**inputs, "preference_pairs": True})


class ReferenceFirstMixin:
    """TRL makes the step's reference forward inside its loss, after the policy's, with the policy's keywords: it is
    made first here instead, by TRL's own `compute_ref_log_probs`, and handed to the loss as precomputed log-probs.
    The trainer then knows which forward is the reference's (`_reference_pass`): the router losses neither ask it
    for router logits nor read them (TRL drops `output_router_logits` there; our hook would have put it back)."""

    def _compute_loss(self, model, inputs, return_outputs):
        if self.precompute_ref_logps:
            return super()._compute_loss(model, inputs, return_outputs)
        ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model or model, inputs)
        self.precompute_ref_logps = True  # the loss reads the reference log-probs from the inputs
        try:
            return super()._compute_loss(
                model, {**inputs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}, return_outputs
            )
        finally:
            self.precompute_ref_logps = False

    def compute_ref_log_probs(self, model, inputs):
        self._reference_pass = True
        try:
            return super().compute_ref_log_probs(model, inputs)
        finally:
            self._reference_pass = False


class QuickReferenceMixin:
    """LoRA's reference is the policy with its adapters off, switched on every step (and every batch of a
    precomputed reference pass) by `align.lora.adapter_switch` instead of PEFT's model scans.

    TRL's `compute_ref_log_probs` also unwraps the model twice a call (`is_peft_model`, `unwrap_model`), each a walk
    of all its modules (~1,600 at JetMoE-8B's shape with LoRA): the PEFT model is found once here, and for a new
    adapter (no "ref" adapter), TRL's sum of response log-probs (no `ld_alpha`) and no activation checkpointing, the
    reference forward is made directly. Anything else goes to TRL's."""

    _quick_reference = None  # the unwrapped PEFT model with the quick switch, once looked for; False: none

    def _install_quick_reference(self) -> None:
        """Once: unwrapping the model walks all its modules, too slow for every step."""
        if self._quick_reference is None:
            unwrapped = self.accelerator.unwrap_model(self.model)
            self._quick_reference = unwrapped if install_quick_adapter_switch(unwrapped) else False

    def compute_ref_log_probs(self, model, inputs):
        self._install_quick_reference()
        peft_model = self._quick_reference
        if (not peft_model or self.ref_model is not None or "ref" in peft_model.peft_config
                or self.ld_alpha is not None or peft_model.get_base_model().is_activation_checkpointing):  # fmt: skip
            return super().compute_ref_log_probs(model, inputs)
        with torch.no_grad(), peft_model.disable_adapter(), self.accelerator.autocast():
            return completion_logps(model(**forward_inputs(inputs)).log_probs, inputs)


class JetMoEDPOTrainer(JetMoETrainerMixin, PairLengthsMixin, ReferenceFirstMixin, SharedPromptsMixin,
                       QuickReferenceMixin, DPOLossWithoutWaitsMixin, DPOTrainer):  # fmt: skip
    """`DPOTrainer` whose loss includes JetMoE's weighted router losses (logged as aux_loss, router_z_loss)."""

    preference_pairs = True  # batches planned on the host share each pair's prompt (`PlannedBatchesMixin`)

    def _head_labels(self, batch):
        """TRL's DPO loss scores the completions: its labels are the input ids outside them set to -100."""
        return completion_labels(batch)

    def _policy_head_outputs(self):
        # TRL's DPO metrics, and the WPO weights with `use_weighting`
        return ("entropy", "mean_logits", "is_top1") + (("log_sum_sq_probs",) if self.use_weighting else ())


def frozen_copy(model):
    reference = copy_model(model).eval()  # ZeRO-3 shards do not survive deepcopy
    reference.requires_grad_(False)
    return reference


def dpo_trainer(args, model, tokenizer, train_dataset, eval_dataset=None, peft_config=None) -> JetMoEDPOTrainer:
    reference = None if args.precompute_ref_log_probs or peft_config else frozen_copy(model)
    return JetMoEDPOTrainer(model=model, ref_model=reference, args=args, train_dataset=train_dataset,
                            eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=peft_config)


def run_dpo(recipe: Recipe, resume: bool = False, require_checkpoint: bool = True,
            accept_changes: bool = False):
    return run_stage(recipe, dpo_trainer, resume, require_checkpoint, accept_changes)
