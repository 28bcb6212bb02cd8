"""Mix the sources of a `DataMixture` into one `DatasetDict` (train, test) and a `DataReport`.

Per source: read the train split (and the test split, or carve one out of train with `test_split_size` when the
source has none), take the `weight` fraction of the train rows (floor(weight * rows), chosen with the seed), then
normalise and check every taken row. Test splits are taken whole. Kept rows of all sources are concatenated and
shuffled with the seed; the same mixture and seed always give the same datasets.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from .errors import DataError, RowProblem
from .formats import FEATURES, normalise_preference, normalise_sft
from .report import DataReport, SourceReport, SplitReport
from .sources import RawRow, read_split
from .spec import DataMixture, DataSource
from .truncation import TrainerTruncation
from .validation import CHECKS, Deduplicator, LengthLimit

logger = logging.getLogger(__name__)

NORMALISERS = {"sft": normalise_sft, "preference": normalise_preference}


def load_mixture(mixture: DataMixture, tokenizer=None,
                 truncation: TrainerTruncation | None = None) -> tuple[DatasetDict, DataReport]:
    """Load, normalise, check and mix every source; `tokenizer` is needed only for `mixture.max_tokens`.
    `truncation` (the trainer's cut) drops and counts the rows the trainer would drop as fully masked."""
    pipeline = _RowPipeline(mixture, RowChecks(mixture, tokenizer), truncation)
    report = DataReport(kind=mixture.kind, seed=mixture.seed)
    kept: dict[str, list[dict]] = {"train": [], "test": []}
    for position, source in enumerate(mixture.sources):
        logger.info("data: reading %s (%d/%d)", source.name, position + 1, len(mixture.sources))
        source_report = _load_source(source, position, mixture, pipeline, kept)
        report.sources.append(source_report)
        logger.info("data: %s", _source_line(source_report))
    report.train_rows, report.test_rows = len(kept["train"]), len(kept["test"])
    if not kept["train"]:
        raise DataError(None, "no training rows left after validation\n" + report.summary())
    splits = DatasetDict({name: _to_dataset(rows, mixture) for name, rows in kept.items()})
    logger.info("%s", report.summary())
    return splits, report


def take_fraction(indices: list[int], weight: float, rng: random.Random) -> list[int]:
    """floor(weight * len) of the indices, chosen by `rng`, in their original order."""
    count = math.floor(weight * len(indices) + 1e-9)
    if count >= len(indices):
        return list(indices)
    return sorted(rng.sample(indices, count))


def carve_test(indices: list[int], size: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """(train, test) indices: floor(size * len) rows, at least one when there are two or more, go to test."""
    count = max(1, math.floor(size * len(indices) + 1e-9)) if len(indices) >= 2 else 0
    shuffled = rng.sample(indices, len(indices))
    return sorted(shuffled[count:]), sorted(shuffled[:count])


@dataclass
class SourcePlan:
    """Which rows of one source are read, per split ("train", "test"): the split, its chosen indices, the report
    its counts go to."""

    source: DataSource
    report: SourceReport
    parts: list[tuple[str, object, list[int], SplitReport]]


def plan_source(source: DataSource, position: int, mixture: DataMixture) -> SourcePlan:
    rng = random.Random(f"{mixture.seed}:{position}:{source.path}:{source.config}")
    train_split = read_split(source, source.train_split)
    train_indices = list(range(len(train_split)))
    test_split, test_indices, test_name = None, [], source.test_split
    if source.test_split is not None:
        test_split = read_split(source, source.test_split)
        test_indices = list(range(len(test_split)))
    elif mixture.test_split_size is not None:
        train_indices, test_indices = carve_test(train_indices, mixture.test_split_size, rng)
        test_split = train_split
    report = SourceReport(source.path, source.config, source.weight,
                          train=SplitReport(source.train_split, len(train_indices)),
                          test=SplitReport(test_name, len(test_indices)) if test_split is not None else None)
    parts = [("train", train_split, take_fraction(train_indices, source.weight, rng), report.train)]
    if test_split is not None:
        parts.append(("test", test_split, test_indices, report.test))
    return SourcePlan(source, report, parts)


def _load_source(source: DataSource, position: int, mixture: DataMixture, pipeline, kept) -> SourceReport:
    plan = plan_source(source, position, mixture)
    for split_name, split, indices, split_report in plan.parts:
        pipeline.run(source, split, indices, split_name, split_report, kept[split_name])
    return plan.report


class RowChecks:
    """normalise -> content checks -> length limit: what every row of a mixture goes through, in whichever process
    reads it. Raises the row's `RowProblem`."""

    def __init__(self, mixture: DataMixture, tokenizer=None):
        self.normalise, self.check = NORMALISERS[mixture.kind], CHECKS[mixture.kind]
        self.limit = LengthLimit(mixture.max_chars, mixture.max_tokens, tokenizer)

    def __call__(self, raw: RawRow, source: DataSource) -> dict:
        if isinstance(raw.value, RowProblem):
            raise raw.value
        row = self.normalise(raw.value, source)
        self.check(row)
        self.limit.check(row)
        return row


def problem_location(raw: RawRow, problem: RowProblem) -> str:
    """Where a dropped row was and why, as the data report lists it."""
    field = f" field '{problem.field}'" if problem.field else ""
    return f"{raw.origin} row {raw.row}{field}: {problem.detail}"


def strict_error(raw: RawRow, problem: RowProblem) -> DataError:
    return DataError(raw.origin, problem.detail, row=raw.row, field=problem.field, reason=problem.reason)


class _RowPipeline:
    """`RowChecks` -> trainer's truncation -> dedupe for each row, counting or raising every problem."""

    def __init__(self, mixture: DataMixture, checks: RowChecks, truncation: TrainerTruncation | None):
        self.strict, self.checks, self.truncation = mixture.strict, checks, truncation
        self.dedupers = {"train": Deduplicator(), "test": Deduplicator()} if mixture.dedupe else None

    def run(self, source: DataSource, split, indices, split_name: str, report: SplitReport, out: list) -> None:
        for raw in split.rows(indices):
            try:
                row = self.checks(raw, source)
                if self.truncation is not None:
                    self.truncation.check(row)
                if self.dedupers is not None:
                    self.dedupers[split_name].check(row)
            except RowProblem as problem:
                if self.strict and problem.structural:
                    raise strict_error(raw, problem) from None
                report.drop(problem.reason, problem_location(raw, problem))
                continue
            report.keep()
            out.append(row)


def _to_dataset(rows: list[dict], mixture: DataMixture) -> Dataset:
    features = FEATURES[mixture.kind]
    rows = list(rows)
    random.Random(mixture.seed).shuffle(rows)
    if not rows:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    return Dataset.from_list(rows, features=features)


def _source_line(report: SourceReport) -> str:
    parts = []
    for name, split in report.splits().items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in sorted(split.dropped.items())) or "none dropped"
        parts.append(f"{name} '{split.split or 'carved'}' {split.available} rows, read {split.read}, "
                     f"kept {split.kept} ({dropped})")
    return f"{report.path}{'' if report.config is None else f' [{report.config}]'}: " + "; ".join(parts)
