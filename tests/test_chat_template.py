"""The Zephyr-style chat template: exact rendering, generation prompt, and the assistant-token mask TRL trains on."""

import pytest
from transformers import AutoTokenizer

from align.model.chat_template import resolve_chat_template

TINY_TOKENIZER = "recipes/tiny/tokenizer"
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And Italy?"},
    {"role": "assistant", "content": "Rome."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TINY_TOKENIZER)  # stock loader, template shipped with it


def test_renders_zephyr_turns_closed_by_eos(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert text == ("<s><|system|>\nBe brief.</s>\n<|user|>\nCapital of France?</s>\n<|assistant|>\nParis.</s>\n"
                    "<|user|>\nAnd Italy?</s>\n<|assistant|>\nRome.</s>\n")


def test_generation_prompt_opens_an_assistant_turn(tokenizer):
    text = tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|user|>\nCapital of France?</s>\n<|assistant|>\n")


def test_assistant_mask_covers_only_answers_and_their_eos(tokenizer):
    encoded = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    trained = tokenizer.decode([token for token, keep in zip(ids, mask) if keep])
    ignored = tokenizer.decode([token for token, keep in zip(ids, mask) if not keep])
    assert trained == "Paris.</s>Rome.</s>"
    assert "Paris" not in ignored and "Capital of France?" in ignored and "<|assistant|>" in ignored


def test_special_tokens_and_unknown_role(tokenizer):
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>", "</s>", "<unk>", "<pad>")
    with pytest.raises(Exception, match="unknown role tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_template_by_name_or_literal():
    assert "{% generation %}" in resolve_chat_template("zephyr")
    assert resolve_chat_template("{% for m in messages %}{% endfor %}").startswith("{%")
    with pytest.raises(ValueError, match="unknown chat template 'chatml'"):
        resolve_chat_template("chatml")
