"""A training step that never waits for the GPU to begin: its batch is planned on the host and copied without
blocking.

The GPU runs a step's backward well after the host has queued it. If the host then waits for the GPU (reading a
value back, a blocking copy), it queues the next step's forward only once the GPU is idle, and the GPU idles again
while the host works through that forward's launches. Three such waits sat at the start of every step: the copy of
the batch to the GPU (blocking, by accelerate's default), and in the forward the input checks and the padding-free
layout, both read back from the GPU. Here the collator checks the inputs and plans the layout on the CPU
(`jetmoe_model.batch_plan.plan_batch`, passed to the forward as `packed_batch`), and pinned batches are copied
without blocking (`non_blocking`), so the host queues the next step while the GPU finishes this one.
"""

from jetmoe_model.batch_plan import plan_batch


class PlanningCollator:
    """A data collator whose batches carry their padding-free layout (`packed_batch`) when the model runs one."""

    def __init__(self, collator, config, preference_pairs: bool):
        self.collator, self.config, self.preference_pairs = collator, config, preference_pairs

    def __call__(self, examples):
        batch = self.collator(examples)
        packed = plan_batch(self.config, batch, self.preference_pairs)
        return batch if packed is None else {**batch, "packed_batch": packed}


class PlannedBatchesMixin:
    """Mix in before a TRL trainer (after `RouterLossMixin`, which finds the JetMoE config). `preference_pairs`:
    the batches are TRL's DPO rows, chosen then rejected."""

    preference_pairs = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = PlanningCollator(self.data_collator, self._backbone_config, self.preference_pairs)

    def create_accelerator_and_postprocess(self):
        if self.args.dataloader_pin_memory:  # a copy from unpinned memory blocks whatever is asked
            self.args.accelerator_config.non_blocking = True
        super().create_accelerator_and_postprocess()
