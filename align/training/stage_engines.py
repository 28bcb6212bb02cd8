"""Several stages in one process (`pipeline`): each stage gets the engine its own training arguments describe, and
frees it when done.

accelerate keeps the launch's engine set-up in process-wide singletons: `AcceleratorState` (the DeepSpeed or FSDP
plugin), `GradientState`, and transformers' global weak reference to the DeepSpeed config (which decides whether
a model is built sharded under `zero.Init`). The first trainer's `Accelerator` fills them; the second trainer's
`Accelerator` then finds a DeepSpeed plugin already there and refuses its own ("You cannot pass in a
`deepspeed_plugin` when creating a second `Accelerator`"). A stage therefore starts from a clean state, keeping
only `PartialState` (the process group, which stays up for the whole launch), and ends by destroying its engines
(their ZeRO-3 hooks and partitioned buffers) so that the next stage's model is not built beside the last one's.
"""

import gc

import torch
from accelerate.state import AcceleratorState, GradientState
from transformers.integrations.deepspeed import set_hf_deepspeed_config


def fresh_engine_state(args) -> None:
    """Forget an earlier stage's engine set-up; the DeepSpeed config in force (for `zero.Init` while the model
    loads) becomes this stage's, as in a launch of this stage alone."""
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    gc.collect()  # the earlier stage's trainer, model and optimizer, unreachable since that stage returned
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(args, "hf_deepspeed_config", None) is not None:
        set_hf_deepspeed_config(args.hf_deepspeed_config)


def release_engines(trainer) -> None:
    """Destroy the trainer's engines (DeepSpeed's hooks and buffers would otherwise keep the model alive) and make
    accelerate forget what it prepared; the rest goes with the trainer when the stage returns."""
    reference = getattr(trainer, "ref_model", None)
    if hasattr(reference, "destroy"):  # DPO's frozen reference, a DeepSpeed engine of its own
        reference.destroy()
    trainer.accelerator.free_memory()  # destroys the training engine
