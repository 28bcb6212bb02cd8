"""End-to-end SFT and DPO stage benchmark: our stage code (`align.training.stage.run_stage` with our SFT/DPO
trainers on our JetMoE) against stock TRL `SFTTrainer`/`DPOTrainer` on transformers' `JetMoeForCausalLM`, full
fine-tuning or LoRA, on the same synthetic data with realistic lengths (`bench/synthetic_data.py`), one table +
JSON.

    PYTHONPATH=. python bench/bench_stages.py --stage sft --mode lora --steps 12 --warmup 2 --out sft_lora.json
    PYTHONPATH=. python bench/bench_stages.py --stage dpo --mode full --layers 8 --set activation_checkpointing=false
    accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml --num_processes 2 \\
        bench/bench_stages.py --stage sft --mode full --out sft_full_zero3.json
    PYTHONPATH=. python bench/bench_stages.py --tiny --stage sft --steps 2 --warmup 0   # CPU smoke run

Ours: the JetMoE-8B recipe (`recipes/jetmoe-8b-chat/{sft,dpo}/config_{full,lora}.yaml`) with the model a random
init of `align/assets/jetmoe-8b` (vocab 32000), the tiny tokenizer, the synthetic data, `max_steps`, gradient
accumulation 1, no saving or evaluation, then `--set KEY=VALUE` (ours only, recipe override names:
`per_device_train_batch_size=8`, `packing=true`, `model.moe_backend=torch`). The final `save_model` of the stage
is skipped: it is not training. Stock: the same model config, TRL configs with the recipe's micro-batch, max
length, learning rate, schedule, bf16, `assistant_only_loss` (SFT), `beta` (DPO), no packing, TRL defaults
otherwise, then `--stock-set KEY=VALUE`; LoRA through stock PEFT with the recipe's rank, alpha and targets
(`kv_proj` as a module, expert weights through `target_parameters`) but dropout 0 (stock PEFT refuses dropout on
`target_parameters`). Transformers' JetMoe does not support gradient checkpointing, so the stock side runs without
it (the output says so). `--layers` and `--tiny` change the model shape of both sides.

Measured per optimizer step, on each side alike (a callback and a wrapper of the trainer's data collator): wall
time between consecutive step ends on the GPU's clock (CUDA events, read after training: the host is not
made to wait for the GPU between steps), real and processed tokens of the micro-batches the step
consumed (`count_tokens` gives the rule), model FLOPs (`model_flops`), loss. Summaries are over the steps after
`--warmup`: real tokens/s = their real tokens / their time, TFLOP/s and MFU (model FLOPs / time, against the GPU's
datasheet dense bf16 peak from TRL's table: 989 TFLOP/s for an H100 or H200), median and worst step time, peak
`torch.cuda.max_memory_allocated()` over the run. Under `accelerate launch` every number is per GPU (rank 0's
batches and memory); only rank 0 prints.

FLOP convention (`model_flops`), the same for both sides: a forward costs, per token, 2 x the parameters it
passes through (kv_proj, its top-k MoA query and output experts, its top-k MLP experts, both routers, the LM head:
`active_parameters`), plus causal attention, 2 x n^2 x (top_k x kv_heads) x head_dim per layer for a sequence of
n tokens (QK^T and AV over the causal half). Full fine-tuning counts 3 forwards a token (forward, activation and
weight gradients), LoRA 2 (forward and activation gradients; the adapters' own FLOPs left out); DPO adds the
reference forward (1), also when it is precomputed (`--set precompute_ref_log_probs=true`): the reference pass
before training is then timed, and its time per sequence is added to the steps for the sequences they train on,
so real tokens/s and MFU count it; `steps_only_real_tokens_per_s` leaves it out. Recomputation under activation checkpointing is
not counted. Tokens are the real tokens of TRL's batch layout: a DPO pair's prompt counts in its chosen and its
rejected row, as stock computes it, so prefix sharing (ours computes each prompt once) shows as model FLOPs it did
not have to execute. `--prefix-sharing both` runs ours twice, with and without it (`ours, prompts twice`).
"""

import argparse
import contextlib
import copy
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO)]  # this tree's align, not an installed copy, also under accelerate
import synthetic_data  # noqa: E402

