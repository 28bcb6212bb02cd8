"""JSON Lines files that must be read whole (prompts, benchmark files): one value a non-blank line, and a line
that is not JSON is an error naming the file and row. (Training data is read leniently by `sources`: a bad row
there is counted and dropped.)"""

import json
from collections.abc import Iterator
from pathlib import Path

from .errors import DataError


def jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(1-based row number, value) of each non-blank line."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(str(path), f"not valid JSON ({error.msg})", row=number) from None
