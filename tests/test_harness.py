"""`eval harness`: on a tiny random JetMoE and tasks on local files (tests/fixtures/harness: multiple choice,
generation, perplexity), our engine (packed scoring, our decoder) and lm-eval's own `hf` model on transformers'
JetMoeForCausalLM give the same per-request loglikelihoods (float32), the same generations and the same scores
from lm-eval's own metrics; the table and chart are written; a rerun skips finished pairs; a LoRA adapter dir
evaluates as its merged model; a bad task name ends in one line, exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.evaluation import harness
from align.evaluation.harness_presets import PRESETS, expand
from align.evaluation.harness_table import harness_table, markdown
from align.evaluation.settings import HarnessSettings
from align.inference.export import export_merged
from align.lora.adapters import add_lora
from align.lora.arguments import LoraArguments
from alignment_fixtures import tiny_model, tokenizer_for
from model_pairs import randomize

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "harness"
TASKS = ["tiny_mc", "tiny_gen", "tiny_text"]


@pytest.fixture(scope="module")
def at_repo_root():
    """The local tasks name their data files relative to the repository root, as a user runs them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        yield


def local_task_manager(*include_paths):
    """lm-eval's task index of `include_paths` alone: indexing its ~15k own tasks takes ~20 s on two cores."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(path) for path in include_paths], include_defaults=False)


@pytest.fixture(scope="module")
def task_manager(at_repo_root):
    return local_task_manager(FIXTURES)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny JetMoE with random weights everywhere (so answers differ by choice) and a tokenizer for the tasks."""
    texts = [line for name in TASKS for line in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]
    tokenizer = tokenizer_for(texts * 5, vocab_size=300)
    model = tiny_model(tokenizer)
    randomize(model, seed=1)
    path = tmp_path_factory.mktemp("harness") / "model"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _evaluate(model_dirs, out, task_manager, tasks=TASKS, **settings):
    settings = HarnessSettings(tasks=tasks, **{"batch_size": "3", "log_samples": True, **settings})
    lines = []
    paths = harness.evaluate_models([str(m) for m in model_dirs], settings, out, task_manager, progress=lines.append)
    return paths, lines


def _samples(out: Path, model_dir, task: str) -> list[dict]:
    path = out / harness.model_key(str(model_dir)) / f"samples_{task}.jsonl"
    return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda row: row["doc_id"])


def _results(out: Path, model_dir, task: str) -> dict:
    return json.loads(harness.result_file(out, str(model_dir), task).read_text())["results"][task]