from align.config.recipes import load_recipe, parse_overrides  # noqa: E402
from align.data import load_mixture  # noqa: E402
from align.model.model_loading import model_config  # noqa: E402
from align.model.tokenizer import load_tokenizer  # noqa: E402
from align.training.dpo import dpo_trainer  # noqa: E402
from align.training.sft import sft_trainer  # noqa: E402
from align.training.stage import run_stage  # noqa: E402
from jetmoe_model.packing import PACK_MULTIPLE  # noqa: E402
from step_phases import StackSampler, attach_phase_timer  # noqa: E402

MODEL_CONFIG = "align/assets/jetmoe-8b"
TOKENIZER = "recipes/tiny/tokenizer"
JETMOE_VOCAB = 32000
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_key_value_heads=2, kv_channels=16, intermediate_size=128,
                  num_local_experts=4, num_experts_per_tok=2, vocab_size=1024)  # fmt: skip
DATA_KIND = {"sft": "sft", "dpo": "preference"}
TRAIN_SPLIT = {"sft": synthetic_data.SFT_SPLITS[0], "dpo": synthetic_data.PREFERENCE_SPLITS[0]}
OUR_TRAINERS = {"sft": sft_trainer, "dpo": dpo_trainer}
UNSHARED = "ours, prompts twice"  # ours without prefix sharing


def recipe_path(stage: str, mode: str) -> Path:
    return REPO / "recipes" / "jetmoe-8b-chat" / stage / f"config_{mode}.yaml"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def say(text: str) -> None:
    if is_main_process():
        print(text, flush=True)


# --- counting tokens and timing steps -----------------------------------------------------------------------------


def count_tokens(batch: dict, pad_token_id: int, unpadding_model: bool = False) -> tuple[int, int]:
    """(real, processed) tokens of one collated batch. Real = `attention_mask.sum()` when the batch has a mask
    (padded and packed batches: every masked-in token is part of a sequence); a padding-free batch (no mask,
    sequences concatenated, `position_ids`) counts every token before its trailing run of `pad_token_id` (the
    `pad_to_multiple_of` tail). Processed: what the model computes. Stock: `input_ids.numel()`, what the batch
    tensor holds. Ours (`unpadding_model`): the real tokens rounded up to the packed row's multiple, since our
    model drops padding before its layers (`jetmoe_model.packing`)."""
    input_ids = batch["input_ids"]
    if batch.get("attention_mask") is not None:
        real = int(batch["attention_mask"].sum())
    else:
        not_pad = (input_ids.reshape(-1) != pad_token_id).nonzero()
        real = int(not_pad[-1]) + 1 if len(not_pad) else 0
    if unpadding_model:
        return real, -(-real // PACK_MULTIPLE) * PACK_MULTIPLE
    return real, input_ids.numel()


def sequence_lengths(batch: dict) -> list[int]:
    """The lengths of a collated batch's sequences, for the attention FLOPs: its mask's rows (a DPO batch's chosen
    and rejected rows are two sequences), or a packed row's runs between position-id restarts."""
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].sum(1).tolist()
    positions = batch["position_ids"].reshape(-1)
    starts = (positions == 0).nonzero().squeeze(1).tolist() + [len(positions)]
    return [end - start for start, end in zip(starts[:-1], starts[1:])]


def active_parameters(config) -> int:
    """Parameters one token's forward passes through (see the FLOP convention above); transformers' and our
    JetMoE configs have the same fields."""
    hidden, attn = config.hidden_size, config.kv_channels * config.num_key_value_heads
    top_k, experts = config.num_experts_per_tok, config.num_local_experts
    per_layer = (2 * hidden * attn + 2 * top_k * hidden * attn + 3 * top_k * hidden * config.intermediate_size
                 + 2 * hidden * experts)  # fmt: skip
    return config.num_hidden_layers * per_layer + hidden * config.vocab_size


def forwards_per_token(stage: str, lora: bool) -> int:
    """Forward-equivalents of one training step per token: policy forward + backward, and DPO's reference
    (in the step, or in a precomputed pass whose time is added to the steps)."""
    return (2 if lora else 3) + (1 if stage == "dpo" else 0)


def model_flops(config, lengths: list[int], forwards: int) -> float:
    """Model FLOPs of one micro-batch of sequences of `lengths` (the convention above)."""
    attention = 2 * config.num_experts_per_tok * config.num_key_value_heads * config.kv_channels
    per_forward = 2 * active_parameters(config) * sum(lengths) + (
        config.num_hidden_layers * attention * sum(n * n for n in lengths))
    return forwards * per_forward


