"""Mixtures: weights take deterministic fractions, test splits are carved on request, sources are shuffled together."""

import json

import pytest

from align.data import DataMixture, DataSource, load_mixture


def conversation(tag, i):
    return {"messages": [{"role": "user", "content": f"{tag} question {i}"},
                         {"role": "assistant", "content": f"{tag} answer {i}"}]}


@pytest.fixture
def two_sources(tmp_path):
    for tag, rows in (("a", 40), ("b", 100)):
        directory = tmp_path / tag
        directory.mkdir()
        for split, count in (("train", rows), ("test", 4)):
            lines = [json.dumps(conversation(f"{tag}-{split}", i)) for i in range(count)]
            (directory / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def mix(root, weights, **mixture):
    sources = [DataSource(str(root / tag), weight=weight) for tag, weight in weights.items()]
    return load_mixture(DataMixture(sources=sources, kind="sft", **mixture))


def tags(dataset):
    return [row["messages"][0]["content"].split()[0] for row in dataset]


def test_weights_take_floor_fraction_of_train_and_whole_test(two_sources):
    splits, report = mix(two_sources, {"a": 0.25, "b": 0.29})
    assert tags(splits["train"]).count("a-train") == 10 and tags(splits["train"]).count("b-train") == 29
    assert len(splits["test"]) == 8
    sources = report.as_dict()["sources"]
    assert [s["splits"]["train"]["available"] for s in sources] == [40, 100]
    assert [s["splits"]["train"]["read"] for s in sources] == [10, 29]


def test_same_seed_same_data_other_seed_other_choice(two_sources):
    first, _ = mix(two_sources, {"a": 0.5, "b": 0.1}, seed=7)
    again, _ = mix(two_sources, {"a": 0.5, "b": 0.1}, seed=7)
    other, _ = mix(two_sources, {"a": 0.5, "b": 0.1}, seed=8)
    assert first["train"].to_list() == again["train"].to_list()
    assert sorted(map(str, first["train"].to_list())) != sorted(map(str, other["train"].to_list()))


def test_sources_are_shuffled_together(two_sources):
    splits, _ = mix(two_sources, {"a": 1.0, "b": 1.0})
    order = tags(splits["train"])
    assert len(order) == 140 and order != sorted(order)


def test_test_split_size_carves_sources_without_a_test_split(tmp_path):
    lines = [json.dumps(conversation("c", i)) for i in range(20)]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    source = DataSource(str(tmp_path / "rows.jsonl"), weight=0.5, test_split=None)
    splits, report = load_mixture(DataMixture(sources=[source], kind="sft", test_split_size=0.25))
    assert (len(splits["train"]), len(splits["test"])) == (7, 5)  # floor(0.5 * 15), floor(0.25 * 20)
    train = {row["messages"][0]["content"] for row in splits["train"]}
    assert not train & {row["messages"][0]["content"] for row in splits["test"]}
    assert report.as_dict()["sources"][0]["splits"]["test"]["split"] is None


def test_mixture_built_from_plain_dicts_as_recipes_do(two_sources):
    mixture = DataMixture(kind="sft", seed=1, sources=[{"path": str(two_sources / "a"), "weight": 0.5}])
    assert isinstance(mixture.sources[0], DataSource)
    splits, report = load_mixture(mixture)
    assert len(splits["train"]) == 20
    assert "a train (train): read 20, kept 20, dropped 0" in report.summary()


@pytest.mark.parametrize("bad", [dict(weight=0), dict(weight=1.5), dict(weight="half"), dict(path="")])
def test_bad_source_fields_are_refused(bad):
    with pytest.raises(ValueError):
        DataSource(**{"path": "x.jsonl", **bad})


@pytest.mark.parametrize("bad", [dict(kind="rl"), dict(sources=[]), dict(test_split_size=1.0), dict(max_chars=0)])
def test_bad_mixture_fields_are_refused(bad):
    with pytest.raises(ValueError):
        DataMixture(**{"sources": [DataSource("x.jsonl")], "kind": "sft", **bad})