@pytest.fixture(scope="module")
def both_engines(model_dir, task_manager, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines")
    # ours in packed batches of at most 3 requests or 160 tokens; lm-eval's hf in right-padded batches of 3
    _evaluate([model_dir], out / "jetmoe", task_manager, engine="jetmoe", max_batch_tokens=160)
    paths, _ = _evaluate([model_dir], out / "transformers", task_manager, engine="transformers")
    return out, paths


@pytest.mark.slow  # both engines on three local tasks: ~20 s once for the module, on two cores
def test_our_engine_and_lm_evals_hf_model_give_the_same_loglikelihoods_and_scores(both_engines, model_dir):
    out, _ = both_engines
    for task in TASKS:
        ours, stock = _samples(out / "jetmoe", model_dir, task), _samples(out / "transformers", model_dir, task)
        assert [row["arguments"] for row in ours] == [row["arguments"] for row in stock]  # the same requests
        for mine, theirs in zip(ours, stock):
            if task == "tiny_gen":
                assert mine["resps"] == theirs["resps"]  # greedy generations, token for token
                continue
            for (mine_resp,), (their_resp,) in zip(mine["resps"], theirs["resps"]):
                if task == "tiny_mc":  # (loglikelihood, is_greedy) per choice
                    assert mine_resp[1] == their_resp[1]
                    mine_resp, their_resp = mine_resp[0], their_resp[0]
                assert mine_resp == pytest.approx(their_resp, rel=1e-5, abs=1e-4)
        ours_metrics, stock_metrics = _results(out / "jetmoe", model_dir, task), _results(out / "transformers",
                                                                                          model_dir, task)
        for key in ("acc,none", "acc_norm,none", "exact_match,none"):
            if key in stock_metrics:
                assert ours_metrics[key] == stock_metrics[key], (task, key)
        for key in ("word_perplexity,none", "bits_per_byte,none"):
            if key in stock_metrics:
                assert ours_metrics[key] == pytest.approx(stock_metrics[key], rel=1e-5)
    # The comparison has something to compare: choices scored apart, varied answers, several windows of 128 tokens.
    mc = _samples(out / "jetmoe", model_dir, "tiny_mc")
    assert len({round(resp[0][0], 3) for row in mc for resp in row["resps"]}) > 20
    assert len({row["resps"][0][0] for row in _samples(out / "jetmoe", model_dir, "tiny_gen")}) > 1
    assert _results(out / "jetmoe", model_dir, "tiny_mc")["acc,none"] > 0


@pytest.mark.slow
def test_the_results_table_and_chart_are_written(both_engines, model_dir):
    out, paths = both_engines
    assert [path.name for path in paths] == ["harness.md", "harness.json", "harness.png"]
    assert all(path.stat().st_size > 0 for path in paths)
    table = json.loads((out / "transformers" / "harness.json").read_text())
    acc = next(row for row in table["rows"] if row["task"] == "tiny_mc" and row["metric"] == "acc,none")
    assert acc["values"] == [_results(out / "transformers", model_dir, "tiny_mc")["acc,none"]]
    assert acc["shots"] == 2 and acc["published"] is None
    assert str(model_dir) in (out / "transformers" / "harness.md").read_text()
    record = json.loads(harness.result_file(out / "jetmoe", str(model_dir), "tiny_mc").read_text())
    assert {"results", "configs", "versions", "n-shot", "config"} <= set(record)  # lm-eval's own results JSON
    assert record["align"]["engine"] == "jetmoe"


@pytest.mark.slow
def test_a_rerun_skips_finished_pairs_and_reruns_changed_ones(both_engines, model_dir, task_manager, monkeypatch):
    out, _ = both_engines
    out = out / "jetmoe"
    before = {task: harness.result_file(out, str(model_dir), task).stat().st_mtime_ns for task in TASKS}

    def no_loading(*args):
        raise AssertionError("a finished pair was evaluated again")

    monkeypatch.setattr(harness, "loaded_model", no_loading)
    _, lines = _evaluate([model_dir], out, task_manager, engine="jetmoe", max_batch_tokens=160)
    assert any("all 3 tasks already evaluated" in line for line in lines)
    monkeypatch.undo()
    harness.result_file(out, str(model_dir), "tiny_gen").unlink()  # a run killed during tiny_gen
    _evaluate([model_dir], out, task_manager, engine="jetmoe", max_batch_tokens=160)
    after = {task: harness.result_file(out, str(model_dir), task).stat().st_mtime_ns for task in TASKS}
    assert after["tiny_mc"] == before["tiny_mc"] and after["tiny_text"] == before["tiny_text"]
    assert after["tiny_gen"] != before["tiny_gen"]
    # other settings make another result: evaluated again
    assert harness._finished(out, str(model_dir), "tiny_mc", HarnessSettings(tasks=TASKS))
    assert not harness._finished(out, str(model_dir), "tiny_mc", HarnessSettings(tasks=TASKS, num_fewshot=1))
    assert not harness._finished(out, str(model_dir), "tiny_mc", HarnessSettings(tasks=TASKS, limit=2))
    assert not harness._finished(out, str(model_dir), "tiny_mc", HarnessSettings(tasks=TASKS, engine="transformers"))


@pytest.mark.slow
def test_a_lora_adapter_dir_evaluates_as_its_merged_model(model_dir, task_manager, both_engines, tmp_path):
    from transformers import AutoTokenizer

    from jetmoe_model import JetMoEForCausalLM

    adapted = add_lora(JetMoEForCausalLM.from_pretrained(model_dir), LoraArguments(r=4))
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))  # a trained adapter
    adapter = tmp_path / "adapter"
    adapted.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(adapter)
    merged = export_merged(adapter, tmp_path / "merged")
    out = tmp_path / "out"
    _evaluate([adapter, merged], out, task_manager, tasks=["tiny_mc"], limit=4)
    base_rows = _samples(both_engines[0] / "jetmoe", model_dir, "tiny_mc")[:4]
    scores = [[resp[0][0] for row in rows for resp in row["resps"]]
              for rows in (_samples(out, adapter, "tiny_mc"), _samples(out, merged, "tiny_mc"), base_rows)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)
    assert scores[0] != pytest.approx(scores[2], abs=1e-2)  # the adapter mattered
    table = markdown(harness_table(out, [str(adapter), str(merged)], ["tiny_mc"]))
    assert f"| tiny_mc | 2 | acc | {_results(out, adapter, 'tiny_mc')['acc,none']:.4g} |" in table