class CountingCollator:
    """Wraps a trainer's data collator; notes each batch's (real, processed) tokens, its sequences' lengths and the
    seconds its collation took (ours plans the batch's layout there) in the batch itself (`COUNTS`), computed where
    the batch is collated, in a data loader worker with `dataloader_num_workers`; `attach_measuring` takes them out
    again as the trainer consumes the batch."""

    def __init__(self, collator, pad_token_id: int, unpadding_model: bool):
        self.collator, self.pad_token_id, self.unpadding_model = collator, pad_token_id, unpadding_model

    def __call__(self, examples):
        started = time.perf_counter()
        batch = self.collator(examples)
        collate_s = time.perf_counter() - started
        counts = (*count_tokens(batch, self.pad_token_id, self.unpadding_model), sequence_lengths(batch), collate_s)
        return {**batch, COUNTS: counts}


COUNTS = "bench_counts"  # the batch key `CountingCollator` adds; removed before the model sees the batch


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepRecorder(TrainerCallback):
    """Step end times (when the GPU finished each step: a CUDA event recorded at the step's end, read after
    training, so that measuring does not make the host wait for the GPU between steps, which our trainers avoid),
    the run's peak memory and log; the counts of the batches the steps train on (`CountingCollator`), noted as
    the trainer takes each in. Batches taken in before training (DPO's precomputed reference pass) are dropped."""

    def __init__(self):
        self.batches: list[tuple[int, int, list[int], float]] = []  # each consumed batch's counts, in order
        self.start, self.ends, self.peak_gib, self.log_history, self.model_config = None, [], None, [], None
        self.reference_pass = None  # DPO's precomputed reference pass: its seconds and sequences
        self._marks = []

    @staticmethod
    def _mark():
        if not torch.cuda.is_available():
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def on_train_begin(self, args, state, control, **kwargs):
        self.batches.clear()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        synchronize()
        self._marks = [self._mark()]

    def on_step_end(self, args, state, control, **kwargs):
        self._marks.append(self._mark())

    def on_train_end(self, args, state, control, **kwargs):
        """Step ends as seconds from the start."""
        synchronize()
        first, *ends = self._marks
        self.start = 0.0
        cuda = torch.cuda.is_available()
        self.ends = [first.elapsed_time(end) / 1e3 if cuda else end - first for end in ends]
        self.log_history = state.log_history  # the trainer's state object is replaced when training starts
        if torch.cuda.is_available():
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30


