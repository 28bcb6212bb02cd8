"""End-to-end SFT and DPO stage benchmark: our stage code (`align.stage.run_stage` with our SFT/DPO trainers on our
JetMoE) against stock TRL `SFTTrainer`/`DPOTrainer` on transformers' `JetMoeForCausalLM`, full fine-tuning or LoRA,
on the same synthetic data with realistic lengths (`bench/synthetic_data.py`), one table + JSON.

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
time between consecutive step ends (CUDA synchronised), real and processed tokens of the micro-batches the step
consumed (`count_tokens` gives the rule), loss. Summaries are over the steps after `--warmup`: real tokens/s =
their real tokens / their time, median and worst step time, peak `torch.cuda.max_memory_allocated()` over the
run. Under `accelerate launch` every number is per GPU (rank 0's batches and memory); only rank 0 prints.
"""

import argparse
import copy
import gc
import json
import os
import platform
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

from align.data import load_mixture  # noqa: E402
from align.dpo import dpo_trainer  # noqa: E402
from align.model_loading import model_config  # noqa: E402
from align.recipes import load_recipe, parse_overrides  # noqa: E402
from align.sft import sft_trainer  # noqa: E402
from align.stage import run_stage  # noqa: E402
from align.tokenizer import load_tokenizer  # noqa: E402
from jetmoe_model.packing import PACK_MULTIPLE  # noqa: E402

MODEL_CONFIG = "align/assets/jetmoe-8b"
TOKENIZER = "recipes/tiny/tokenizer"
JETMOE_VOCAB = 32000
TINY_SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_key_value_heads=2, kv_channels=16, intermediate_size=128,
                  num_local_experts=4, num_experts_per_tok=2, vocab_size=1024)  # fmt: skip
DATA_KIND = {"sft": "sft", "dpo": "preference"}
TRAIN_SPLIT = {"sft": synthetic_data.SFT_SPLITS[0], "dpo": synthetic_data.PREFERENCE_SPLITS[0]}
OUR_TRAINERS = {"sft": sft_trainer, "dpo": dpo_trainer}


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


class CountingCollator:
    """Wraps a trainer's data collator; notes each batch's (real, processed) tokens, in the order the trainer
    consumes them (the data loader may collate one batch ahead: the list then holds one more)."""

    def __init__(self, collator, pad_token_id: int, unpadding_model: bool):
        self.collator, self.pad_token_id, self.unpadding_model = collator, pad_token_id, unpadding_model
        self.batches: list[tuple[int, int]] = []

    def __call__(self, examples):
        batch = self.collator(examples)
        self.batches.append(count_tokens(batch, self.pad_token_id, self.unpadding_model))
        return batch


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepRecorder(TrainerCallback):
    """Step end times (after the GPU finished the step), the run's peak memory and log; the steps' batches come
    from the collator wrapper. Batches collated before training (DPO's precomputed reference pass) are dropped."""

    def __init__(self, counter: CountingCollator):
        self.counter = counter
        self.start, self.ends, self.peak_gib, self.log_history = None, [], None, []

    def on_train_begin(self, args, state, control, **kwargs):
        self.counter.batches.clear()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        synchronize()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize()
        self.ends.append(time.perf_counter())

    def on_train_end(self, args, state, control, **kwargs):
        self.log_history = state.log_history  # the trainer's state object is replaced when training starts
        if torch.cuda.is_available():
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30


class StepProfiler(TrainerCallback):
    """`torch.profiler` over `steps` optimizer steps from `first`: where their host and GPU time go, as two tables
    (ops by host time, by GPU time) and the GPU's busy share of the wall time, written to `path`."""

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
        report = [f"{self.steps} steps from step {self.first}: wall {wall_us / 1e3:.0f} ms, GPU kernels "
                  f"{gpu_us / 1e3:.0f} ms ({100 * gpu_us / wall_us:.0f}% busy)", "",
                  events.table(sort_by="self_cpu_time_total", row_limit=40), "",
                  events.table(sort_by="self_device_time_total", row_limit=40)]
        Path(self.path).write_text("\n".join(report), encoding="utf-8")
        say(report[0] + f" (tables in {self.path})")


