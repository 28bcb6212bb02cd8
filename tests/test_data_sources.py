"""Readers: local jsonl/json/parquet files and directories, hub ids through `datasets.load_dataset`."""

import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align.data import DataError, DataMixture, DataSource, load_mixture

ROWS = [{"messages": [{"role": "user", "content": f"Say {i}."}, {"role": "assistant", "content": f"{i}."}]}
        for i in range(6)]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path, **source):
    source.setdefault("test_split", None)
    datasets_, report = load_mixture(DataMixture(sources=[DataSource(str(path), **source)], kind="sft"))
    return datasets_, report


def contents(dataset):
    return sorted(row["messages"][0]["content"] for row in dataset)


@pytest.mark.parametrize("layout", ["jsonl", "json_list", "json_data", "parquet"])
def test_each_file_type_reads_the_same_rows(tmp_path, layout):
    if layout == "jsonl":
        path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    elif layout == "parquet":
        path = tmp_path / "rows.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    else:
        path = tmp_path / "rows.json"
        path.write_text(json.dumps(ROWS if layout == "json_list" else {"data": ROWS}))
    splits, report = load(path)
    assert contents(splits["train"]) == [f"Say {i}." for i in range(6)]
    assert report.as_dict()["totals"] == {"read": 6, "kept": 6, "dropped": {}}


def test_directory_splits_by_file_name_shards_and_data_folder(tmp_path):
    write_jsonl(tmp_path / "train_sft-00000-of-00002.jsonl", ROWS[:2])
    write_jsonl(tmp_path / "data" / "train_sft-00001-of-00002.jsonl", ROWS[2:4])
    write_jsonl(tmp_path / "test_sft" / "part.jsonl", ROWS[4:])
    splits, report = load(tmp_path, train_split="train_sft", test_split="test_sft")
    assert contents(splits["train"]) == ["Say 0.", "Say 1.", "Say 2.", "Say 3."]
    assert contents(splits["test"]) == ["Say 4.", "Say 5."]


def test_directory_of_unnamed_shards_is_the_train_split(tmp_path):
    write_jsonl(tmp_path / "part-a.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "part-b.jsonl", ROWS[3:])
    splits, _ = load(tmp_path)
    assert len(splits["train"]) == 6 and len(splits["test"]) == 0


def test_missing_split_names_what_is_there(tmp_path):
    write_jsonl(tmp_path / "train_sft.jsonl", ROWS)
    with pytest.raises(DataError, match=r"has no split 'test_sft' \(found: train_sft\)"):
        load(tmp_path, train_split="train_sft", test_split="test_sft")
    with pytest.raises(DataError, match=r"has no split 'train'.*train_sft.jsonl"):
        load(tmp_path, train_split="train")


def test_single_file_has_no_test_split(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    with pytest.raises(DataError, match="set test_split to null"):
        load(path, test_split="test")


def test_missing_local_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "absent.jsonl")


def test_unreadable_files_name_their_path(tmp_path):
    broken_json = tmp_path / "broken.json"
    broken_json.write_text('[{"messages": []},\n {oops}]')
    with pytest.raises(DataError, match=r"broken.json: invalid JSON at line 2"):
        load(broken_json)
    broken_parquet = tmp_path / "broken.parquet"
    broken_parquet.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"broken.parquet: not a readable parquet file"):
        load(broken_parquet)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"messages": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl: not UTF-8"):
        load(latin1)


class FakeHub:
    """Stands in for `datasets.load_dataset`, recording its calls."""

    def __init__(self, splits):
        self.splits, self.calls = splits, []

    def __call__(self, path, name=None, split=None, **kwargs):
        self.calls.append((path, name, split, kwargs))
        if split not in self.splits:
            raise ValueError(f'Unknown split "{split}". Should be one of {sorted(self.splits)}.')
        return datasets.Dataset.from_list(self.splits[split])


def test_hub_ids_go_through_load_dataset(monkeypatch):
    hub = FakeHub({"train_sft": ROWS * 2, "test_sft": ROWS[:2]})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    source = DataSource("HuggingFaceH4/ultrachat_200k", config="default", weight=0.5, train_split="train_sft",
                        test_split="test_sft")
    splits, report = load_mixture(DataMixture(sources=[source], kind="sft"))
    assert hub.calls == [("HuggingFaceH4/ultrachat_200k", "default", "train_sft", {}),
                         ("HuggingFaceH4/ultrachat_200k", "default", "test_sft", {})]
    assert (len(splits["train"]), len(splits["test"])) == (6, 2)
    assert report.as_dict()["sources"][0]["splits"]["train"]["available"] == 12


def test_hub_failures_name_the_dataset_and_split(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub({"train": ROWS}))
    with pytest.raises(DataError, match=r"org/chat \[cfg\]: cannot load split 'test' from the hub"):
        load_mixture(DataMixture(sources=[DataSource("org/chat", config="cfg")], kind="sft"))


def test_source_location_needs_no_download(tmp_path, monkeypatch):
    from align.data import source_location

    monkeypatch.setattr(datasets, "load_dataset", FakeHub({}))  # would record any call
    assert source_location(DataSource("HuggingFaceH4/ultrafeedback_binarized")) == "hub"
    assert source_location(DataSource(str(write_jsonl(tmp_path / "r.jsonl", ROWS)))) == "local"
    with pytest.raises(DataError, match="no such file"):
        source_location(DataSource("data/nowhere/rows.jsonl"))
    assert datasets.load_dataset.calls == []
