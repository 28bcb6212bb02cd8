"""Tokenizers for the stages: a recipe's tokenizer with our chat template set, and the tiny one we ship.

The tiny recipes use a byte-level BPE trained by `python -m align build-tokenizer` on the shipped sample data and
committed under `recipes/tiny/tokenizer/`, so the default run needs no download. Real recipes use the base model's
own tokenizer (`jetmoe/jetmoe-8b`: Llama's SentencePiece, bos `<s>`, eos `</s>`, unk `<unk>`).
"""

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from .chat_template import set_chat_template

SPECIAL_TOKENS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
# Chat markers are plain text to the tokenizer, as in Llama's; showing them to the trainer keeps them short.
_CHAT_MARKERS = ("<|system|>\n", "<|user|>\n", "<|assistant|>\n")


# What a saved tokenizer leaves in its directory (one of them); without either, transformers falls back on slow
# converters and reports a missing sentencepiece or tiktoken instead of a missing tokenizer.
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def has_tokenizer(directory: str | Path) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str, chat_template: str = "zephyr"):
    from transformers import AutoTokenizer

    return set_chat_template(AutoTokenizer.from_pretrained(name_or_path), chat_template)


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def corpus_from_files(paths: Iterable[Path]) -> Iterator[str]:
    """Every string inside the rows of .json/.jsonl files (parquet samples mirror those, so they add nothing)."""
    for path in sorted(paths):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif path.suffix == ".json":
            rows = json.loads(text)
        else:
            continue
        yield from _strings(rows)


def build_tokenizer(texts: Iterable[str], vocab_size: int = 1024, chat_template: str = "zephyr"):
    """A byte-level BPE `PreTrainedTokenizerFast` (any text encodes, no unknowns), deterministic for a given corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([*_CHAT_MARKERS * 50, *texts], trainer=trainer)
    bos = SPECIAL_TOKENS["bos_token"]
    # Like Llama's tokenizer: bos before every encoded text, nothing after (the chat template writes the eos).
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, core.token_to_id(bos))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    return set_chat_template(tokenizer, chat_template)