HOST_CALLS = {  # what the host asks of the GPU, by the runtime calls that do it
    "kernel launches": {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx"},
    "host syncs": {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"},
    "copies": {"cudaMemcpyAsync", "cudaMemcpy"},
}


class StepProfiler(TrainerCallback):
    """`torch.profiler` over `steps` optimizer steps from `first`: where their host and GPU time go, as two tables
    (ops by host time, by GPU time), the GPU's busy share of the wall time and the kernel launches, host syncs and
    copies a step, written to `path`; then cProfile over the following steps to the end of training (the Python
    functions behind the host time), written beside it, as tables and as `pstats` data."""

    def __init__(self, path: str, first: int, steps: int):
        self.path, self.first, self.steps, self.profiler, self.began = path, first, steps, None, None

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.first and self.profiler is None and is_main_process():
            activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.profiler is None or state.global_step != self.first + self.steps:
            return
        synchronize()
        wall_us = (time.perf_counter() - self.began) * 1e6
        self.profiler.__exit__(None, None, None)
        events = self.profiler.key_averages()
        gpu_us = sum(event.self_device_time_total for event in events)
        calls = {name: sum(e.count for e in events if e.key in keys) for name, keys in HOST_CALLS.items()}
        per_step = ", ".join(f"{name} {count / self.steps:,.0f}" for name, count in calls.items())
        report = [f"{self.steps} steps from step {self.first}: wall {wall_us / 1e3:.0f} ms, GPU kernels "
                  f"{gpu_us / 1e3:.0f} ms ({100 * gpu_us / wall_us:.0f}% busy); a step: {per_step}", "",
                  events.table(sort_by="self_cpu_time_total", row_limit=40), "",
                  events.table(sort_by="self_device_time_total", row_limit=40)]
        Path(self.path).write_text("\n".join(report), encoding="utf-8")
        say(report[0] + f" (tables in {self.path})")
        self.profiler = None
        self.host_profile = cProfile.Profile()
        self.host_profile.enable()

    def on_train_end(self, args, state, control, **kwargs):
        """The Python functions behind the host time, over the steps after the torch profile (its own overhead
        left out): `path` with `_python.txt`."""
        if getattr(self, "host_profile", None) is None:
            return
        self.host_profile.disable()
        text = io.StringIO()
        stats = pstats.Stats(self.host_profile, stream=text)
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(60)
        Path(self.path.replace(".txt", "_python.txt")).write_text(text.getvalue(), encoding="utf-8")
        self.host_profile.dump_stats(self.path.replace(".txt", ".pstats"))  # for `pstats` by caller, callee


def attach_measuring(trainer, pad_token_id: int, profile: str | None = None, first_profiled: int = 0,
                     profiled_steps: int = 3) -> StepRecorder:  # fmt: skip
    if profile:
        trainer.add_callback(StepProfiler(profile, first_profiled, profiled_steps))
    unpadding_model = getattr(trainer.accelerator.unwrap_model(trainer.model).config, "padding_free", False)
    trainer.data_collator = CountingCollator(trainer.data_collator, pad_token_id, unpadding_model)
    recorder = StepRecorder()
    prepare_inputs = trainer._prepare_inputs

    def counted_inputs(inputs):  # every batch a step trains on passes here first, in the trainer's process
        recorder.batches.append(inputs.pop(COUNTS))
        return prepare_inputs(inputs)

    trainer._prepare_inputs = counted_inputs
    recorder.model_config = trainer.accelerator.unwrap_model(trainer.model).config
    trainer.add_callback(recorder)
    return recorder


def step_records(recorder: StepRecorder, accumulation: int, config=None, forwards: int = 0) -> list[dict]:
    """One record per optimizer step: its seconds, the real and processed tokens of its micro-batches, their model
    FLOPs (with the model's `config`), their collation's seconds, its loss."""
    losses = {entry["step"]: entry["loss"] for entry in recorder.log_history if "loss" in entry}
    starts = [recorder.start] + recorder.ends[:-1]
    records = []
    for index, (start, end) in enumerate(zip(starts, recorder.ends)):
        batches = recorder.batches[index * accumulation:(index + 1) * accumulation]
        flops = sum(model_flops(config, b[2], forwards) for b in batches) if config else None
        records.append({"step": index + 1, "seconds": end - start, "real_tokens": sum(b[0] for b in batches),
                        "sequences": sum(len(b[2]) for b in batches), "collate_s": sum(b[3] for b in batches),
                        "processed_tokens": sum(b[1] for b in batches), "model_flops": flops,
                        "loss": losses.get(index + 1)})  # fmt: skip
    return records


def summarise(steps: list[dict], warmup: int, reference_s_per_sequence: float = 0.0) -> dict:
    """Throughput and step-time spread over the steps after `warmup` (all steps if there are no more); a
    precomputed reference pass's time per sequence is added for the sequences the steps train on."""
    timed = steps[warmup:] or steps
    steps_seconds = sum(step["seconds"] for step in timed)
    seconds = steps_seconds + reference_s_per_sequence * sum(step["sequences"] for step in timed)
    real = sum(step["real_tokens"] for step in timed)
    processed = sum(step["processed_tokens"] for step in timed)
    times = [step["seconds"] for step in timed]
    median = statistics.median(times)
    flops = [step.get("model_flops") for step in timed]
    tflops = sum(flops) / seconds / 1e12 if None not in flops else None
    peak = peak_tflops()
    return {
        "timed_steps": len(timed),
        "real_tokens_per_s": real / seconds,
        "steps_only_real_tokens_per_s": real / steps_seconds,
        "processed_tokens_per_s": processed / seconds,
        "model_tflops_per_s": tflops,
        "mfu": tflops / peak if tflops is not None and peak else None,
        "padding_fraction": 1 - real / processed,
        "median_step_s": median,
        "worst_step_s": max(times),
        "worst_over_median": max(times) / median,
        "median_collate_ms": 1e3 * statistics.median(step["collate_s"] for step in timed),
    }


def peak_tflops() -> float | None:
    """The GPU's datasheet dense bf16 peak (TRL's table), None on CPU or an unknown GPU."""
    from trl.trainer.utils import get_peak_flops

    if not torch.cuda.is_available():
        return None
    peak = get_peak_flops(torch.cuda.get_device_name(), "bfloat16")
    return peak / 1e12 if peak else None


def side_result(side: str, recorder: StepRecorder, args, warmup: int, notes: list[str], stage: str,
                lora: bool) -> dict:  # fmt: skip
    forwards = forwards_per_token(stage, lora)
    steps = step_records(recorder, args.gradient_accumulation_steps, recorder.model_config, forwards)
    reference = recorder.reference_pass
    per_sequence = reference["seconds"] / reference["sequences"] if reference else 0.0
    return {"side": side, "micro_batch": args.per_device_train_batch_size, "reference_pass": reference,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_length": args.max_length,
            "activation_checkpointing": bool(args.activation_checkpointing), "notes": notes,
            **summarise(steps, warmup, per_sequence), "peak_gib": recorder.peak_gib,
            "losses": [step["loss"] for step in steps], "steps": steps}  # fmt: skip


# --- the recipe and the data ---------------------------------------------------------------------------------------


def key_values(pairs: list[str]) -> dict:
    """["a=1", "model.dtype=float32"] -> recipe overrides, read as the recipe reads command-line values."""
    return parse_overrides([f"--{pair}" for pair in pairs])


def bench_overrides(cli, data_dir: Path, output_dir: Path) -> dict:
    """What turns a JetMoE-8B recipe into a benchmark run: random init, tiny tokenizer, synthetic data, a fixed
    number of steps without saving or evaluating. Logging stays the recipe's (every 10 steps): a log reads the loss
    back to the host, which would make every step wait for the GPU."""
    split = TRAIN_SPLIT[cli.stage]
    shape = dict(TINY_SHAPE) if cli.tiny else {"vocab_size": JETMOE_VOCAB}
    if cli.layers:
        shape["num_hidden_layers"] = cli.layers
    overrides = {
        "model.name_or_path": str(REPO / MODEL_CONFIG), "model.init": "random",
        "tokenizer.name_or_path": str(REPO / TOKENIZER),
        "data.sources": [{"path": str(data_dir), "train_split": split, "test_split": None}],
        "output_dir": str(output_dir), "max_steps": cli.steps, "gradient_accumulation_steps": 1,
        "save_strategy": "no", "eval_strategy": "no", "report_to": "none",
        **{f"model.config.{key}": value for key, value in shape.items()},
    }  # fmt: skip
    if not torch.cuda.is_available():  # CPU smoke run: float32, no bf16 autocast
        overrides.update({"model.dtype": "float32", "bf16": False, "use_cpu": True})
    return overrides


def synthetic_dataset(cli, work_dir: Path) -> tuple[Path, dict]:
    """The synthetic train split (and its realised token lengths) for the stage."""
    tokenizer = load_tokenizer(str(REPO / TOKENIZER))
    directory = synthetic_data.write_dataset(work_dir / "data", DATA_KIND[cli.stage], tokenizer, cli.rows, cli.seed)
    rows = synthetic_data.read_rows(directory, TRAIN_SPLIT[cli.stage])
    return directory, synthetic_data.length_statistics(rows, tokenizer)


# --- our side ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def timed_reference_pass(into: dict):
    """Times DPO's precomputed reference pass over the train split, which TRL runs while the trainer is built."""
    from trl import DPOTrainer

    original = DPOTrainer._precompute_ref_logps

    def timed(self, dataset, name, batch_size):
        synchronize()
        started = time.perf_counter()
        result = original(self, dataset, name, batch_size)
        synchronize()
        if name == "train":
            into["reference_pass"] = {"seconds": time.perf_counter() - started, "sequences": 2 * len(dataset),
                                      "batch_size": batch_size}  # fmt: skip
        return result

    DPOTrainer._precompute_ref_logps = timed
    try:
        yield
    finally:
        DPOTrainer._precompute_ref_logps = original


def measuring_factory(build, measured: dict, cli, side: str = "ours"):
    """A `run_stage` trainer factory: our trainer with the measuring callback, the final save_model skipped."""

    def make_trainer(args, model, tokenizer, train_dataset, eval_dataset=None, peft_config=None):
        with timed_reference_pass(measured):
            trainer = build(args, model, tokenizer, train_dataset, eval_dataset, peft_config=peft_config)
        measured["recorder"] = attach_measuring(trainer, tokenizer.pad_token_id, *profiling(cli, side))
        measured["recorder"].reference_pass = measured.get("reference_pass")
        if cli.phases:
            measured["phases"] = attach_phase_timer(trainer)
        if cli.sample:
            trainer.add_callback(StackSampler(f"{cli.sample}_{side}.txt", cli.warmup, 3))
        trainer.save_model = lambda *args, **kwargs: None
        return trainer

    return make_trainer


def run_ours(cli, recipe, side: str = "ours") -> dict:
    measured = {}
    run_stage(recipe, measuring_factory(OUR_TRAINERS[cli.stage], measured, cli, side))
    if cli.phases:
        say(f"{side}: step phases, medians after the warm-up\n{measured['phases'].table(cli.warmup)}")
    notes = [f"recipe {Path(recipe.path).relative_to(REPO)}"] + [f"--set {pair}" for pair in cli.set]
    if cli.stage == "dpo":
        notes.append(f"prefix sharing {'on' if recipe.model.config.get('share_pair_prefix', True) else 'off'}")
    return side_result(side, measured["recorder"], recipe.training, cli.warmup, notes, cli.stage, bool(recipe.lora))


def without_prefix_sharing(recipe):
    """Our recipe with each DPO pair's prompt computed in both its rows, as before prefix sharing."""
    recipe = copy.deepcopy(recipe)
    recipe.model.config = {**recipe.model.config, "share_pair_prefix": False}
    recipe.training.output_dir = f"{recipe.training.output_dir}_unshared"
    return recipe


# --- the stock side ------------------------------------------------------------------------------------------------


def stock_config(recipe, tokenizer):
    """transformers' `JetMoeConfig` of the model our recipe builds (same shape, vocabulary, special tokens)."""
    import dataclasses

    from transformers import JetMoeConfig

    ours = model_config(recipe.model, tokenizer).to_dict()
    fields = {field.name for field in dataclasses.fields(JetMoeConfig)}
    return JetMoeConfig(**{key: value for key, value in ours.items() if key in fields})


def stock_training_args(cli, recipe, checkpointing_supported: bool):
    """TRL's config with our recipe's micro-batch, length, optimisation, precision and data loader workers; TRL
    defaults otherwise."""
    from align.config.recipes import training_config_class

    ours = recipe.training
    checkpointing = bool(ours.activation_checkpointing) and checkpointing_supported
    values = dict(
        output_dir=ours.output_dir, seed=ours.seed, max_steps=ours.max_steps,
        per_device_train_batch_size=ours.per_device_train_batch_size,
        gradient_accumulation_steps=ours.gradient_accumulation_steps, learning_rate=ours.learning_rate,
        lr_scheduler_type=ours.lr_scheduler_type, warmup_steps=ours.warmup_steps, max_length=ours.max_length,
        bf16=ours.bf16, use_cpu=ours.use_cpu, logging_steps=ours.logging_steps, save_strategy="no", eval_strategy="no",
        report_to="none", activation_checkpointing=checkpointing, gradient_checkpointing=checkpointing,
        dataloader_num_workers=ours.dataloader_num_workers, dataloader_prefetch_factor=ours.dataloader_prefetch_factor,
        dataloader_persistent_workers=ours.dataloader_persistent_workers,
    )  # fmt: skip
    if cli.stage == "sft":
        values["assistant_only_loss"] = ours.assistant_only_loss
    else:
        values.update(beta=ours.beta, precompute_ref_log_probs=ours.precompute_ref_log_probs)
    values.update({key: yaml.safe_load(value) for key, value in key_values(cli.stock_set).items()})
    return training_config_class(cli.stage)(**values)


def stock_model(config, dtype: torch.dtype, device: torch.device):
    """Built straight in its dtype: on this process's GPU, or sharded by `zero.Init` under ZeRO-3 (the TRL config,
    created before, tells transformers that ZeRO-3 is on)."""
    from transformers import JetMoeForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        model = JetMoeForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
        mark_decoder_layers_as_leaves(model)
        return model
    with device:
        return JetMoeForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")


def mark_decoder_layers_as_leaves(model) -> None:
    """ZeRO-3 gathers each decoder layer whole: transformers' MoA, like ours, is used through `map`/`reduce`,
    outside its forward hook, and every rank must gather every expert whatever its tokens chose. With only the
    attention and MoE layers as leaves (as `align.training.distributed` marks ours) DeepSpeed's backward failed on
    transformers' JetMoe ("The size of tensor a (0) must match the size of tensor b (hidden)", on 2 H200s and with
    `--tiny` on CPU); whole decoder layers run."""
    from deepspeed.utils import set_z3_leaf_modules
    from transformers.models.jetmoe.modeling_jetmoe import JetMoeDecoderLayer

    set_z3_leaf_modules(model, [JetMoeDecoderLayer])


def stock_lora_config(recipe):
    """Stock PEFT: the recipe's rank, alpha and targets; dropout 0, which stock PEFT requires on expert weights."""
    from peft import LoraConfig

    from align.lora.arguments import EXPERT_PROJECTIONS, MODULE_TARGETS

    lora = recipe.lora
    return LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.alpha, lora_dropout=0.0,
                      target_modules=[name for name in lora.targets if name in MODULE_TARGETS],
                      target_parameters=[f"{name}.weight" for name in lora.targets if name in EXPERT_PROJECTIONS])


def stock_trainer(stage: str, args, model, tokenizer, train_dataset, peft_config):
    from transformers.integrations import is_deepspeed_zero3_enabled
    from trl import DPOTrainer, SFTTrainer

    if stage == "sft":
        return SFTTrainer(model=model, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                          peft_config=peft_config)
    reference = None
    if peft_config is None and not args.precompute_ref_log_probs:
        if is_deepspeed_zero3_enabled():
            raise NotImplementedError("stock full DPO under ZeRO-3: a model built in memory has no frozen copy here")
        reference = copy.deepcopy(model).eval().requires_grad_(False)  # TRL would reload the policy by name
    return DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=train_dataset,
                      processing_class=tokenizer, peft_config=peft_config)


