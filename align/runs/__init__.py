"""What keeps a run safe and visible: checked before it starts, locked, written so a kill or a full disk loses
nothing, checkpointed and resumable, logged, recorded and plotted.

    preflight              everything about a run checked before any model or data loads
    run_lock               one live run per output dir; no silent overwrite of a finished one
    atomic_files           files replaced in one step or not at all
    disk_full              a full disk said in one line naming the path
    checkpoints            complete checkpoints, which to resume from, publishing and rotation
    deepspeed_checkpoints  what a complete checkpoint holds under DeepSpeed
    crash_safe             the trainer mixin whose checkpoints survive a kill and whose metrics survive a resume
    resume_changes         what `--resume` lets a recipe change
    preemption             SIGTERM: a checkpoint at the end of the step, exit 143
    run_logging            `train.log`
    run_record             `metrics.json` and `run.json`
    plots                  PNG plots of the log history
    quiet                  warnings that flood a run's output, stopped

May import: `align.config`, `align.data`, `align.model` (the pre-flight check renders the chat template).
Nothing of the stages or commands: they build on these.
"""
