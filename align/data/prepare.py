"""Prepared data: a stage's mixture read, checked, tokenised, cut and packed once, kept on disk as Arrow datasets,
and reused by every rank and every relaunch.

    shape = TrainerShape.from_args(recipe.training, recipe.data.kind)
    prepared = prepare_data(recipe.data, tokenizer, shape)
    prepared.train, prepared.test   # memory-mapped `datasets.Dataset`s, ready for the trainer
    prepared.report                 # the DataReport: the same counts whether prepared now or reused
    prepared.path                   # {prepared_dir}/{kind}-{fingerprint}

What the trainer gets is what TRL's own preparation would make of the mixture: SFT `input_ids` and `labels` (-100
off the trained tokens), truncated to `max_length` or packed with `seq_lengths`; DPO `prompt_ids`, `chosen_ids`,
`rejected_ids` (and `length`, for token-balanced micro-batches). Rows TRL would drop after cutting are dropped and
counted here, per source. Every row is read, checked and tokenised once, in batches, by worker processes over the
node's cores; the results stream to disk, so memory does not grow with the row count.

Keyed by `fingerprint.py`. Written under a temporary name and renamed when complete, under a file lock: the first
process to take the lock prepares, any other (the other ranks of a launch, a second launch) waits and then
memory-maps the result. A process killed while preparing leaves only a temporary directory, which the next
preparer removes; it is never read.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, fields
from multiprocessing import get_context
from pathlib import Path

import datasets
import pyarrow as pa
from datasets import Dataset, Features, List, Value, load_from_disk
from datasets.arrow_writer import ArrowWriter
from datasets.utils.tqdm import tqdm
from filelock import FileLock, Timeout
from trl.data_utils import pack_dataset

from .encoding import encode_conversations, encode_pairs, pair_length, trained_tokens
from .errors import DataError, RowProblem
from .fingerprint import describe, fingerprint
from .formats import MESSAGE_LIST
from .mixing import RowChecks, SourcePlan, plan_source, problem_location, strict_error
from .report import DataReport
from .sources import RawRow
from .spec import DataMixture
from .truncation import TrainerTruncation
from .validation import Deduplicator, row_digest

logger = logging.getLogger(__name__)

TOKENS = List(Value("int32"))
ROW_FEATURES = {
    "sft": Features({"messages": MESSAGE_LIST, "input_ids": TOKENS, "labels": TOKENS}),
    "preference": Features({"prompt": MESSAGE_LIST, "chosen": MESSAGE_LIST, "rejected": MESSAGE_LIST,
                            "prompt_ids": TOKENS, "chosen_ids": TOKENS, "rejected_ids": TOKENS,
                            "length": Value("int64")}),
}
SPLITS = ("train", "test")
CHUNK_ROWS = 256  # rows a worker reads and tokenises in one batch
GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class TrainerShape:
    """The settings of a stage's TRL config (`SFTConfig`, `DPOConfig`) that cut and pack its rows, by TRL's names."""

    kind: str
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    assistant_only_loss: bool = False
    packing: bool = False
    packing_strategy: str = "bfd"
    eval_packing: bool | None = None
    shuffle_dataset: bool = False
    seed: int = 42
    dataset_num_proc: int | None = None  # TRL packs per process: it changes which rows share a packed row

    @classmethod
    def from_args(cls, args, kind: str) -> TrainerShape:
        names = [field.name for field in fields(cls) if field.name != "kind" and hasattr(args, field.name)]
        return cls(kind=kind, **{name: getattr(args, name) for name in names})

    def packs(self, split: str) -> bool:
        if self.kind != "sft":
            return False
        return self.packing if split == "train" or self.eval_packing is None else self.eval_packing


@dataclass
class PreparedData:
    train: Dataset
    test: Dataset
    report: DataReport
    path: Path
    fingerprint: str
    reused: bool  # found complete on disk, not prepared by this process

    def record(self) -> dict:
        """What run.json says of it."""
        return {"path": str(self.path), "fingerprint": self.fingerprint, "reused": self.reused}


def default_prepared_dir() -> Path:
    """`$JETMOE_ALIGN_PREPARED_DIR`, else the user's cache (`$XDG_CACHE_HOME` or ~/.cache)/jetmoe-align/prepared."""
    if os.environ.get("JETMOE_ALIGN_PREPARED_DIR"):
        return Path(os.environ["JETMOE_ALIGN_PREPARED_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jetmoe-align" / "prepared"


def prepare_data(mixture: DataMixture, tokenizer, shape: TrainerShape) -> PreparedData:
    """The prepared data of `mixture` for a trainer of `shape`: reused when complete on disk, else prepared now."""
    _check_template(tokenizer, shape)
    plans = []
    for position, source in enumerate(mixture.sources):
        logger.info("data: reading %s (%d/%d)", source.name, position + 1, len(mixture.sources))
        plans.append(plan_source(source, position, mixture))
    description = describe(mixture, _source_contents(plans), tokenizer, shape)
    key = f"{mixture.kind}-{fingerprint(description)}"
    directory = Path(mixture.prepared_dir) if mixture.prepared_dir else default_prepared_dir()
    final = directory / key
    reused = final.is_dir()
    if not reused:
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory / f".{key}.lock", key):
            reused = final.is_dir()  # another process may have finished it while this one waited
            if not reused:
                _build(final, plans, mixture, tokenizer, shape, description)
    if reused:
        logger.info("data: reusing prepared data %s", final)
    report = DataReport.from_dict(json.loads((final / "report.json").read_text(encoding="utf-8")))
    return PreparedData(*(_load_split(final / split, mixture.kind) for split in SPLITS), report, final, key, reused)


def _load_split(path: Path, kind: str) -> Dataset:
    if path.is_dir():
        return load_from_disk(str(path))
    features = ROW_FEATURES[kind]  # an empty split, not saved (see `_build`)
    return Dataset.from_dict({name: [] for name in features}, features=features)


def _check_template(tokenizer, shape: TrainerShape) -> None:
    if shape.kind == "sft" and shape.assistant_only_loss and not GENERATION_MARKER.search(tokenizer.chat_template
                                                                                          or ""):
        raise DataError(None, "assistant_only_loss needs a chat template that marks the assistant's answers with "
                              "{% generation %} ... {% endgeneration %}; this tokenizer's template has none")


def _source_contents(plans: list[SourcePlan]) -> list[dict]:
    """Each source's content key per split (a test split carved from train shares train's)."""
    keys = {}
    return [{"path": plan.source.path, **{name: keys.setdefault(id(split), split.content_key())
                                          for name, split, _, _ in plan.parts}} for plan in plans]


@contextmanager
def _quiet_datasets():
    """No progress bars from `datasets` for the quick steps after tokenising (shuffle, pack, save)."""
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


@contextmanager
def _locked(lock_path: Path, key: str):
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.warning("data: another process is preparing %s; waiting for it", key)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _build(final: Path, plans: list[SourcePlan], mixture: DataMixture, tokenizer, shape: TrainerShape,
           description: dict) -> None:
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a killed preparer's; we hold the lock
        shutil.rmtree(stale, ignore_errors=True)
    work = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        started = time.time()
        report = _encode_rows(plans, mixture, tokenizer, shape, work)
        with _quiet_datasets():
            for split in SPLITS:
                rows = Dataset.from_file(str(work / f"rows-{split}.arrow"))
                if len(rows):  # an empty split is not saved: `datasets` cannot load one back
                    _finish(rows, split, mixture.seed, shape).save_to_disk(str(work / split))
                del rows
        for intermediate in work.glob("*.arrow"):
            intermediate.unlink()
        (work / "report.json").write_text(json.dumps(report.as_dict(), indent=1) + "\n", encoding="utf-8")
        (work / "fingerprint.json").write_text(json.dumps(description, indent=1, default=str) + "\n",
                                               encoding="utf-8")
        try:
            os.rename(work, final)
        except OSError:
            if not final.is_dir():
                raise
            # Completed meanwhile by a process the lock did not hold back (a file system without locks shared by
            # several machines): the same key, the same data.
        elapsed = time.time() - started
        read = report.as_dict()["totals"]["read"]
        logger.info("data: prepared %d rows in %.1f s (%.0f rows/s) into %s", read, elapsed, read / max(elapsed, 1e-9),
                    final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _finish(rows: Dataset, split: str, seed: int, shape: TrainerShape) -> Dataset:
    """The mixture's shuffle (as `load_mixture` shuffles its rows), then what TRL does after tokenising: packing,
    and its own shuffles when `shuffle_dataset` is set."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    rows = rows.select(order)
    if shape.kind != "sft":
        return rows
    if shape.packs(split):
        rows = rows.select_columns(["input_ids", "labels"])
        if shape.shuffle_dataset:
            rows = rows.shuffle(seed=shape.seed)
        rows = pack_dataset(rows, shape.max_length, shape.packing_strategy, {"num_proc": shape.dataset_num_proc})
    return rows.shuffle(seed=shape.seed) if shape.shuffle_dataset else rows


# --- reading and tokenising, in worker processes ------------------------------------------------------------------


@dataclass
class _Job:
    """What the workers need; set in the parent before they fork, so none of it is pickled."""

    plans: list[SourcePlan]
    checks: RowChecks
    tokenizer: object
    shape: TrainerShape
    cut: TrainerTruncation | None
    dedupe: bool


_job: _Job | None = None


@dataclass
class _Chunk:
    outcomes: list  # per row read: [origin, row, None] when kept, [origin, row, (reason, field, detail)] when not
    table: pa.Table  # the kept rows
    digests: list  # per kept row, when the mixture dedupes


def _encode_rows(plans, mixture: DataMixture, tokenizer, shape: TrainerShape, work: Path) -> DataReport:
    global _job
    _job = _Job(plans, RowChecks(mixture, tokenizer), tokenizer, shape,
                TrainerTruncation.for_training(shape, tokenizer, mixture.kind), mixture.dedupe)
    tasks = [(p, q, indices[start:start + CHUNK_ROWS])
             for p, plan in enumerate(plans) for q, (_, _, indices, _) in enumerate(plan.parts)
             for start in range(0, len(indices), CHUNK_ROWS)]
    workers = mixture.num_proc or len(os.sched_getaffinity(0))
    total = sum(len(task[2]) for task in tasks)
    logger.info("data: preparing %d %s rows from %d source(s) with %d process(es)", total, mixture.kind,
                len(plans), workers)
    report = DataReport(kind=mixture.kind, seed=mixture.seed, sources=[plan.report for plan in plans])
    writers = {split: ArrowWriter(features=ROW_FEATURES[mixture.kind], path=str(work / f"rows-{split}.arrow"))
               for split in SPLITS}
    dedupers = {split: Deduplicator() for split in SPLITS} if mixture.dedupe else None
    try:
        with _workers(workers) as run, _Progress(total, f"Preparing {mixture.kind} data") as progress:
            for (p, q, _), chunk in zip(tasks, run(_encode_chunk, tasks)):
                split, _, _, split_report = plans[p].parts[q]
                keep = _count(chunk, split_report, dedupers and dedupers[split], mixture.strict)
                writers[split].write_table(chunk.table.filter(pa.array(keep, type=pa.bool_())))
                progress.update(len(chunk.outcomes))
    finally:
        _job = None
    for writer in writers.values():
        writer.finalize()
    report.train_rows = sum(plan.report.train.kept for plan in plans)
    report.test_rows = sum(plan.report.test.kept for plan in plans if plan.report.test is not None)
    logger.info("%s", report.summary())
    if not report.train_rows:
        raise DataError(None, "no training rows left after validation\n" + report.summary())
    return report


class _Progress:
    """A progress bar on a terminal; off one (a log file, a cluster job), a log line every tenth of the rows."""

    def __init__(self, total: int, description: str):
        self.bar = tqdm(total=total, unit="rows", desc=description, disable=None)  # None: only on a terminal
        self.total, self.done, self.started = total, 0, time.time()
        self.next_line = total / 10

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.bar.close()

    def update(self, rows: int) -> None:
        self.bar.update(rows)
        self.done += rows
        if self.bar.disable and self.done >= self.next_line and self.done < self.total:
            elapsed = time.time() - self.started
            logger.info("data: %d of %d rows prepared (%.0f%%, %.0f rows/s)", self.done, self.total,
                        100 * self.done / self.total, self.done / max(elapsed, 1e-9))
            self.next_line += self.total / 10


@contextmanager
def _workers(count: int):
    """`map` over forked worker processes (in order), or in this process for one."""
    if count <= 1:
        yield map
        return
    with get_context("fork").Pool(count, initializer=_worker_started) as pool:
        yield lambda function, tasks: pool.imap(function, tasks)


def _worker_started() -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the workers are the parallelism


def _count(chunk: _Chunk, report, deduper: Deduplicator | None, strict: bool) -> list[bool]:
    """Count each row of a chunk in its split's report (in strict mode, raise on a structural problem); returns
    which of the chunk's kept rows stay after the split-wide dedupe."""
    keep, digests = [], iter(chunk.digests)
    for origin, row, problem in chunk.outcomes:
        raw = RawRow(origin, row, None)
        problem = RowProblem(*problem) if problem is not None else None
        if problem is None:  # a row of the chunk's table
            try:
                if deduper is not None:
                    deduper.check_digest(next(digests))
            except RowProblem as duplicate:
                problem = duplicate
            keep.append(problem is None)
        if problem is None:
            report.keep()
        elif strict and problem.structural:
            raise strict_error(raw, problem)
        else:
            report.drop(problem.reason, problem_location(raw, problem))
    return keep


def _encode_chunk(task) -> _Chunk:
    plan_index, part_index, indices = task
    job = _job
    plan = job.plans[plan_index]
    split_name, split, _, _ = plan.parts[part_index]
    outcomes, rows = [], []
    for raw in split.rows(indices):
        try:
            rows.append(job.checks(raw, plan.source))
            outcomes.append([raw.origin, raw.row, None])
        except RowProblem as problem:
            outcomes.append([raw.origin, raw.row, (problem.reason, problem.field, problem.detail)])
    columns, problems = (_encode_sft if job.shape.kind == "sft" else _encode_preference)(job, rows, split_name)
    kept_outcomes = iter(outcome for outcome in outcomes if outcome[2] is None)
    for problem in problems:
        outcome = next(kept_outcomes)
        if problem is not None:
            outcome[2] = (problem.reason, problem.field, problem.detail)
    kept = [index for index, problem in enumerate(problems) if problem is None]
    table = pa.Table.from_pydict({name: [values[i] for i in kept] for name, values in columns.items()},
                                 schema=ROW_FEATURES[job.shape.kind].arrow_schema)
    digests = [row_digest(rows[i]) for i in kept] if job.dedupe else []
    return _Chunk(outcomes, table, digests)


def _encode_sft(job: _Job, rows: list[dict], split: str):
    messages = [row["messages"] for row in rows]
    ids, labels = encode_conversations(job.tokenizer, messages, job.shape.assistant_only_loss) if rows else ([], [])
    problems = [_cut_problem(job.cut.check_trained_tokens, trained_tokens(row)) if job.cut else None
                for row in labels]
    max_length = job.shape.max_length
    if max_length is not None and not job.shape.packs(split):  # TRL truncates rows it does not pack
        cut = slice(None, max_length) if job.shape.truncation_mode == "keep_start" else slice(-max_length, None)
        ids, labels = [row[cut] for row in ids], [row[cut] for row in labels]
    return {"messages": messages, "input_ids": ids, "labels": labels}, problems


def _encode_preference(job: _Job, rows: list[dict], split: str):
    sides = {name: [row[name] for row in rows] for name in ("prompt", "chosen", "rejected")}
    prompt_ids, chosen_ids, rejected_ids = encode_pairs(job.tokenizer, *sides.values()) if rows else ([], [], [])
    problems = [_cut_problem(job.cut.check_prompt_length, len(prompt)) if job.cut else None for prompt in prompt_ids]
    lengths = [pair_length({"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}, job.shape.max_length)["length"]
               for p, c, r in zip(prompt_ids, chosen_ids, rejected_ids)]
    return {**sides, "prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids,
            "length": lengths}, problems


def _cut_problem(check, value) -> RowProblem | None:
    try:
        check(value)
    except RowProblem as problem:
        return problem
    return None
