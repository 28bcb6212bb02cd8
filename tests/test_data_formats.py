"""Every chat format our sources use normalises to TRL's conversational schema."""

import pytest
from trl.data_utils import is_conversational

from align.data import FEATURES, DataMixture, DataSource, load_mixture
from align.data.errors import PROMPT_MISMATCH, WRONG_TYPE, RowProblem
from align.data.formats import normalise_preference, normalise_sft

SOURCE = DataSource("unused.jsonl")
U = {"role": "user", "content": "What is 2 + 3?"}
A = {"role": "assistant", "content": "2 + 3 = 5."}
B = {"role": "assistant", "content": "2 + 3 = 7."}
S = {"role": "system", "content": "Be brief."}


def test_messages_keep_only_role_and_content():
    row = {"prompt": "What is 2 + 3?", "prompt_id": "x", "messages": [{**U, "name": "u"}, A]}
    assert normalise_sft(row, SOURCE) == {"messages": [U, A]}


def test_sharegpt_conversations_map_role_aliases():
    row = {"conversations": [{"from": "system", "value": S["content"]}, {"from": "human", "value": U["content"]},
                             {"from": "gpt", "value": A["content"]}, {"from": "USER", "value": "And 3 + 3?"},
                             {"from": "assistant", "value": "6."}]}
    roles = [m["role"] for m in normalise_sft(row, SOURCE)["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("completion_field", ["completion", "response", "output"])
def test_prompt_completion_columns(completion_field):
    row = {"system": S["content"], "prompt": U["content"], completion_field: A["content"]}
    assert normalise_sft(row, SOURCE) == {"messages": [S, U, A]}


def test_messages_field_hint():
    source = DataSource("unused.jsonl", messages_field="dialog")
    assert normalise_sft({"dialog": [U, A], "messages": "ignored"}, source) == {"messages": [U, A]}


def test_ultrafeedback_shared_prefix_becomes_prompt():
    row = {"prompt": U["content"], "chosen": [U, A], "rejected": [U, B], "score_chosen": 9.0}
    assert normalise_preference(row, SOURCE) == {"prompt": [U], "chosen": [A], "rejected": [B]}


def test_multi_turn_pairs_keep_earlier_turns_in_prompt():
    follow_up = {"role": "user", "content": "Double it."}
    chosen = [S, U, A, follow_up, {"role": "assistant", "content": "10."}]
    rejected = [S, U, A, follow_up, {"role": "assistant", "content": "11."}]
    row = normalise_preference({"chosen": chosen, "rejected": rejected}, SOURCE)
    assert row["prompt"] == [S, U, A, follow_up]
    assert row["chosen"] == chosen[-1:] and row["rejected"] == rejected[-1:]


def test_string_preference_pairs():
    row = {"prompt": U["content"], "chosen": A["content"], "rejected": B["content"]}
    assert normalise_preference(row, SOURCE) == {"prompt": [U], "chosen": [A], "rejected": [B]}


def test_prompt_as_messages_with_reply_lists():
    row = {"prompt": [S, U], "chosen": [A], "rejected": [B]}
    assert normalise_preference(row, SOURCE) == {"prompt": [S, U], "chosen": [A], "rejected": [B]}


def test_preference_field_hints():
    source = DataSource("unused.jsonl", prompt_field="question", chosen_field="good", rejected_field="bad")
    row = {"question": U["content"], "good": A["content"], "bad": B["content"]}
    assert normalise_preference(row, source) == {"prompt": [U], "chosen": [A], "rejected": [B]}


def test_pairs_with_different_prompts_are_rejected():
    other = {"role": "user", "content": "What is 2 + 4?"}
    with pytest.raises(RowProblem) as caught:
        normalise_preference({"prompt": "2 + 3?", "chosen": [U, A], "rejected": [other, B]}, SOURCE)
    assert caught.value.reason == PROMPT_MISMATCH


def test_wrong_types_name_the_field():
    with pytest.raises(RowProblem) as caught:
        normalise_sft({"messages": [U, {"role": "assistant", "content": 5}]}, SOURCE)
    assert (caught.value.reason, caught.value.field) == (WRONG_TYPE, "messages[1].content")


SAMPLES = {  # directory: (kind, train split, test split)
    "ultrachat": ("sft", "train_sft", "test_sft"),
    "airoboros": ("sft", "train_sft", "test_sft"),
    "sharegpt": ("sft", "train", "test"),
    "systemchat": ("sft", "train_sft", "test_sft"),
    "ultrafeedback": ("preference", "train_prefs", "test_prefs"),
    "preference_strings": ("preference", "train", "test"),
}


@pytest.mark.parametrize("directory", sorted(SAMPLES))
def test_shipped_samples_load_whole_in_trl_schema(directory):
    kind, train, test = SAMPLES[directory]
    source = DataSource(f"data/samples/{directory}", train_split=train, test_split=test)
    datasets, report = load_mixture(DataMixture(sources=[source], kind=kind, strict=True))
    totals = report.as_dict()["totals"]
    assert totals["dropped"] == {} and totals["kept"] == totals["read"] > 20
    for split in ("train", "test"):
        assert datasets[split].features == FEATURES[kind] and len(datasets[split]) > 0
        row = datasets[split][0]
        assert is_conversational(row)
        if kind == "preference":
            assert row["prompt"][-1]["role"] == "user"
            assert row["chosen"][0]["role"] == row["rejected"][0]["role"] == "assistant"


def test_a_side_repeating_the_prompt_column_keeps_only_its_response():
    row = {"system": S["content"], "prompt": U["content"], "chosen": [U, A], "rejected": B["content"]}
    assert normalise_preference(row, SOURCE) == {"prompt": [S, U], "chosen": [A], "rejected": [B]}


def test_null_conversation_counts_as_missing():
    with pytest.raises(RowProblem) as caught:
        normalise_sft({"messages": None}, SOURCE)
    assert (caught.value.reason, caught.value.field) == ("missing_field", "messages")
