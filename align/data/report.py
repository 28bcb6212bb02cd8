"""Counts of what happened to every row: read, kept and dropped by reason, per source and split, with totals.

`read == kept + sum(dropped)` holds for every split, source and the totals, so nothing is lost without a count.
`DataReport.as_dict()` is plain JSON for `run.json`; `summary()` is the same for people.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

EXAMPLES_PER_REASON = 3


@dataclass
class SplitReport:
    split: str | None  # the source's split name; None when carved out of the train split
    available: int  # rows in the split before the weight was applied
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)  # reason -> a few "origin row N field: detail" lines

    def keep(self) -> None:
        self.read += 1
        self.kept += 1

    def drop(self, reason: str, where: str) -> None:
        self.read += 1
        self.dropped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < EXAMPLES_PER_REASON:
            shown.append(where)

    def as_dict(self) -> dict:
        return {"split": self.split, "available": self.available, "read": self.read, "kept": self.kept,
                "dropped": dict(sorted(self.dropped.items())), "drop_examples": self.examples}


@dataclass
class SourceReport:
    path: str
    config: str | None
    weight: float
    train: SplitReport
    test: SplitReport | None = None

    def splits(self) -> dict[str, SplitReport]:
        return {name: split for name, split in (("train", self.train), ("test", self.test)) if split is not None}

    def as_dict(self) -> dict:
        return {"path": self.path, "config": self.config, "weight": self.weight,
                **_totals(self.splits().values()), "splits": {k: v.as_dict() for k, v in self.splits().items()}}


@dataclass
class DataReport:
    kind: str
    seed: int
    sources: list[SourceReport] = field(default_factory=list)
    train_rows: int = 0
    test_rows: int = 0

    def as_dict(self) -> dict:
        all_splits = [split for source in self.sources for split in source.splits().values()]
        return {"kind": self.kind, "seed": self.seed, "train_rows": self.train_rows, "test_rows": self.test_rows,
                "totals": _totals(all_splits), "sources": [source.as_dict() for source in self.sources]}

    @classmethod
    def from_dict(cls, data: dict) -> DataReport:
        """The report `as_dict` wrote (prepared data keeps it beside the datasets)."""

        def split(entry: dict | None) -> SplitReport | None:
            if entry is None:
                return None
            return SplitReport(entry["split"], entry["available"], entry["read"], entry["kept"],
                               Counter(entry["dropped"]), entry["drop_examples"])

        sources = [SourceReport(source["path"], source["config"], source["weight"], split(source["splits"]["train"]),
                                split(source["splits"].get("test"))) for source in data["sources"]]
        return cls(data["kind"], data["seed"], sources, data["train_rows"], data["test_rows"])

    def summary(self) -> str:
        data = self.as_dict()
        lines = [f"{self.kind} data: {self.train_rows} train / {self.test_rows} test rows "
                 f"from {len(self.sources)} source(s)"]
        for source in self.sources:
            name = source.path if source.config is None else f"{source.path} [{source.config}]"
            for split_name, split in source.splits().items():
                lines.append(f"  {name} {split_name} ({split.split or 'carved'}): " + _counts_text(split.as_dict()))
        lines.append("  total: " + _counts_text(data["totals"]))
        return "\n".join(lines)


def _totals(splits) -> dict:
    splits = list(splits)
    dropped = Counter()
    for split in splits:
        dropped.update(split.dropped)
    return {"read": sum(s.read for s in splits), "kept": sum(s.kept for s in splits),
            "dropped": dict(sorted(dropped.items()))}


def _counts_text(counts: dict) -> str:
    dropped = ", ".join(f"{reason} {n}" for reason, n in counts["dropped"].items()) or "none"
    return f"read {counts['read']}, kept {counts['kept']}, dropped {sum(counts['dropped'].values())} ({dropped})"