def test_a_bad_task_name_ends_in_one_line_exit_2(model_dir, task_manager, monkeypatch, capsys):
    import lm_eval.tasks

    from align.cli import main

    index = local_task_manager(FIXTURES)
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda include_path: index)
    status = main(["eval", "harness", str(model_dir), "--tasks", "tiny_mc,tiny_mcq", "--include_path", str(FIXTURES)])
    assert status == 2
    assert capsys.readouterr().err == ("error: eval harness: unknown task 'tiny_mcq'; did you mean 'tiny_mc' or "
                                       "'tiny_gen'? (lm-eval's task and group names, model_card, or tasks of "
                                       "--include_path)\n")


def test_a_task_whose_data_cannot_be_fetched_ends_in_one_line_before_the_model_loads(model_dir, monkeypatch,
                                                                                     tmp_path):
    from align.data import DataError

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "arc_like.yaml").write_text((FIXTURES / "tiny_mc.yaml").read_text().replace("task: tiny_mc", "task: arc_like")
                                         .replace("dataset_path: json", "dataset_path: allenai/ai2_arc"))
    import datasets
    import huggingface_hub

    for module in (datasets.config, huggingface_hub.constants):  # as HF_HUB_OFFLINE=1 does: the hub not reached
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(harness, "loaded_model", lambda *args: pytest.fail("the model loaded"))
    with pytest.raises(DataError, match=r"^arc_like: could not fetch the task's data \(.*--include_path\)$"):
        _evaluate([model_dir], tmp_path, local_task_manager(tasks), tasks=["arc_like"])


def test_the_presets_are_lm_evals_tasks_with_those_metrics():
    """Checked against lm-eval's own task files (the data of these tasks is on the hub: not fetched here)."""
    import lm_eval

    task_dirs = Path(lm_eval.__file__).parent / "tasks"
    manager = local_task_manager(*(task_dirs / d for d in ("arc", "hellaswag", "mmlu", "truthfulqa", "winogrande",
                                                            "gsm8k")))
    for name, preset in PRESETS.items():
        assert name in manager.all_tasks
        metric, filter_name = preset.metric.split(",")
        path = manager.task_index[name].yaml_path
        text = path.read_text()  # with the file it includes (ARC-challenge: ARC-easy's, with another dataset)
        text += "".join((path.parent / line.split(":", 1)[1].strip()).read_text()
                        for line in text.splitlines() if line.startswith("include:"))
        assert f"metric: {metric}" in text, name
        assert filter_name == "none" or f'name: "{filter_name}"' in text, name


def test_model_card_presets_have_the_cards_shots_metrics_and_numbers():
    assert expand(["tiny_mc", "model_card", "mmlu"]) == ["tiny_mc", *PRESETS]
    card = {name: (p.num_fewshot, p.metric.split(",")[0], p.published) for name, p in PRESETS.items()}
    assert card == {"arc_challenge": (25, "acc_norm", 48.7), "hellaswag": (10, "acc_norm", 80.5),
                    "mmlu": (5, "acc", 49.2), "truthfulqa_mc2": (0, "acc", 41.7), "winogrande": (5, "acc", 70.2),
                    "gsm8k": (5, "exact_match", 27.8)}  # fmt: skip
    assert harness.shots("mmlu", HarnessSettings(tasks=["mmlu"])) == 5
    assert harness.shots("mmlu", HarnessSettings(tasks=["mmlu"], num_fewshot=0)) == 0
    assert harness.shots("tiny_mc", HarnessSettings(tasks=["tiny_mc"])) is None  # the task's own


