"""Read the raw rows of one split of one source: local jsonl/json/parquet files or directories, or a hub dataset.

Rows come back with where they came from (file and 1-based row: the line number in a jsonl file, the position
in a json list or parquet table, the index in a hub split) so every later problem can point at them. A line
that is not JSON is not fatal here: it becomes a row that carries its `RowProblem`, for the loader to count or
raise. A file that cannot be read at all raises `DataError` at once.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .errors import INVALID_JSON, WRONG_TYPE, DataError, RowProblem
from .spec import DataSource

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class RawRow:
    origin: str  # file path or hub id + split
    row: int  # 1-based
    value: dict | RowProblem


class LocalSplit:
    """The rows of a split's local files, read on demand: a jsonl file is indexed by line offsets and a parquet
    file memory-mapped, so memory does not grow with the file (a .json file, one document, is parsed whole)."""

    def __init__(self, origin: str, files: list):
        self.origin, self._files = origin, files
        self._starts = [0]
        for file in files:
            self._starts.append(self._starts[-1] + len(file))

    def __len__(self) -> int:
        return self._starts[-1]

    def rows(self, indices: Sequence[int]) -> Iterator[RawRow]:
        for index in indices:
            position = bisect.bisect_right(self._starts, index) - 1
            yield self._files[position].row(index - self._starts[position])

    def content_key(self) -> str:
        """A digest of the files' bytes, for keying what is prepared from them."""
        digest = hashlib.blake2b(digest_size=16)
        for file in self._files:
            with open(file.path, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        return digest.hexdigest()


class HubSplit:
    """A split loaded with `datasets`; rows are only turned into Python objects for the indices asked for."""

    def __init__(self, origin: str, dataset):
        self.origin, self._dataset = origin, dataset

    def __len__(self) -> int:
        return len(self._dataset)

    def rows(self, indices: Sequence[int]) -> Iterator[RawRow]:
        indices = list(indices)
        for index, value in zip(indices, self._dataset.select(indices)):
            yield RawRow(self.origin, index + 1, value)

    def content_key(self) -> str:
        """`datasets`' own fingerprint of the loaded split: it changes with the hub revision and data files."""
        return self._dataset._fingerprint


def source_location(source: DataSource) -> str:
    """"local" for an existing file or directory, "hub" for something shaped like a hub id; else `DataError`.

    Touches nothing but the local file system, so recipes can be resolved without any download.
    """
    path = Path(source.path)
    if path.exists():
        return "local"
    if path.suffix in DATA_SUFFIXES or not HUB_ID.match(source.path):
        raise DataError(source.path, "no such file or directory (and not a hub dataset id)")
    return "hub"


def read_split(source: DataSource, split: str):
    """The rows of `split` of `source` (a `LocalSplit` or `HubSplit`); a missing split raises `DataError`."""
    if source_location(source) == "hub":
        return HubSplit(f"{source.path}:{split}", _load_hub_split(source, split))
    path = Path(source.path)
    return LocalSplit(str(path), [_open_file(file) for file in _local_split_files(path, split, source)])


def check_local_splits(source: DataSource) -> None:
    """`DataError` if a local source lacks a split it names or holds one twice; reads no file (a pre-flight check)."""
    if source_location(source) == "local":
        for split in filter(None, (source.train_split, source.test_split)):
            _local_split_files(Path(source.path), split, source)


def _load_hub_split(source: DataSource, split: str):
    import datasets  # looked up at call time, so tests can stand in for the hub

    try:
        return datasets.load_dataset(source.path, source.config, split=split)
    except Exception as error:  # the hub, the network and the builders fail in many ways; name the source
        raise DataError(source.name, f"cannot load split '{split}' from the hub (and no local path of that name):"
                                     f" {type(error).__name__}: {error}") from error


def _local_split_files(path: Path, split: str, source: DataSource) -> list[Path]:
    if path.is_file():
        if path.suffix not in DATA_SUFFIXES:
            raise DataError(str(path), f"unsupported file type '{path.suffix}' (use {', '.join(DATA_SUFFIXES)})")
        available = {source.train_split: [path]}
    else:
        available = _directory_splits(path, [s for s in (source.train_split, source.test_split) if s])
    if split not in available:
        raise DataError(str(path), f"has no split '{split}' (found: {', '.join(sorted(available)) or 'no data files'});"
                                   " a single file or an unsplit directory is the train split only: set"
                                   " test_split to null, optionally with the mixture's test_split_size")
    return available[split]


def _directory_splits(directory: Path, wanted: list[str]) -> dict[str, list[Path]]:
    """Split name -> files: `<split>.<ext>`, `<split>-*.<ext>` or `<split>/**` here or under `data/`."""
    found = {}
    for split in wanted:
        files = []
        for base in (directory, directory / "data"):
            files += [f for f in _data_files(base, recursive=False)
                      if f.stem == split or f.stem.startswith(split + "-")]
            if (base / split).is_dir():
                files += _data_files(base / split, recursive=True)
        if files:
            found[split] = _one_format_each(directory, split, sorted(set(files)))
    files = _data_files(directory, recursive=True)
    if not found and files and not any(_looks_split_named(f, directory) for f in files):
        # plain shards, no split names: the whole directory is the train split
        found[wanted[0]] = _one_format_each(directory, wanted[0], files)
    elif not found:  # split-named files, but not the ones asked for: list what is there
        found = {_split_hint(f, directory): [f] for f in files}
    return found


def _one_format_each(directory: Path, split: str, files: list[Path]) -> list[Path]:
    """`files`, unless two of them are one shard in two formats (`train.jsonl` and `train.parquet`, here or under
    `data/`): the split's rows would be read twice."""
    seen = {}
    for file in files:
        parts = file.relative_to(directory).with_suffix("").parts
        shard = parts[1:] if parts[0] == "data" and len(parts) > 1 else parts
        if shard in seen:
            raise DataError(str(directory), f"split '{split}' is in both {seen[shard]} and {file} (the same rows "
                                            "twice?); keep one of them")
        seen[shard] = file
    return files


_SPLIT_WORDS = re.compile(r"^(train|test|valid|validation|eval|dev)", re.IGNORECASE)


def _looks_split_named(file: Path, directory: Path) -> bool:
    return any(_SPLIT_WORDS.match(part) for part in file.relative_to(directory).with_suffix("").parts)


def _split_hint(file: Path, directory: Path) -> str:
    return str(file.relative_to(directory))


def _data_files(directory: Path, recursive: bool) -> list[Path]:
    if not directory.is_dir():
        return []
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(f for f in candidates if f.is_file() and f.suffix in DATA_SUFFIXES and not f.name.startswith("."))


def _open_file(path: Path):
    return {".jsonl": JsonlFile, ".json": JsonFile, ".parquet": ParquetFile}[path.suffix](path)


class JsonlFile:
    """One row a non-blank line; only the lines' byte offsets are held. A line that is not JSON becomes a row
    carrying its `RowProblem`; a file that is not UTF-8 is refused when indexed."""

    def __init__(self, path: Path):
        self.path, self._offsets, self._numbers = path, [], []
        try:
            with open(path, "rb") as handle:
                offset = 0
                for number, line in enumerate(handle, start=1):
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError as error:
                        raise DataError(str(path), f"not UTF-8 text (byte {offset + error.start})") from None
                    if line.strip():  # blank lines are not rows
                        self._offsets.append(offset)
                        self._numbers.append(number)
                    offset += len(line)
        except OSError as error:
            raise DataError(str(path), f"cannot read: {error.strerror or error}") from None

    def __len__(self) -> int:
        return len(self._offsets)

    def row(self, index: int) -> RawRow:
        with open(self.path, "rb") as handle:
            handle.seek(self._offsets[index])
            line = handle.readline().decode("utf-8")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            value = RowProblem(INVALID_JSON, None, f"invalid JSON: {error.msg} at column {error.colno}")
        return RawRow(str(self.path), self._numbers[index], _object_or_problem(value))


class JsonFile:
    """A list of rows (or an object with a `data` list) in one JSON document, parsed whole."""

    def __init__(self, path: Path):
        self.path = path
        try:
            document = json.loads(_read_text(path))
        except json.JSONDecodeError as error:
            raise DataError(str(path), f"invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}") \
                from None
        if isinstance(document, dict) and isinstance(document.get("data"), list):
            document = document["data"]
        if not isinstance(document, list):
            raise DataError(str(path), "a .json data file must hold a list of rows or an object with a 'data' list")
        self._values = document

    def __len__(self) -> int:
        return len(self._values)

    def row(self, index: int) -> RawRow:
        return RawRow(str(self.path), index + 1, _object_or_problem(self._values[index]))


class ParquetFile:
    """A memory-mapped parquet table; a row becomes a Python dict when asked for."""

    def __init__(self, path: Path):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            self._table = pq.read_table(path, memory_map=True)
        except (pa.ArrowException, OSError) as error:
            raise DataError(str(path), f"not a readable parquet file: {error}") from None

    def __len__(self) -> int:
        return self._table.num_rows

    def row(self, index: int) -> RawRow:
        return RawRow(str(self.path), index + 1, self._table.slice(index, 1).to_pylist()[0])


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(str(path), f"not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DataError(str(path), f"cannot read: {error.strerror or error}") from None


def _object_or_problem(value) -> dict | RowProblem:
    if isinstance(value, (dict, RowProblem)):
        return value
    return RowProblem(WRONG_TYPE, None, f"a row must be a JSON object, got {type(value).__name__}")
