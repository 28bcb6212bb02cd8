"""Normalised rows to the token ids TRL's trainers train on, a batch of rows at a time.

The same calls TRL 1.16 makes per row (`apply_chat_template(..., tokenize=True, return_dict=True)`, SFT with
`return_assistant_tokens_mask` under `assistant_only_loss`; DPO's prompt/response split where the prompt's tokens
and the whole conversation's stop agreeing), made once per batch: one template render per row and one tokenizer
call per batch. tests/test_prepared_data.py holds the result to TRL's own preparation of the same rows.
"""

from __future__ import annotations

from trl.data_utils import common_prefix_length

IGNORED = -100  # the label of a token that is not trained on (transformers' and TRL's ignore index)


def encode_conversations(tokenizer, conversations: list[list[dict]], assistant_only_loss: bool):
    """(input_ids, labels) per conversation; labels are `IGNORED` off the assistant's tokens when
    `assistant_only_loss`, else the ids themselves."""
    encoded = tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=assistant_only_loss)
    ids = encoded["input_ids"]
    if not assistant_only_loss:
        return ids, ids
    labels = [[token if trained else IGNORED for token, trained in zip(row, mask)]
              for row, mask in zip(ids, encoded["assistant_masks"])]
    return ids, labels


def encode_pairs(tokenizer, prompts: list[list[dict]], chosen: list[list[dict]], rejected: list[list[dict]]):
    """(prompt_ids, chosen_ids, rejected_ids) per pair, split where TRL's DPO splits them."""
    prompt_ids = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True,
                                               return_dict=True)["input_ids"]
    chosen_full, rejected_full = (
        tokenizer.apply_chat_template([p + r for p, r in zip(prompts, responses)], tokenize=True,
                                      return_dict=True)["input_ids"]
        for responses in (chosen, rejected))
    out = ([], [], [])
    for prompt, whole_chosen, whole_rejected in zip(prompt_ids, chosen_full, rejected_full):
        length = min(common_prefix_length(prompt, whole_chosen), common_prefix_length(prompt, whole_rejected))
        for column, ids in zip(out, (prompt[:length], whole_chosen[length:], whole_rejected[length:])):
            column.append(ids)
    return out


def trained_tokens(labels: list[int]) -> list[bool]:
    return [label != IGNORED for label in labels]


def pair_length(example: dict, max_length: int | None) -> dict:
    """A pair's tokens as DPO computes them (chosen plus rejected, each cut at `max_length`): the `length` that
    token-balanced micro-batches are dealt by."""
    prompt = len(example["prompt_ids"])
    chosen, rejected = prompt + len(example["chosen_ids"]), prompt + len(example["rejected_ids"])
    if max_length is not None:
        chosen, rejected = min(chosen, max_length), min(rejected, max_length)
    return {"length": chosen + rejected}
