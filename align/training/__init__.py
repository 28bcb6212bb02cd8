"""The stages and what a training step needs: SFT and DPO on TRL's trainers, the pipeline of both, and our
trainers' additions to TRL's.

    stage           one stage, whichever the trainer: load, train or resume, save, record
    sft, dpo        how each stage builds its trainer; `run_sft`, `run_dpo`
    pipeline        SFT, then DPO from its output, in one command
    trainer_mixins  everything our trainers add to TRL's, in one mixin:
      router_loss     JetMoE's router losses inside TRL's losses
      step_guard      non-finite loss or gradient norm, and SIGTERM, checked at every optimizer step
      nonfinite       what counts as non-finite, and the error that stops a stage
      resume_trainer  a resume that changed the recipe, applied
      tied_weights    resuming without a false alarm about the tied output embedding
      token_batches   micro-batches of about equal tokens
    distributed     what JetMoE needs under DDP, DeepSpeed ZeRO-2/3 and FSDP
    stage_engines   several stages in one process, each with its own engine

May import: `align.config`, `align.data`, `align.model`, `align.runs`, `align.lora`. Not inference, evaluation or
the command line.
"""
