"""Seeded synthetic chat and preference data whose token lengths follow the public alignment mixtures, written in
the layout of `data/samples/` so the stages' own data loader reads it.

Why: a throughput number on fixed-length random rows hides padding, which is what real SFT and DPO batches
waste most on. These rows have realistic length spreads, so padding and step-time spread show up as they would.

Target lengths, in tokens (the figures of issue 11: the HuggingFaceH4 SFT mixture of the JetMoE-8B-Chat recipe,
ultrachat_200k and the others, and HuggingFaceH4/ultrafeedback_binarized; not re-measured here, there is no hub
access):

- SFT conversation (chat template included): mean 837, median 617. A lognormal with median 617 and sigma 0.78
  has mean 617 * exp(0.78**2 / 2) = 837. 1 to 4 user/assistant turns (uniform); each turn's share of the budget is
  random, the user takes 10-40% of a turn, the assistant the rest.
- UltraFeedback: prompt / chosen / rejected medians 120 / 280 / 230 (message contents). Only medians are given;
  the spread is our choice, sigma 0.8 for each (a long right tail, as chat data has).

Lengths are capped at `MAX_TOKENS`. Texts are random words drawn from the tokenizer's own whole-word tokens
(`recipes/tiny/tokenizer`, a 1024-token BPE), so a text of n words encodes to about n tokens: the realised lengths,
measured with the same tokenizer and chat template, are reported by `length_statistics`.
"""

import hashlib
import json
import math
from pathlib import Path

import numpy as np

SFT_MEDIAN, SFT_SIGMA = 617, 0.78
PROMPT_MEDIAN, CHOSEN_MEDIAN, REJECTED_MEDIAN, PREFERENCE_SIGMA = 120, 280, 230, 0.8
MAX_TOKENS = 8192
MAX_TURNS = 4
SFT_SPLITS = ("train_sft", "test_sft")  # as data/samples/ultrachat
PREFERENCE_SPLITS = ("train_prefs", "test_prefs")  # as data/samples/ultrafeedback
TEST_ROWS = 8


def lognormal_lengths(rng: np.random.Generator, median: float, sigma: float, count: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(math.log(median), sigma, count)), 1, MAX_TOKENS).astype(int)


class WordSource:
    """Random text of a given token length, from the tokenizer's whole-word tokens (one token each, with the space
    before them)."""

    def __init__(self, tokenizer, rng: np.random.Generator):
        vocabulary = tokenizer.get_vocab()
        self.words = sorted(token[1:] for token in vocabulary
                            if token.startswith("Ġ") and token[1:].isascii() and token[1:].isalpha())
        self.rng = rng

    def text(self, tokens: int) -> str:
        return " ".join(self.rng.choice(self.words, size=max(tokens, 1)).tolist())


def template_overhead(tokenizer) -> int:
    """Tokens the chat template adds per message (markers, end of turn), measured on a one-word conversation."""
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    return math.ceil((conversation_tokens(tokenizer, messages) - 2) / 2)


def conversation_tokens(tokenizer, messages: list[dict]) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def content_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def conversation(words: WordSource, rng: np.random.Generator, total: int, overhead: int) -> list[dict]:
    """1-4 user/assistant turns whose contents and template add up to about `total` tokens."""
    turns = int(rng.integers(1, MAX_TURNS + 1))
    budget = max(total - 2 * turns * overhead, 2 * turns)
    messages = []
    for share in rng.dirichlet(np.ones(turns)):
        turn_tokens = max(int(budget * share), 2)
        user_tokens = max(int(turn_tokens * rng.uniform(0.1, 0.4)), 1)
        messages.append({"role": "user", "content": words.text(user_tokens)})
        messages.append({"role": "assistant", "content": words.text(max(turn_tokens - user_tokens, 1))})
    return messages


def row_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sft_rows(tokenizer, count: int, seed: int) -> list[dict]:
    """Rows as HuggingFaceH4/ultrachat_200k has them: prompt, prompt_id, messages."""
    rng = np.random.default_rng(seed)
    words, overhead = WordSource(tokenizer, rng), template_overhead(tokenizer)
    rows = []
    for total in lognormal_lengths(rng, SFT_MEDIAN, SFT_SIGMA, count):
        messages = conversation(words, rng, int(total), overhead)
        prompt = messages[0]["content"]
        rows.append({"prompt": prompt, "prompt_id": row_id(prompt), "messages": messages})
    return rows


def preference_rows(tokenizer, count: int, seed: int) -> list[dict]:
    """Rows as HuggingFaceH4/ultrafeedback_binarized has them: prompt (string), prompt_id, chosen and rejected as
    full message lists starting with the user turn, score_chosen, score_rejected."""
    rng = np.random.default_rng(seed)
    words = WordSource(tokenizer, rng)
    lengths = [lognormal_lengths(rng, median, PREFERENCE_SIGMA, count)
               for median in (PROMPT_MEDIAN, CHOSEN_MEDIAN, REJECTED_MEDIAN)]
    rows = []
    for prompt_tokens, chosen_tokens, rejected_tokens in zip(*lengths):
        prompt = words.text(int(prompt_tokens))
        user = {"role": "user", "content": prompt}
        rows.append({
            "prompt": prompt, "prompt_id": row_id(prompt),
            "chosen": [user, {"role": "assistant", "content": words.text(int(chosen_tokens))}],
            "rejected": [user, {"role": "assistant", "content": words.text(int(rejected_tokens))}],
            "score_chosen": float(rng.integers(6, 11)), "score_rejected": float(rng.integers(1, 6)),
        })  # fmt: skip
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_dataset(directory: str | Path, kind: str, tokenizer, rows: int, seed: int = 0) -> Path:
    """`rows` train rows and a few test rows of `kind` ("sft" or "preference") under `directory/kind`, split files
    named as the hub dataset names them; returns that directory (a recipe's `data.sources[].path`)."""
    make, splits = {"sft": (sft_rows, SFT_SPLITS), "preference": (preference_rows, PREFERENCE_SPLITS)}[kind]
    target = Path(directory) / kind
    all_rows = make(tokenizer, rows + TEST_ROWS, seed)
    write_jsonl(target / f"{splits[0]}.jsonl", all_rows[:rows])
    write_jsonl(target / f"{splits[1]}.jsonl", all_rows[rows:])
    return target


def summary(values: list[int]) -> dict:
    array = np.asarray(values)
    return {"rows": len(values), "mean": round(float(array.mean()), 1), "median": float(np.median(array)),
            "p90": float(np.percentile(array, 90)), "max": int(array.max())}


def length_statistics(rows: list[dict], tokenizer) -> dict:
    """Realised token lengths: SFT rows as whole templated conversations (with turns per row); preference rows as
    the prompt, chosen and rejected message contents."""
    if "messages" in rows[0]:
        return {"conversation": summary([conversation_tokens(tokenizer, row["messages"]) for row in rows]),
                "turns": summary([len(row["messages"]) // 2 for row in rows])}
    return {field: summary([content_tokens(tokenizer, text) for text in texts]) for field, texts in (
        ("prompt", [row["prompt"] for row in rows]),
        ("chosen", [row["chosen"][-1]["content"] for row in rows]),
        ("rejected", [row["rejected"][-1]["content"] for row in rows]),
    )}  # fmt: skip


def read_rows(directory: str | Path, split: str) -> list[dict]:
    path = Path(directory) / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
