"""Bad rows of every kind are counted by reason (lenient) or named by path, row and field (strict)."""

import json

import pytest

from align.data import DROP_REASONS, STRUCTURAL_REASONS, DataError, DataMixture, DataSource, load_mixture

GOOD = {"messages": [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]}
GOOD_PAIR = {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco."}

# (line text, reason, field) for SFT rows; every line is a row of one file, the good rows in between.
BAD_SFT = [
    ('{"messages": [}', "invalid_json", None),
    ('["a", "list"]', "wrong_type", None),
    ('{"text": "no conversation column"}', "missing_field", "messages"),
    ('{"messages": "not a list"}', "wrong_type", "messages"),
    ('{"messages": [{"role": "user"}]}', "missing_field", "messages[0].content"),
    ('{"messages": [{"role": "user", "content": 3}]}', "wrong_type", "messages[0].content"),
    ('{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}', "unknown_role",
     "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}]}', "empty_content",
     "messages[1].content"),
    ('{"messages": [{"role": "user", "content": "Hi"}]}', "no_assistant_turn", "messages"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hey"}, '
     '{"role": "assistant", "content": "Yo"}]}', "wrong_role_order", "messages[1].role"),
    ('{"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Hey"}, '
     '{"role": "assistant", "content": "Yo"}]}', "wrong_role_order", "messages[0].role"),
    ('{"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be brief"}, '
     '{"role": "assistant", "content": "Yo"}]}', "wrong_role_order", "messages[1].role"),
    (json.dumps({"messages": [{"role": "user", "content": "long " * 40},
                              {"role": "assistant", "content": "ok"}]}), "too_long", "messages"),
]
BAD_PAIRS = [
    ('{"prompt": "Q?", "chosen": "Same.", "rejected": "Same."}', "chosen_equals_rejected", "rejected"),
    ('{"prompt": "Q?", "chosen": "Yes."}', "missing_field", "rejected"),
    ('{"prompt": "Q?", "chosen": 42, "rejected": "No."}', "wrong_type", "chosen"),
    ('{"prompt": "Q?", "chosen": "", "rejected": "No."}', "empty_content", "chosen[0].content"),
    ('{"chosen": "Yes.", "rejected": "No."}', "missing_field", "prompt"),
    ('{"prompt": [{"from": "robot", "value": "Q?"}], "chosen": "Y", "rejected": "N"}', "unknown_role",
     "prompt[0].role"),
    ('{"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Y"}], '
     '"rejected": [{"role": "user", "content": "Other?"}, {"role": "assistant", "content": "N"}]}',
     "prompt_mismatch", "rejected"),
    ('{"prompt": "Other?", "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Y"}], '
     '"rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "N"}]}',
     "prompt_mismatch", "prompt"),
    ('{"prompt": [{"role": "assistant", "content": "Hi"}, {"role": "user", "content": "Q?"}], "chosen": "Y", '
     '"rejected": "N"}', "wrong_role_order", "prompt[0].role"),
    ('{"prompt": "Q?", "chosen": [{"role": "assistant", "content": "Y"}, {"role": "assistant", "content": "Y"}], '
     '"rejected": "N"}', "wrong_role_order", "chosen[1].role"),
]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def mixed_file(tmp_path, bad, good):
    """Good row, bad row, good row, ...: bad row i sits on line 2 * i + 2."""
    lines = [json.dumps(good)]
    for text, _, _ in bad:
        lines += [text, json.dumps(good)]
    return write_lines(tmp_path / "mixed.jsonl", lines)


def load(path, kind="sft", tokenizer=None, **mixture):
    mixture = DataMixture(sources=[DataSource(str(path), test_split=None)], kind=kind, **mixture)
    return load_mixture(mixture, tokenizer=tokenizer)


def assert_nothing_lost(report):
    data = report.as_dict()
    for source in data["sources"]:
        for split in source["splits"].values():
            assert split["read"] == split["kept"] + sum(split["dropped"].values())
        assert source["read"] == source["kept"] + sum(source["dropped"].values())
    assert data["totals"]["read"] == data["totals"]["kept"] + sum(data["totals"]["dropped"].values())
    assert data["totals"]["kept"] == data["train_rows"] + data["test_rows"]
    assert set(data["totals"]["dropped"]) <= set(DROP_REASONS)


@pytest.mark.parametrize("kind, bad, good", [("sft", BAD_SFT, GOOD), ("preference", BAD_PAIRS, GOOD_PAIR)])
def test_lenient_mode_counts_every_bad_row_by_reason(tmp_path, kind, bad, good):
    splits, report = load(mixed_file(tmp_path, bad, good), kind=kind, max_chars=100)
    expected = {}
    for _, reason, _ in bad:
        expected[reason] = expected.get(reason, 0) + 1
    totals = report.as_dict()["totals"]
    assert totals["dropped"] == dict(sorted(expected.items()))
    assert totals["read"] == 2 * len(bad) + 1 and totals["kept"] == len(splits["train"]) == len(bad) + 1
    assert_nothing_lost(report)
    examples = report.as_dict()["sources"][0]["splits"]["train"]["drop_examples"]
    first_bad_line = 2 * [r for _, r, _ in bad].index(bad[0][1]) + 2
    assert examples[bad[0][1]][0].startswith(f"{tmp_path / 'mixed.jsonl'} row {first_bad_line}")


@pytest.mark.parametrize("kind, bad, good", [("sft", BAD_SFT, GOOD), ("preference", BAD_PAIRS, GOOD_PAIR)])
def test_strict_mode_names_path_row_and_field(tmp_path, kind, bad, good):
    for text, reason, field in bad:
        path = write_lines(tmp_path / f"{reason}.jsonl", [json.dumps(good), json.dumps(good), text])
        if reason not in STRUCTURAL_REASONS:
            _, report = load(path, kind=kind, strict=True, max_chars=100)  # content filters never raise
            assert report.as_dict()["totals"]["dropped"] == {reason: 1}
            continue
        with pytest.raises(DataError) as caught:
            load(path, kind=kind, strict=True)
        error = caught.value
        assert (error.path, error.row, error.field, error.reason) == (str(path), 3, field, reason)
        assert str(error).startswith(f"{path}: row 3" + (f": field '{field}'" if field else ""))


def test_over_long_in_tokens_with_a_tokenizer(tmp_path):
    class WordTokenizer:  # one token per word, no chat template: the character-free path
        chat_template = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": text.split()}

    rows = [GOOD, {"messages": [{"role": "user", "content": "one two three four"},
                                {"role": "assistant", "content": "five six"}]}]
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(r) for r in rows])
    splits, report = load(path, max_tokens=5, tokenizer=WordTokenizer())
    assert len(splits["train"]) == 1 and report.as_dict()["totals"]["dropped"] == {"too_long": 1}
    with pytest.raises(ValueError, match="max_tokens needs a tokenizer"):
        load(path, max_tokens=5)


