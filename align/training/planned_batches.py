"""A training step that never waits for the GPU to begin: its batch is planned on the host and copied without
blocking.

The GPU runs a step's backward well after the host has queued it. If the host then waits for the GPU (reading a
value back, a blocking copy), it queues the next step's forward only once the GPU is idle, and the GPU idles again
while the host works through that forward's launches. Three such waits sat at the start of every step: the copy of
the batch to the GPU (blocking, by accelerate's default), and in the forward the input checks and the padding-free
layout, both read back from the GPU. Here the collator checks the inputs and plans the layout on the CPU
(`jetmoe_model.batch_plan.plan_batch`, passed to the forward as `packed_batch`), and pinned batches are copied
without blocking (`non_blocking`), so the host queues the next step while the GPU finishes this one.

The forward's end waited too, in TRL's fused LM head: the collator also plans which positions the head scores
(`scored_tokens`, read by `align.training.planned_lm_head`).
"""

from peft import PeftModel

from jetmoe_model.batch_plan import plan_batch

from .planned_lm_head import install_planned_lm_head, plan_scored_tokens


class PlanningCollator:
    """A data collator whose batches carry their padding-free layout (`packed_batch`) when the model runs one, and
    the positions the fused head scores (`scored_tokens`) when `head_labels(batch)` gives the labels it will get."""

    def __init__(self, collator, config, preference_pairs: bool, head_labels):
        self.collator, self.config, self.preference_pairs = collator, config, preference_pairs
        self.head_labels = head_labels

    def __call__(self, examples):
        batch = self.collator(examples)
        packed = plan_batch(self.config, batch, self.preference_pairs)
        if packed is not None:
            batch = {**batch, "packed_batch": packed}
        labels = self.head_labels(batch)
        return batch if labels is None else {**batch, "scored_tokens": plan_scored_tokens(labels)}


class PlannedBatchesMixin:
    """Mix in before a TRL trainer (after `RouterLossMixin`, which finds the JetMoE config). `preference_pairs`:
    the batches are TRL's DPO rows, chosen then rejected; `_head_labels` and `_policy_head_outputs` say what the
    trainer's loss gives TRL's fused head and asks of it."""

    preference_pairs = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = PlanningCollator(self.data_collator, self._backbone_config, self.preference_pairs,
                                              self._head_labels)  # fmt: skip
        model = self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model
        install_planned_lm_head(model, self._policy_head_outputs())
        if getattr(self, "ref_model", None) is not None:
            install_planned_lm_head(self.ref_model, ())  # TRL's head on a reference: log-probs only

    def _head_labels(self, batch):
        """The labels the loss gives the fused head for `batch` (on the CPU), or None."""
        return batch.get("labels")

    def _policy_head_outputs(self) -> tuple[str, ...]:
        """The per-token fields besides log-probs the trainer had TRL's head compute for its model."""
        raise NotImplementedError

    def create_accelerator_and_postprocess(self):
        if self.args.dataloader_pin_memory:  # a copy from unpinned memory blocks whatever is asked
            self.args.accelerator_config.non_blocking = True
        super().create_accelerator_and_postprocess()