def attach_measuring(trainer, pad_token_id: int, profile: str | None = None, first_profiled: int = 0,
                     profiled_steps: int = 3) -> StepRecorder:  # fmt: skip
    if profile:
        trainer.add_callback(StepProfiler(profile, first_profiled, profiled_steps))
    unpadding_model = getattr(trainer.accelerator.unwrap_model(trainer.model).config, "padding_free", False)
    counter = CountingCollator(trainer.data_collator, pad_token_id, unpadding_model)
    trainer.data_collator = counter
    recorder = StepRecorder(counter)
    trainer.add_callback(recorder)
    return recorder


def step_records(recorder: StepRecorder, accumulation: int) -> list[dict]:
    """One record per optimizer step: its seconds, the real and processed tokens of its micro-batches, its loss."""
    losses = {entry["step"]: entry["loss"] for entry in recorder.log_history if "loss" in entry}
    starts = [recorder.start] + recorder.ends[:-1]
    records = []
    for index, (start, end) in enumerate(zip(starts, recorder.ends)):
        batches = recorder.counter.batches[index * accumulation:(index + 1) * accumulation]
        records.append({"step": index + 1, "seconds": end - start, "real_tokens": sum(real for real, _ in batches),
                        "processed_tokens": sum(processed for _, processed in batches),
                        "loss": losses.get(index + 1)})  # fmt: skip
    return records


def summarise(steps: list[dict], warmup: int) -> dict:
    """Throughput and step-time spread over the steps after `warmup` (all steps if there are no more)."""
    timed = steps[warmup:] or steps
    seconds = sum(step["seconds"] for step in timed)
    real = sum(step["real_tokens"] for step in timed)
    processed = sum(step["processed_tokens"] for step in timed)
    times = [step["seconds"] for step in timed]
    median = statistics.median(times)
    return {
        "timed_steps": len(timed),
        "real_tokens_per_s": real / seconds,
        "processed_tokens_per_s": processed / seconds,
        "padding_fraction": 1 - real / processed,
        "median_step_s": median,
        "worst_step_s": max(times),
        "worst_over_median": max(times) / median,
    }


def side_result(side: str, recorder: StepRecorder, args, warmup: int, notes: list[str]) -> dict:
    steps = step_records(recorder, args.gradient_accumulation_steps)
    return {"side": side, "micro_batch": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps, "max_length": args.max_length,
            "activation_checkpointing": bool(args.activation_checkpointing), "notes": notes,
            **summarise(steps, warmup), "peak_gib": recorder.peak_gib,
            "losses": [step["loss"] for step in steps], "steps": steps}  # fmt: skip


# --- the recipe and the data ---------------------------------------------------------------------------------------


def key_values(pairs: list[str]) -> dict:
    """["a=1", "model.dtype=float32"] -> recipe overrides, read as the recipe reads command-line values."""
    return parse_overrides([f"--{pair}" for pair in pairs])