def run_stock(cli, recipe) -> dict:
    from transformers import JetMoeForCausalLM
    from transformers.integrations import is_deepspeed_zero3_enabled

    tokenizer = load_tokenizer(recipe.tokenizer_name_or_path, recipe.tokenizer.chat_template)
    supported = JetMoeForCausalLM.supports_gradient_checkpointing
    args = stock_training_args(cli, recipe, supported)
    notes = [f"--stock-set {pair}" for pair in cli.stock_set]
    if recipe.training.activation_checkpointing and not supported:
        notes.append("activation checkpointing off: transformers' JetMoe does not support it")
    if is_deepspeed_zero3_enabled():
        notes.append("ZeRO-3: each decoder layer gathered whole (a leaf module; ours gathers attention and MoE)")
    if recipe.lora:
        notes.append(f"LoRA dropout 0 (recipe: {recipe.lora.dropout}): stock PEFT refuses it on target_parameters")
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = stock_model(stock_config(recipe, tokenizer), dtype, args.device)
    splits, _ = load_mixture(recipe.data, tokenizer)  # the rows, in the order, that our stage trains on
    peft_config = stock_lora_config(recipe) if recipe.lora else None
    measured = {}
    with timed_reference_pass(measured):
        trainer = stock_trainer(cli.stage, args, model, tokenizer, splits["train"], peft_config)
    recorder = attach_measuring(trainer, tokenizer.pad_token_id, *profiling(cli, "stock"))
    recorder.reference_pass = measured.get("reference_pass")
    trainer.train()
    return side_result("stock", recorder, args, cli.warmup, notes, cli.stage, bool(recipe.lora))


