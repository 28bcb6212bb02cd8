"""Rows the trainer would drop after truncating them to its `max_length`, found while the data is counted.

TRL tokenizes every row, truncates it to `max_length` and silently drops the rows left with nothing to train on:
SFT with `assistant_only_loss` drops a conversation whose assistant tokens all fall past the cut (`keep_start`)
or before it (`keep_end`) (packed with `bfd`, it keeps such a conversation, which trains on nothing); DPO with
`keep_start` drops a pair whose prompt alone fills `max_length`. Run here
first, with the trainer's own tokenization, those rows are dropped and counted under `fully_masked` per source,
so `run.json` counts the rows that are really trained on.
"""

from __future__ import annotations

from trl.data_utils import common_prefix_length

from .errors import FULLY_MASKED, RowProblem


def _token_bound(text: str, turns: int) -> int:
    """More tokens than `text` can encode to: every token covers a byte at least (byte-level BPE, SentencePiece
    with byte fallback), plus a bos and a word-start piece per turn (SentencePiece after a special token)."""
    return len(text.encode("utf-8")) + 2 + 2 * turns


class TrainerTruncation:
    """The trainer's cut for one stage: `kind` "sft" or "preference", its `max_length` and `truncation_mode`."""

    def __init__(self, tokenizer, kind: str, max_length: int, mode: str = "keep_start",
                 assistant_only_loss: bool = False):
        self.tokenizer, self.kind, self.max_length, self.mode = tokenizer, kind, max_length, mode
        self.assistant_only_loss = assistant_only_loss

    @classmethod
    def for_training(cls, args, tokenizer, kind: str) -> TrainerTruncation | None:
        """The cut a TRL config makes, or None when it drops nothing (no max_length, every token trained, packing
        that keeps every token). Packing `bfd` cuts each conversation at `max_length` from its start and keeps the
        rest packed, so a conversation with nothing left to train on is dead weight: counted the same way."""
        max_length = getattr(args, "max_length", None)
        mode = getattr(args, "truncation_mode", "keep_start")
        if getattr(args, "packing", False):
            if getattr(args, "packing_strategy", "bfd") != "bfd":
                return None
            mode = "keep_start"
        assistant_only = bool(getattr(args, "assistant_only_loss", False))
        if max_length is None or kind == "sft" and not assistant_only or kind == "preference" and mode != "keep_start":
            return None
        return cls(tokenizer, kind, max_length, mode, assistant_only)

    def check(self, row: dict) -> None:
        if self.kind == "sft":
            self._check_conversation(row["messages"])
        else:
            self._check_pair(row)

    def _fits(self, messages: list[dict], **kwargs) -> bool:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        return _token_bound(text, len(messages)) < self.max_length

    def _tokenize(self, messages: list[dict], **kwargs) -> dict:
        return self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)

    def _check_conversation(self, messages: list[dict]) -> None:
        if self._fits(messages):
            return
        encoded = self._tokenize(messages, return_assistant_tokens_mask=True)
        self.check_trained_tokens(encoded["assistant_masks"])

    def _check_pair(self, row: dict) -> None:
        prompt = row["prompt"]
        if self._fits(prompt, add_generation_prompt=True):
            return
        prompt_ids = self._tokenize(prompt, add_generation_prompt=True)["input_ids"]
        # The trainer's prompt is where prompt and prompt + response tokens stop agreeing.
        self.check_prompt_length(min(common_prefix_length(prompt_ids, self._tokenize(prompt + row[side])["input_ids"])
                                     for side in ("chosen", "rejected")))

    def check_trained_tokens(self, trained: list) -> None:
        """`trained`: per token, whether it is trained on (an assistant mask, or labels != -100)."""
        kept = trained[:self.max_length] if self.mode == "keep_start" else trained[-self.max_length:]
        if not any(kept):
            raise RowProblem(FULLY_MASKED, "messages", f"{len(trained)} tokens; truncated to max_length "
                                                       f"{self.max_length} ({self.mode}) no assistant token is left")

    def check_prompt_length(self, prompt_length: int) -> None:
        if prompt_length >= self.max_length:
            raise RowProblem(FULLY_MASKED, "prompt", f"the prompt alone is {prompt_length} tokens, not below "
                                                     f"max_length {self.max_length}: no response token is left")