def bench_overrides(cli, data_dir: Path, output_dir: Path) -> dict:
    """What turns a JetMoE-8B recipe into a benchmark run: random init, tiny tokenizer, synthetic data, a fixed
    number of steps without saving or evaluating."""
    split = TRAIN_SPLIT[cli.stage]
    shape = dict(TINY_SHAPE) if cli.tiny else {"vocab_size": JETMOE_VOCAB}
    if cli.layers:
        shape["num_hidden_layers"] = cli.layers
    overrides = {
        "model.name_or_path": str(REPO / MODEL_CONFIG), "model.init": "random",
        "tokenizer.name_or_path": str(REPO / TOKENIZER),
        "data.sources": [{"path": str(data_dir), "train_split": split, "test_split": None}],
        "output_dir": str(output_dir), "max_steps": cli.steps, "gradient_accumulation_steps": 1,
        "logging_steps": 1, "save_strategy": "no", "eval_strategy": "no", "report_to": "none",
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


def measuring_factory(build, measured: dict, cli):
    """A `run_stage` trainer factory: our trainer with the measuring callback, the final save_model skipped."""

    def make_trainer(args, model, tokenizer, train_dataset, eval_dataset=None, peft_config=None):
        trainer = build(args, model, tokenizer, train_dataset, eval_dataset, peft_config=peft_config)
        measured["recorder"] = attach_measuring(trainer, tokenizer.pad_token_id, *profiling(cli, "ours"))
        trainer.save_model = lambda *args, **kwargs: None
        return trainer

    return make_trainer


def run_ours(cli, recipe) -> dict:
    measured = {}
    run_stage(recipe, measuring_factory(OUR_TRAINERS[cli.stage], measured, cli))
    notes = [f"recipe {Path(recipe.path).relative_to(REPO)}"] + [f"--set {pair}" for pair in cli.set]
    return side_result("ours", measured["recorder"], recipe.training, cli.warmup, notes)


# --- the stock side ------------------------------------------------------------------------------------------------


def stock_config(recipe, tokenizer):
    """transformers' `JetMoeConfig` of the model our recipe builds (same shape, vocabulary, special tokens)."""
    import dataclasses

    from transformers import JetMoeConfig

    ours = model_config(recipe.model, tokenizer).to_dict()
    fields = {field.name for field in dataclasses.fields(JetMoeConfig)}
    return JetMoeConfig(**{key: value for key, value in ours.items() if key in fields})


def stock_training_args(cli, recipe, checkpointing_supported: bool):
    """TRL's config with our recipe's micro-batch, length, optimisation and precision; TRL defaults otherwise."""
    from align.recipes import training_config_class

    ours = recipe.training
    checkpointing = bool(ours.activation_checkpointing) and checkpointing_supported
    values = dict(
        output_dir=ours.output_dir, seed=ours.seed, max_steps=ours.max_steps,
        per_device_train_batch_size=ours.per_device_train_batch_size,
        gradient_accumulation_steps=ours.gradient_accumulation_steps, learning_rate=ours.learning_rate,
        lr_scheduler_type=ours.lr_scheduler_type, warmup_steps=ours.warmup_steps, max_length=ours.max_length,
        bf16=ours.bf16, use_cpu=ours.use_cpu, logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", activation_checkpointing=checkpointing, gradient_checkpointing=checkpointing,
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
    attention and MoE layers as leaves (as `align.distributed` marks ours) DeepSpeed's backward failed on
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
    trainer = stock_trainer(cli.stage, args, model, tokenizer, splits["train"], peft_config)
    recorder = attach_measuring(trainer, tokenizer.pad_token_id, *profiling(cli, "stock"))
    trainer.train()
    return side_result("stock", recorder, args, cli.warmup, notes)


def profiling(cli, side: str) -> tuple:
    """`attach_measuring`'s profiling arguments: `--profile PREFIX` profiles 3 steps after the warm-up."""
    return (f"{cli.profile}_{side}.txt", cli.warmup, 3) if cli.profile else (None,)


# --- running, reporting --------------------------------------------------------------------------------------------


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_side(side: str, run, cli, recipe) -> dict:
    """One side's result, or its error when it runs out of memory (the other side still runs)."""
    try:
        return run(cli, recipe)
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


def table(results: list[dict], stage: str, mode: str, speedup: float | None) -> str:
    rows = ["| side | stage | mode | micro-batch | real tok/s | processed tok/s | padding % | median step s | "
            "worst step s | worst/median | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        if "error" in result:
            rows.append(f"| {result['side']} | {stage} | {mode} | - | {result['error']} | | | | | | |")
            continue
        peak = "-" if result["peak_gib"] is None else f"{result['peak_gib']:.1f}"
        rows.append(
            f"| {result['side']} | {stage} | {mode} | {result['micro_batch']} | {result['real_tokens_per_s']:,.0f} | "
            f"{result['processed_tokens_per_s']:,.0f} | {100 * result['padding_fraction']:.1f} | "
            f"{result['median_step_s']:.3f} | {result['worst_step_s']:.3f} | {result['worst_over_median']:.2f} | "
            f"{peak} |")  # fmt: skip
    if speedup is not None:
        rows.append(f"| ours / stock | {stage} | {mode} | | **{speedup:.2f}x** | | | | | | |")
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
        sides = [("ours", run_ours, our_recipe), ("stock", run_stock, stock_recipe)]
        results = [run_side(side, run, cli, recipe) for side, run, recipe in sides if cli.side in (side, "both")]
    finally:
        if not cli.keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    speedup = ratio(results)
    report = {"stage": cli.stage, "mode": cli.mode, "tiny": cli.tiny, "layers": cli.layers, "steps": cli.steps,
              "warmup": cli.warmup, "rows": cli.rows, "data_lengths": lengths, "environment": environment(),
              "results": results, "ours_over_stock_real_tokens_per_s": speedup}  # fmt: skip
    say(table(results, cli.stage, cli.mode, speedup))
    for result in results:
        for note in result.get("notes", []):
            say(f"{result['side']}: {note}")
    if is_main_process():
        Path(cli.out).write_text(json.dumps(report, indent=1), encoding="utf-8")
        say(f"wrote {cli.out}")
    return report


if __name__ == "__main__":
    main()