def profiling(cli, side: str) -> tuple:
    """`attach_measuring`'s profiling arguments: `--profile PREFIX` profiles 3 steps after the warm-up."""
    name = side.replace(", ", "_").replace(" ", "_")
    return (f"{cli.profile}_{name}.txt", cli.warmup, 3) if cli.profile else (None,)


# --- running, reporting --------------------------------------------------------------------------------------------


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_side(side: str, run, cli, recipe) -> dict:
    """One side's result, or its error when it runs out of memory (the other side still runs)."""
    try:
        return run(cli, recipe) if side == "stock" else run(cli, recipe, side)
    except torch.OutOfMemoryError as error:
        return {"side": side, "error": f"out of memory: {str(error).splitlines()[0]}"}
    finally:
        free_memory()


def ratio(results: list[dict]) -> float | None:
    """ours / stock real tokens per second, when both sides ran."""
    speeds = {result["side"]: result.get("real_tokens_per_s") for result in results}
    if speeds.get("ours") and speeds.get("stock"):
        return speeds["ours"] / speeds["stock"]
    return None


def table(results: list[dict], stage: str, mode: str) -> str:
    rows = ["| side | stage | mode | micro-batch | real tok/s | model TFLOP/s | MFU % | processed tok/s | padding % | "
            "median step s | worst step s | worst/median | peak GiB | collate ms |", "|---" * 14 + "|"]
    for result in results:
        if "error" in result:
            rows.append(f"| {result['side']} | {stage} | {mode} | - | {result['error']} | | | | | | | | | |")
            continue
        peak = "-" if result["peak_gib"] is None else f"{result['peak_gib']:.1f}"
        tflops = "-" if result.get("model_tflops_per_s") is None else f"{result['model_tflops_per_s']:.1f}"
        mfu = "-" if result.get("mfu") is None else f"{100 * result['mfu']:.1f}"
        rows.append(
            f"| {result['side']} | {stage} | {mode} | {result['micro_batch']} | {result['real_tokens_per_s']:,.0f} | "
            f"{tflops} | {mfu} | {result['processed_tokens_per_s']:,.0f} | {100 * result['padding_fraction']:.1f} | "
            f"{result['median_step_s']:.3f} | {result['worst_step_s']:.3f} | {result['worst_over_median']:.2f} | "
            f"{peak} | {result['median_collate_ms']:.1f} |")  # fmt: skip
    stock = next((r["real_tokens_per_s"] for r in results if r["side"] == "stock" and "error" not in r), None)
    for result in results:
        if stock and result["side"] != "stock" and "error" not in result:
            speed = result["real_tokens_per_s"] / stock
            rows.append(f"| {result['side']} / stock | {stage} | {mode} | | **{speed:.2f}x** | | | | | | | | | |")
    return "\n".join(rows)


