"""The key of prepared data: a digest of everything that shapes it, so the same recipe reuses what it prepared and
any change that would alter a token prepares afresh.

Keyed: each source's content (local files' bytes; a hub split's `datasets` fingerprint, which follows its revision
and data files), the mixture's fields (weights, splits, seed, validation settings), the tokenizer (its whole
definition, special tokens and chat template), the trainer settings that cut and pack rows (`TrainerShape`), the
code of `align/data/` and the versions of the libraries that tokenise and pack. Not keyed: where the data is
prepared and with how many processes (`prepared_dir`, `num_proc`): they do not change the result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from importlib import metadata
from pathlib import Path

from .spec import DataMixture

LIBRARIES = ("transformers", "tokenizers", "trl", "datasets")
NOT_KEYED = ("prepared_dir", "num_proc")


def tokenizer_identity(tokenizer) -> dict:
    """What decides how a tokenizer turns a conversation into ids, without where it was loaded from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return {"class": type(tokenizer).__name__, "definition": _digest(definition),
            "special_tokens": tokenizer.special_tokens_map, "chat_template": _digest(tokenizer.chat_template or "")}


def code_identity() -> str:
    here = Path(__file__).parent
    return _digest("".join(path.read_text(encoding="utf-8") for path in sorted(here.glob("*.py"))))


def describe(mixture: DataMixture, source_contents: list[dict], tokenizer, shape) -> dict:
    """Everything the key covers, as `fingerprint.json` keeps it beside the prepared data."""
    fields = {key: value for key, value in dataclasses.asdict(mixture).items() if key not in NOT_KEYED}
    return {"mixture": fields, "source_contents": source_contents, "tokenizer": tokenizer_identity(tokenizer),
            "trainer": dataclasses.asdict(shape), "code": code_identity(),
            "versions": {name: metadata.version(name) for name in LIBRARIES}}


def fingerprint(description: dict) -> str:
    return _digest(json.dumps(description, sort_keys=True, default=str))[:20]


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()
