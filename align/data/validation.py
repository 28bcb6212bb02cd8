"""Content checks on normalised rows: each failure is a `RowProblem` with its drop reason.

Run after `formats`, so every row already has the output schema. The checks: roles are system/user/assistant;
no message is empty (whitespace only counts as empty); an SFT conversation has an assistant turn; a preference
pair has an assistant response on both sides and the two differ; the row is not longer than the limit (tokens when
a tokenizer is given, else characters); and, when asked, it is not a repeat of a row already kept.
"""

from __future__ import annotations

import hashlib
import json

from .errors import (CHOSEN_EQUALS_REJECTED, DUPLICATE, EMPTY_CONTENT, MISSING_FIELD, NO_ASSISTANT_TURN, TOO_LONG,
                     UNKNOWN_ROLE, WRONG_ROLE_ORDER, RowProblem)

ROLES = ("system", "user", "assistant")


def check_sft(row: dict) -> None:
    messages = row["messages"]
    check_messages(messages, "messages")
    check_role_order(messages, "messages", first="user")
    if not any(message["role"] == "assistant" for message in messages):
        raise RowProblem(NO_ASSISTANT_TURN, "messages", "the conversation has no assistant turn")


def check_preference(row: dict) -> None:
    if not row["prompt"]:
        raise RowProblem(MISSING_FIELD, "prompt", "the prompt has no turns")
    for field in ("prompt", "chosen", "rejected"):
        check_messages(row[field], field)
    for field in ("chosen", "rejected"):
        if not row[field]:
            raise RowProblem(NO_ASSISTANT_TURN, field, "no assistant response after the prompt")
    check_role_order(row["prompt"], "prompt", first="user")
    if row["prompt"][-1]["role"] != "user":
        raise RowProblem(WRONG_ROLE_ORDER, f"prompt[{len(row['prompt']) - 1}].role",
                         "the prompt must end with a user turn")
    for field in ("chosen", "rejected"):
        check_role_order(row[field], field, first="assistant")
    if row["chosen"] == row["rejected"]:
        raise RowProblem(CHOSEN_EQUALS_REJECTED, "rejected", "chosen and rejected responses are identical")


CHECKS = {"sft": check_sft, "preference": check_preference}


def check_messages(messages: list[dict], field: str) -> None:
    for index, message in enumerate(messages):
        if message["role"] not in ROLES:
            raise RowProblem(UNKNOWN_ROLE, f"{field}[{index}].role",
                             f"unknown role {message['role']!r} (expected one of {', '.join(ROLES)})")
        if not message["content"].strip():
            raise RowProblem(EMPTY_CONTENT, f"{field}[{index}].content", f"the {message['role']} message is empty")


def check_role_order(messages: list[dict], field: str, first: str) -> None:
    """System turns only at the start of a conversation, then turns alternating from `first` (user for a whole
    conversation or a prompt, assistant for a response): the chat template and the loss mask assume it."""
    expected, leading = first, first == "user"
    for index, message in enumerate(messages):
        if leading and message["role"] == "system":
            continue
        leading = False
        if message["role"] != expected:
            raise RowProblem(WRONG_ROLE_ORDER, f"{field}[{index}].role",
                             f"a {message['role']} turn where a {expected} turn belongs (turns must alternate "
                             "user/assistant after any system turns)")
        expected = "assistant" if expected == "user" else "user"


class LengthLimit:
    """Drops rows longer than `max_tokens` (with a tokenizer) and/or `max_chars` (text length, no tokenizer)."""

    def __init__(self, max_chars: int | None = None, max_tokens: int | None = None, tokenizer=None):
        if max_tokens is not None and tokenizer is None:
            raise ValueError("max_tokens needs a tokenizer: pass tokenizer= to load_mixture, or use max_chars")
        self.max_chars, self.max_tokens, self.tokenizer = max_chars, max_tokens, tokenizer

    def check(self, row: dict) -> None:
        for field, conversation in _full_conversations(row):
            if self.max_chars is not None:
                length = sum(len(message["content"]) for message in conversation)
                if length > self.max_chars:
                    raise RowProblem(TOO_LONG, field, f"{length} characters > max_chars {self.max_chars}")
            if self.max_tokens is not None:
                length = self._token_length(conversation)
                if length > self.max_tokens:
                    raise RowProblem(TOO_LONG, field, f"{length} tokens > max_tokens {self.max_tokens}")

    def _token_length(self, conversation: list[dict]) -> int:
        if getattr(self.tokenizer, "chat_template", None):
            ids = self.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False)
            return len(ids)
        return sum(len(self.tokenizer(message["content"], add_special_tokens=False)["input_ids"])
                   for message in conversation)


def _full_conversations(row: dict):
    """What the trainer will see: the conversation, or the prompt followed by each response."""
    if "messages" in row:
        return [("messages", row["messages"])]
    return [(field, row["prompt"] + row[field]) for field in ("chosen", "rejected")]


def row_digest(row: dict) -> bytes:
    return hashlib.blake2b(json.dumps(row, sort_keys=True, ensure_ascii=False).encode(), digest_size=16).digest()


class Deduplicator:
    """Remembers a digest of every row kept so far in one split and flags exact repeats."""

    def __init__(self):
        self._seen: set[bytes] = set()

    def check(self, row: dict) -> None:
        self.check_digest(row_digest(row))

    def check_digest(self, digest: bytes) -> None:
        if digest in self._seen:
            raise RowProblem(DUPLICATE, None, "an identical row was already kept in this split")
        self._seen.add(digest)