def test_the_table_puts_the_published_numbers_beside_the_card_tasks_in_percent(tmp_path):
    """From result files in lm-eval's layout (a group's score under "groups", GSM8k's under its filter)."""
    models = ["runs/x/sft", "runs/x/dpo"]
    for index, model in enumerate(models):
        for task, preset in PRESETS.items():
            section = "groups" if task == "mmlu" else "results"
            record = {section: {task: {preset.metric: 0.4 + index / 10, "alias": task}},
                      "align": {"num_fewshot": preset.num_fewshot if task != "hellaswag" else 0}}
            path = harness.result_file(tmp_path, model, task)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(record))
    table = harness_table(tmp_path, models, ["model_card_tasks_only", *PRESETS])
    rows = {row["task"]: row for row in table["rows"]}
    assert rows["mmlu"]["values"] == pytest.approx([40.0, 50.0]) and rows["mmlu"]["published"] == 49.2
    assert rows["gsm8k"]["values"] == pytest.approx([40.0, 50.0]) and rows["gsm8k"]["shots"] == 5
    assert rows["hellaswag"]["published"] is None  # run 0-shot: not comparable with the card's 10-shot
    assert rows["average"]["values"] == pytest.approx([40.0, 50.0]) and rows["average"]["published"] == 53.0
    assert rows["model_card_tasks_only"]["values"] == [None, None]
    text = markdown(table)
    assert "| MMLU | 5 | acc (%) | 40.0 | 50.0 | 49.2 |" in text
    assert "| HellaSwag | 0 | acc_norm (%) | 40.0 | 50.0 | - (card: 10-shot) |" in text


def test_a_pipeline_eval_section_names_harness_tasks_beside_mt_bench(tmp_path, monkeypatch):
    from align.cli import commands as cli
    from align.config.recipes import RecipeError, load_pipeline, load_pipeline_eval
    from align.evaluation.settings import MTBenchSettings

    recipes = ROOT / "recipes" / "tiny"

    def pipeline(evaluation: str) -> Path:
        path = tmp_path / "pipeline.yaml"
        path.write_text(f"sft: {recipes / 'sft.yaml'}\ndpo: {recipes / 'dpo.yaml'}\noutput_dir: {tmp_path / 'run'}\n"
                        f"eval: {evaluation}\n")
        return path

    flat = load_pipeline_eval(pipeline("{judge_model: gpt-4}"))  # MT-Bench's fields, as before
    assert flat.mt_bench == MTBenchSettings(judge_model="gpt-4") and flat.harness is None
    both = load_pipeline_eval(pipeline("{mt_bench: {per_category: 1}, harness: {tasks: [model_card], limit: 10}}"))
    assert both.mt_bench.per_category == 1 and both.harness == HarnessSettings(tasks=["model_card"], limit=10)
    with pytest.raises(RecipeError, match=r"eval.harness.tasks: .* \(expected list\)"):
        load_pipeline_eval(pipeline("{harness: {tasks: mmlu}}"))
    with pytest.raises(RecipeError, match=r"eval: with mt_bench: or harness: sections, .* \(found judge_model\)"):
        load_pipeline_eval(pipeline("{judge_model: x, harness: {tasks: [mmlu]}}"))

    # After training: the harness on SFT's pretrained base (when it has one), then the SFT and DPO outputs.
    evaluated = []
    monkeypatch.setattr(cli.harness, "evaluate_models", lambda models, settings, out: evaluated.append((models, out)))
    path = pipeline("{harness: {tasks: [mmlu]}}")
    sft, _ = load_pipeline(path, {"sft.model.init": "pretrained", "sft.model.name_or_path": "jetmoe/jetmoe-8b"})
    cli._evaluate_pipeline(sft, tmp_path / "run" / "sft", tmp_path / "run" / "dpo", load_pipeline_eval(path))
    assert evaluated == [(["jetmoe/jetmoe-8b", str(tmp_path / "run" / "sft"), str(tmp_path / "run" / "dpo")],
                          tmp_path / "run" / "harness")]
