"""One training stage, whichever the trainer: load tokenizer, model and data; train (or resume); save the checkpoint
with its tokenizer; write metrics.json and run.json. `sft.py` and `dpo.py` only say how to build their trainer.

Every file is written atomically (`align.runs.atomic_files`): a failure, a full disk included, leaves the old file or
none, and `--resume` then re-saves them all from the last checkpoint."""

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from transformers import set_seed
from transformers.trainer_utils import TrainOutput

from ..config.recipes import Recipe
from ..data.prepare import PreparedData, TrainerShape, prepare_data
from ..lora.config import jetmoe_lora_config
from ..lora.stage_support import lora_base_model, stock_loadable
from ..model.model_loading import build_model
from ..model.tokenizer import load_tokenizer
from ..runs.atomic_files import staged_directory, write_json_atomically
from ..runs.checkpoints import checkpoint_step, checkpoint_to_resume, read_loss_tally
from ..runs.plots import plot_log_history
from ..runs.quiet import silence_known_floods
from ..runs.resume_changes import changes_record, describe, resume_changes, run_settings
from ..runs.run_lock import claimed_output_dir
from ..runs.run_logging import MetricsToTrainLog, writes_train_log
from ..runs.run_record import run_record
from .distributed import prepare_for_sharding, refuse_fsdp2_evaluation
from .host_threads import host_threads_for
from .stage_engines import fresh_engine_state, release_engines

logger = logging.getLogger(__name__)

# (training args, model, tokenizer, train dataset, eval dataset or None) -> a transformers Trainer
TrainerFactory = Callable


class StopAtMaxStepsMixin:
    """Mix in before a transformers trainer. Its loop checks `max_steps` only after an optimizer step, so a run
    resumed from a checkpoint that already reached it would train one step more: check before each epoch too."""

    def _run_epoch(self, *args, **kwargs):
        if self.state.global_step >= self.state.max_steps:
            logger.info("already at step %d of %d: nothing left to train", self.state.global_step, self.state.max_steps)
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)


@writes_train_log
def run_stage(recipe: Recipe, make_trainer: TrainerFactory, resume: bool = False,
              require_checkpoint: bool = True, accept_changes: bool = False) -> Path:
    """`resume` continues from the newest complete `checkpoint-*` in the output dir (an error if there is none,
    unless `require_checkpoint` is off: then the stage starts afresh), with the settings it recorded unless
    `accept_changes` (`align.runs.resume_changes`). One run at a time per output dir."""
    with claimed_output_dir(recipe.training, resume):
        return _run_stage(recipe, make_trainer, resume, require_checkpoint, accept_changes)


def _run_stage(recipe: Recipe, make_trainer: TrainerFactory, resume: bool, require_checkpoint: bool,
               accept_changes: bool) -> Path:
    started = time.time()
    args = recipe.training
    output_dir = Path(args.output_dir)
    resume_from = checkpoint_to_resume(args.output_dir, require_checkpoint) if resume else None
    resumed_step = checkpoint_step(resume_from) if resume_from else None  # read now: rotation may delete it later
    settings = run_settings(recipe)
    changes = resume_changes(resume_from, settings, accept_changes) if resume_from else {}
    resumed_tally = read_loss_tally(resume_from) if resume_from else None
    fresh_engine_state(args)  # a pipeline's second stage: not the first stage's engine
    set_seed(args.seed)

    tokenizer = load_tokenizer(recipe.tokenizer_name_or_path, recipe.tokenizer.chat_template)
    data = prepare_stage_data(recipe, tokenizer)
    eval_dataset = data.test if len(data.test) else None
    if eval_dataset is not None or args.eval_strategy != "no":
        refuse_fsdp2_evaluation(args, recipe.stage)
    if recipe.lora:  # adapters go on a checkpoint they can name (saved to {output_dir}/base when in memory only)
        model = lora_base_model(recipe.model, tokenizer, args.output_dir, args.seed, device=args.device)
    else:
        model = build_model(recipe.model, tokenizer, seed=args.seed, device=args.device)
    logger.info("%s: model %s (%s, %.1fM parameters)", recipe.stage, recipe.model.name_or_path or "random init",
                recipe.model.init, model.num_parameters() / 1e6)

    peft_config = jetmoe_lora_config(recipe.lora) if recipe.lora else None
    prepare_for_sharding(model)  # before the trainer: DPO's reference copy is wrapped in its constructor
    silence_known_floods(args)
    trainer = make_trainer(args, model, tokenizer, data.train, eval_dataset, peft_config=peft_config)
    trainer.add_callback(MetricsToTrainLog())
    trainer.use_run_settings(settings, changed_on_resume=bool(changes))
    trainer.guard = recipe.guard
    if peft_config:
        stock_loadable(trainer.model)
    if resume_from:
        logger.info("%s: resuming from %s%s", recipe.stage, resume_from,
                    f", with changed settings (accepted): {describe(changes)}" if changes else "")
    with host_threads_for(args):
        result = trainer.train(resume_from_checkpoint=resume_from)
    save_final_model(trainer, output_dir)
    eval_metrics = trainer.evaluate() if eval_dataset is not None else None
    if trainer.is_world_process_zero():
        metrics = {"train": train_metrics(result, resumed_step, resumed_tally is not None, output_dir)}
        if eval_metrics is not None:
            metrics["eval"] = eval_metrics
        write_json_atomically(output_dir / "metrics.json", metrics)
        resumed = changes_record(changes, trainer.optimizer_in_use)
        record = run_record(recipe, data, resume_from, started, settings, resumed)
        write_json_atomically(output_dir / "run.json", record)
        write_json_atomically(output_dir / "trainer_state.json", dataclasses.asdict(trainer.state))  # log history
        plots = plot_log_history(trainer.state.log_history, output_dir, recipe.stage)
        logger.info("%s: wrote %s (checkpoint, tokenizer, metrics.json, run.json, trainer_state.json, train.log, %s)",
                    recipe.stage, output_dir, ", ".join(path.name for path in plots))
    trainer.accelerator.wait_for_everyone()  # other ranks read these files next (DPO's start, the summary)
    release_engines(trainer)
    return output_dir


def save_final_model(trainer, output_dir: Path) -> None:
    """Safetensors + config + generation config + tokenizer with its chat template (or the LoRA adapter), each
    file replacing its namesake in one step; never from weights holding a NaN."""
    trainer.assert_finite_weights("the stage's output")
    with staged_directory(output_dir, is_writer=trainer.args.should_save,
                          barrier=trainer.accelerator.wait_for_everyone) as staging:
        trainer.save_model(str(staging))


def prepare_stage_data(recipe: Recipe, tokenizer) -> PreparedData:
    """The stage's data as its trainer takes it, prepared once and shared (`align.data.prepare`)."""
    return prepare_data(recipe.data, tokenizer, TrainerShape.from_args(recipe.training, recipe.data.kind))


def train_metrics(result: TrainOutput, resumed_step: int | None, tallied: bool, output_dir: Path) -> dict:
    """A resumed run that had already finished trains no step: it keeps the train metrics of the run that trained
    (when that run got as far as writing them), or else the whole-run `train_loss` of its checkpoint's loss tally
    (`tallied`; e.g. after a full disk cut the final writes short)."""
    if resumed_step is None or result.global_step > resumed_step:
        return result.metrics
    previous = output_dir / "metrics.json"
    try:
        return json.loads(previous.read_text())["train"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as error:  # damaged by an older version (a 0-byte file)
        logger.warning("%s: unreadable (%s): written afresh", previous, error)
    return {key: value for key, value in result.metrics.items() if tallied or key != "train_loss"}