def test_over_long_counts_prompt_plus_the_longer_response(tmp_path):
    pair = {"prompt": "x" * 10, "chosen": "y" * 5, "rejected": "z" * 30}
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(GOOD_PAIR), json.dumps(pair)])
    _, report = load(path, kind="preference", max_chars=39)
    assert report.as_dict()["totals"]["dropped"] == {"too_long": 1}


def test_duplicates_dropped_when_asked(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(GOOD)] * 3)
    assert len(load(path)[0]["train"]) == 3
    splits, report = load(path, dedupe=True)
    assert len(splits["train"]) == 1 and report.as_dict()["totals"]["dropped"] == {"duplicate": 2}


def test_nothing_left_to_train_on_is_an_error(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", ['{"messages": []}'])
    with pytest.raises(DataError, match="no training rows left after validation"):
        load(path)


def word_tokenizer():
    """A whitespace word-level tokenizer with a plain chat template: `role content </s>` per message."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                               "{% if add_generation_prompt %}assistant {% endif %}")
    return tokenizer


def test_over_long_in_tokens_through_a_chat_template(tmp_path):
    tokenizer = word_tokenizer()
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(GOOD)])  # user Hi ! </s> assistant Hello . </s>
    assert len(load(path, max_tokens=8, tokenizer=tokenizer)[0]["train"]) == 1
    with pytest.raises(DataError, match="no training rows"):
        load(path, max_tokens=7, tokenizer=tokenizer)


def test_kept_rows_render_through_trl(tmp_path):
    from trl.data_utils import maybe_apply_chat_template

    tokenizer = word_tokenizer()
    sft = write_lines(tmp_path / "sft.jsonl", [json.dumps(GOOD)])
    assert maybe_apply_chat_template(load(sft)[0]["train"][0], tokenizer) == {
        "text": "user Hi! </s> assistant Hello. </s> "}
    pairs = write_lines(tmp_path / "pairs.jsonl", [json.dumps(GOOD_PAIR)])
    assert maybe_apply_chat_template(load(pairs, kind="preference")[0]["train"][0], tokenizer) == {
        "prompt": "user Capital of Peru? </s> assistant ", "chosen": "Lima. </s> ", "rejected": "Cusco. </s> "}


def tiny_tokenizer():
    from align.model.tokenizer import load_tokenizer

    return load_tokenizer("recipes/tiny/tokenizer")  # its chat template marks the assistant's tokens


@pytest.mark.parametrize("mode, dropped", [("keep_start", {"fully_masked": 1}), ("keep_end", {})])
def test_conversations_truncated_to_no_assistant_token_are_counted(tmp_path, mode, dropped):
    from align.data.truncation import TrainerTruncation

    long_question = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    path = write_lines(tmp_path / "rows.jsonl", [json.dumps(GOOD), json.dumps(long_question)])
    cut = TrainerTruncation(tiny_tokenizer(), "sft", max_length=64, mode=mode, assistant_only_loss=True)
    splits, report = load_mixture(DataMixture(sources=[DataSource(str(path), test_split=None)]), truncation=cut)
    assert report.as_dict()["totals"]["dropped"] == dropped and len(splits["train"]) == 2 - sum(dropped.values())


def test_pairs_whose_prompt_fills_max_length_are_counted(tmp_path):
    from align.data.truncation import TrainerTruncation

    long_pair = {"prompt": "word " * 200, "chosen": "Yes.", "rejected": "No."}
    path = write_lines(tmp_path / "pairs.jsonl", [json.dumps(GOOD_PAIR), json.dumps(long_pair)])
    cut = TrainerTruncation(tiny_tokenizer(), "preference", max_length=64)
    _, report = load_mixture(DataMixture(sources=[DataSource(str(path), test_split=None)], kind="preference"),
                             truncation=cut)
    assert report.as_dict()["totals"]["dropped"] == {"fully_masked": 1}
    assert "the prompt alone is" in report.as_dict()["sources"][0]["splits"]["train"]["drop_examples"][
        "fully_masked"][0]


@pytest.mark.parametrize("settings, cut", [
    (dict(kind="sft", assistant_only_loss=True), ("sft", 64, "keep_end")),
    (dict(kind="sft", assistant_only_loss=True, packing=True, packing_strategy="bfd"), ("sft", 64, "keep_start")),
    (dict(kind="sft", assistant_only_loss=True, packing=True, packing_strategy="wrapped"), None),
    (dict(kind="sft", assistant_only_loss=False), None),
    (dict(kind="preference"), None),  # keep_end keeps every pair's response end
    (dict(kind="preference", max_length=None, truncation_mode="keep_start"), None),
])
def test_the_cut_follows_the_trainer_config(settings, cut):
    from types import SimpleNamespace

    from align.data.truncation import TrainerTruncation

    kind = settings.pop("kind")
    args = SimpleNamespace(**{"max_length": 64, "truncation_mode": "keep_end", **settings})
    found = TrainerTruncation.for_training(args, None, kind)
    assert (None if found is None else (found.kind, found.max_length, found.mode)) == cut