def git_commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain") else "")


def environment() -> dict:
    import peft
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "world_size": int(os.environ.get("WORLD_SIZE", "1")), "git_commit": git_commit(),
            "command": " ".join(sys.argv)}  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["sft", "dpo"], default="sft")
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--side", choices=["ours", "stock", "both"], default="both")
    parser.add_argument("--prefix-sharing", choices=["on", "off", "both"], default="on",
                        help="DPO: ours computes each pair's prompt once (on), in both rows (off), or runs both ways")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the summaries")
    parser.add_argument("--rows", type=int, default=512, help="synthetic train rows (tokenised by each side)")
    parser.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    parser.add_argument("--tiny", action="store_true", help="a tiny model shape (CPU smoke runs)")
    parser.add_argument("--layers", type=int, help="number of layers, both sides (default: the config's 24)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of our recipe only (recipe names: max_length=4096, model.moe_backend=torch)")
    parser.add_argument("--stock-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the stock TRL config (per_device_train_batch_size=8)")
    parser.add_argument("--out", default="bench_stages.json", help="the JSON result (rank 0)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (data, outputs)")
    parser.add_argument("--phases", action="store_true", help="ours: when the host and the GPU finish each phase "
                                                                "of a step (bench/step_phases.py), a table")
    parser.add_argument("--sample", metavar="PREFIX", help="ours: sample the host's Python stack over 3 steps after "
                                                            "the warm-up (bench/step_phases.py): PREFIX_ours.txt")
    parser.add_argument("--profile", metavar="PREFIX", help="profile 3 steps after the warm-up of each side: "
                                                            "PREFIX_ours.txt, PREFIX_stock.txt")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    cli = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="bench_stages_"))
    try:
        data_dir, lengths = synthetic_dataset(cli, work_dir)
        say(f"synthetic {DATA_KIND[cli.stage]} data, realised token lengths: {json.dumps(lengths)}")
        path = recipe_path(cli.stage, cli.mode)
        stock_recipe = load_recipe(path, cli.stage, bench_overrides(cli, data_dir, work_dir / "stock"))
        our_recipe = load_recipe(path, cli.stage, {**bench_overrides(cli, data_dir, work_dir / "ours"),
                                                   **key_values(cli.set)})  # fmt: skip
        sides = []
        if cli.side in ("ours", "both"):
            if cli.prefix_sharing in ("on", "both"):
                sides.append(("ours", run_ours, our_recipe))
            if cli.prefix_sharing in ("off", "both"):
                sides.append((UNSHARED, run_ours, without_prefix_sharing(our_recipe)))
        if cli.side in ("stock", "both"):
            sides.append(("stock", run_stock, stock_recipe))
        results = [run_side(side, run, cli, recipe) for side, run, recipe in sides]
    finally:
        if not cli.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    speedup = ratio(results)
    report = {"stage": cli.stage, "mode": cli.mode, "tiny": cli.tiny, "layers": cli.layers, "steps": cli.steps,
              "warmup": cli.warmup, "rows": cli.rows, "data_lengths": lengths, "environment": environment(),
              "results": results, "ours_over_stock_real_tokens_per_s": speedup}  # fmt: skip
    say(table(results, cli.stage, cli.mode))
    for result in results:
        for note in result.get("notes", []):
            say(f"{result['side']}: {note}")
    if is_main_process():
        Path(cli.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
        say(f"wrote {cli.out}")
    return report


if __name__ == "__main__":
    main()
