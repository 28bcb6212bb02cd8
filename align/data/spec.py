"""What to load: plain dataclasses that recipes (YAML) build directly, checked as soon as they are made."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

KINDS = ("sft", "preference")


@dataclass
class DataSource:
    """One dataset of a mixture.

    `path` is a local `.jsonl`/`.json`/`.parquet` file, a local directory, or a hub id (`org/name`). In a directory,
    a split's files are those named `<split>.<ext>`, `<split>-*.<ext>` (hub shard names) or kept in `<split>/` or
    `data/`; a directory without split-named files, like a single file, holds only the train split.
    `weight` is the fraction (0 < weight <= 1) of the train split to take, chosen with the mixture's seed; the test
    split is always taken whole. `test_split: null` means the source has none (see `DataMixture.test_split_size`).
    The `*_field` hints name non-standard columns; left empty, the formats are recognised by their usual names.
    """

    path: str
    config: str | None = None
    weight: float = 1.0
    train_split: str = "train"
    test_split: str | None = "test"
    messages_field: str | None = None
    prompt_field: str | None = None
    chosen_field: str | None = None
    rejected_field: str | None = None

    def __post_init__(self):
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"DataSource.path must be a non-empty string, got {self.path!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not 0 < self.weight <= 1:
            raise ValueError(f"DataSource {self.path}: weight must be a fraction in (0, 1], got {self.weight!r}")
        if not self.train_split:
            raise ValueError(f"DataSource {self.path}: train_split must name a split")

    @property
    def name(self) -> str:
        return self.path if self.config is None else f"{self.path} [{self.config}]"


@dataclass
class DataMixture:
    """Several sources mixed into one train and one test split of the given kind.

    `test_split_size` (a fraction) carves a test split out of the train split of every source whose `test_split`
    is null. `strict` turns structural row errors into `DataError` instead of counted drops. `max_chars` drops rows
    whose text is longer (a tokenizer-free proxy); `max_tokens` does the same in tokens and needs the tokenizer
    passed to `load_mixture`. `dedupe` drops rows repeated within a split of the mixture.
    `prepared_dir` is where the stages keep the prepared (tokenised, packed) data, shared by runs and ranks
    (default `$JETMOE_ALIGN_PREPARED_DIR`, else ~/.cache/jetmoe-align/prepared; `align.data.prepare`), and
    `num_proc` how many processes prepare it (default: every core this process may use). Neither changes the data.
    """

    sources: list[DataSource]
    kind: Literal["sft", "preference"] = "sft"
    seed: int = 42
    test_split_size: float | None = None
    strict: bool = False
    max_chars: int | None = None
    max_tokens: int | None = None
    dedupe: bool = False
    prepared_dir: str | None = None
    num_proc: int | None = None

    def __post_init__(self):
        self.sources = [s if isinstance(s, DataSource) else DataSource(**s) for s in self.sources]
        if not self.sources:
            raise ValueError("DataMixture needs at least one source")
        if self.kind not in KINDS:
            raise ValueError(f"DataMixture.kind must be one of {KINDS}, got {self.kind!r}")
        if self.test_split_size is not None and not 0 < self.test_split_size < 1:
            raise ValueError(f"DataMixture.test_split_size must be in (0, 1), got {self.test_split_size!r}")
        for name in ("max_chars", "max_tokens", "num_proc"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"DataMixture.{name} must be a positive integer, got {value!r}")
