"""bench/bench_stages.py and bench/synthetic_data.py: the synthetic lengths follow their targets, tokens are counted
by the stated rule on the collators both trainers use, and a tiny end-to-end run measures both sides alike."""

import json
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import bench_stages  # noqa: E402
import synthetic_data  # noqa: E402

from align.model.tokenizer import load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(str(REPO / "recipes" / "tiny" / "tokenizer"))


def within(value: float, target: float, tolerance: float) -> bool:
    return abs(value - target) <= tolerance * target


def test_sft_conversation_lengths_follow_the_mixture(tokenizer):
    rows = synthetic_data.sft_rows(tokenizer, 300, seed=0)
    stats = synthetic_data.length_statistics(rows, tokenizer)
    # A median of 300 lognormal draws (sigma 0.78) lies within ~7% of the true one 95% of the time.
    assert within(stats["conversation"]["median"], synthetic_data.SFT_MEDIAN, 0.12), stats
    assert within(stats["conversation"]["mean"], 837, 0.15), stats
    assert {len(row["messages"]) // 2 for row in rows} == {1, 2, 3, 4}
    assert all([m["role"] for m in row["messages"]] == ["user", "assistant"] * (len(row["messages"]) // 2)
               for row in rows)  # fmt: skip


def test_preference_lengths_follow_ultrafeedback(tokenizer):
    rows = synthetic_data.preference_rows(tokenizer, 300, seed=0)
    stats = synthetic_data.length_statistics(rows, tokenizer)
    targets = {"prompt": synthetic_data.PROMPT_MEDIAN, "chosen": synthetic_data.CHOSEN_MEDIAN,
               "rejected": synthetic_data.REJECTED_MEDIAN}  # fmt: skip
    for field, target in targets.items():
        assert within(stats[field]["median"], target, 0.12), (field, stats[field])
    row = rows[0]
    assert row["chosen"][0] == row["rejected"][0] == {"role": "user", "content": row["prompt"]}
    assert row["score_chosen"] > row["score_rejected"]


def test_data_is_seeded(tokenizer):
    assert synthetic_data.sft_rows(tokenizer, 5, seed=3) == synthetic_data.sft_rows(tokenizer, 5, seed=3)
    assert synthetic_data.sft_rows(tokenizer, 5, seed=3) != synthetic_data.sft_rows(tokenizer, 5, seed=4)
    assert synthetic_data.preference_rows(tokenizer, 5, seed=3) == synthetic_data.preference_rows(tokenizer, 5, 3)


def test_written_dataset_loads_through_the_stage_loader(tokenizer, tmp_path):
    from align.data import DataMixture, load_mixture

    directory = synthetic_data.write_dataset(tmp_path, "preference", tokenizer, rows=6, seed=0)
    mixture = DataMixture(kind="preference", sources=[{"path": str(directory), "train_split": "train_prefs",
                                                       "test_split": "test_prefs"}])  # fmt: skip
    splits, _ = load_mixture(mixture, tokenizer)
    assert len(splits["train"]) == 6 and len(splits["test"]) == synthetic_data.TEST_ROWS


def test_token_counts_of_padded_padding_free_and_preference_batches():
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pad = 0
    examples = [{"input_ids": [5, 6, 7]}, {"input_ids": [5, 6, 7, 8, 9]}]
    padded = DataCollatorForLanguageModeling(pad_token_id=pad)(examples)
    assert bench_stages.count_tokens(padded, pad) == (8, 10)
    free = DataCollatorForLanguageModeling(pad_token_id=pad, padding_free=True, pad_to_multiple_of=16)(examples)
    assert "attention_mask" not in free and free["input_ids"].numel() == 16
    assert bench_stages.count_tokens(free, pad) == (8, 16)
    pairs = [{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [7]}]
    assert bench_stages.count_tokens(DataCollatorForPreference(pad_token_id=pad)(pairs), pad) == (8, 10)
    # Our model computes the real tokens only, as one row rounded up to the packing multiple.
    assert bench_stages.count_tokens(padded, pad, unpadding_model=True) == (8, bench_stages.PACK_MULTIPLE)


def test_summary_leaves_out_warm_up_and_ratio_compares_real_tokens():
    steps = [{"seconds": 9.0, "real_tokens": 10, "processed_tokens": 20, "sequences": 2, "collate_s": 0.5},
             {"seconds": 1.0, "real_tokens": 60, "processed_tokens": 80, "sequences": 4, "collate_s": 0.001},
             {"seconds": 3.0, "real_tokens": 60, "processed_tokens": 80, "sequences": 4, "collate_s": 0.004},
             {"seconds": 2.0, "real_tokens": 60, "processed_tokens": 80, "sequences": 4, "collate_s": 0.002}]  # fmt: skip
    summary = bench_stages.summarise(steps, warmup=1)
    assert summary["timed_steps"] == 3
    assert summary["real_tokens_per_s"] == summary["steps_only_real_tokens_per_s"] == 180 / 6
    assert summary["padding_fraction"] == 1 - 180 / 240
    # A precomputed reference pass of 0.5 s a sequence: the 12 timed sequences' share is added to the steps' 6 s.
    with_pass = bench_stages.summarise(steps, warmup=1, reference_s_per_sequence=0.5)
    assert with_pass["real_tokens_per_s"] == 180 / 12 and with_pass["steps_only_real_tokens_per_s"] == 180 / 6
    assert (summary["median_step_s"], summary["worst_step_s"], summary["worst_over_median"]) == (2.0, 3.0, 1.5)
    assert summary["median_collate_ms"] == 2.0
    assert bench_stages.ratio([{"side": "ours", "real_tokens_per_s": 30}, {"side": "stock", "real_tokens_per_s": 20}]) \
        == 1.5
    assert bench_stages.ratio([{"side": "ours", "real_tokens_per_s": 30}, {"side": "stock", "error": "oom"}]) is None


def check_side(result: dict, steps: int) -> None:
    assert "error" not in result, result
    assert [step["step"] for step in result["steps"]] == list(range(1, steps + 1))
    for step in result["steps"]:
        assert 0 < step["real_tokens"] <= step["processed_tokens"]
        assert step["processed_tokens"] % result["micro_batch"] == 0  # padded: micro-batch x longest row
        assert step["seconds"] > 0 and step["loss"] is not None and step["model_flops"] > 0
        assert 0 < step["collate_s"] < step["seconds"]
    assert 0 <= result["padding_fraction"] < 1


@pytest.mark.slow
@pytest.mark.parametrize("stage, mode", [("sft", "lora"), ("dpo", "full")])
def test_tiny_end_to_end_run_measures_both_sides(stage, mode, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "result.json"
    report = bench_stages.main([
        "--tiny", "--stage", stage, "--mode", mode, "--steps", "2", "--warmup", "0", "--rows", "12",
        "--set", "per_device_train_batch_size=2", "--set", "max_length=1024", "--set", "logging_steps=1",
        "--stock-set", "per_device_train_batch_size=2", "--stock-set", "max_length=1024", "--stock-set",
        "logging_steps=1", "--out", str(out),
        *(["--set", "packing=false", "--set", "padding_free=false"] if stage == "sft" else []),  # padded rows, as stock
    ])  # fmt: skip
    ours, stock = report["results"]
    for result in (ours, stock):
        check_side(result, steps=2)
    # Same rows (no prompt fills max_length, so neither side drops one), same sampler seed: the same real tokens;
    # our model computes them rounded up to the packed row's multiple, stock the padded batch.
    assert [s["real_tokens"] for s in ours["steps"]] == [s["real_tokens"] for s in stock["steps"]]
    multiple = bench_stages.PACK_MULTIPLE
    assert [s["processed_tokens"] for s in ours["steps"]] == [-(-s["real_tokens"] // multiple) * multiple
                                                              for s in ours["steps"]]
    assert report["ours_over_stock_real_tokens_per_s"] == ours["real_tokens_per_s"] / stock["real_tokens_per_s"]
    assert json.loads(out.read_text())["results"][0]["steps"] == ours["steps"]
    if mode == "lora":
        assert any("dropout 0" in note for note in stock["notes"])
    assert statistics.median(s["seconds"] for s in ours["steps"]) == ours["median_step_s"]


def test_model_flops_follow_the_stated_convention():
    from align.config.recipes import ModelArgs
    from align.model.model_loading import model_config

    config = model_config(ModelArgs(name_or_path=str(REPO / bench_stages.MODEL_CONFIG), init="random"))
    # docs/benchmarks.md, the model table: 5.07 GFLOP a token for a forward of the 8B shape at sequence 2048.
    assert bench_stages.model_flops(config, [2048], forwards=1) / 2048 == pytest.approx(5.07e9, rel=2e-3)
    # Attention grows with each sequence's square: two sequences of 1024 cost less than one of 2048.
    assert bench_stages.model_flops(config, [1024, 1024], 1) < bench_stages.model_flops(config, [2048], 1)
    # A precomputed DPO reference still counts: its pass's time is added to the steps (summarise).
    assert [bench_stages.forwards_per_token(stage, lora) for stage, lora in
            [("sft", False), ("sft", True), ("dpo", False), ("dpo", True)]] == [3, 2, 4, 3]  # fmt: skip


def test_sequence_lengths_of_padded_preference_and_packed_batches():
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    pairs = [{"prompt_ids": [5, 6], "chosen_ids": [7, 8, 9], "rejected_ids": [7]}]
    assert bench_stages.sequence_lengths(DataCollatorForPreference(pad_token_id=0)(pairs)) == [5, 3]
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": [5, 6, 7]},
                                                                                {"input_ids": [5, 6]}])
    assert bench_stages.sequence_lengths(packed) == [3, 2]
