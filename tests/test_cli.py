"""The command line: bad input ends in one line naming the file, key or row (exit 2); a stage writes its records;
`--resume` continues from the last checkpoint."""

import json
import logging
import pytest
from accelerate import PartialState

from align.cli import main

FAST = ["--max_steps", "2", "--eval_strategy", "no", "--logging_steps", "1"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("argv, named", [
    (["sft", "recipes/tiny/nope.yaml"], "recipes/tiny/nope.yaml: no such recipe file"),
    (["sft", "recipes/tiny/sft.yaml", "--max_stepz", "3"], "unknown key 'max_stepz'"),
    (["dpo", "recipes/tiny/dpo.yaml", "--beta", "high"], "training.beta: 'high' is not a valid value"),
    (["pipeline", "recipes/tiny/pipeline.yaml", "--colour", "red"], "unknown key '--colour'"),
    (["sft", "recipes/tiny/sft.yaml", "--output_dir", "{tmp}", "--resume"],
     "no complete checkpoint-* directory in {tmp}"),
])
def test_bad_arguments_end_in_one_named_line(argv, named, capsys, tmp_path):
    argv = [arg.replace("{tmp}", str(tmp_path)) for arg in argv]
    assert main(argv) == 2
    assert named.replace("{tmp}", str(tmp_path)) in _error_line(capsys)


def test_a_malformed_data_row_is_named(tmp_path, capsys):
    data = tmp_path / "chats.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                    '{"messages": [{"role": "user", "content": "hi"\n')
    argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path / "out"), "--data.strict", "true",
            "--data.sources", f"[{{path: {data}, test_split: null}}]", *FAST]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert str(data) in line and "row 2" in line


def test_an_fsdp2_launch_with_an_evaluation_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    """What `accelerate launch` with `fsdp_version: 2` sets: the stage's evaluation would fail deep inside FSDP2
    (docs/multi_gpu.md), so the stage stops before its model loads, saying what to use instead."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), *FAST]) == 2
    line = _error_line(capsys)
    assert "sft: evaluation under FSDP version 2 does not work" in line and "fsdp.yaml (version 1)" in line
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.slow
def test_stage_writes_records_and_resumes(tmp_path):
    out = tmp_path / "sft"
    base = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "1",
            "--eval_strategy", "no", "--logging_steps", "1"]
    assert main([*base, "--max_steps", "2"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["train_loss"] > 0 and "eval_loss" in metrics["eval"]
    run = json.loads((out / "run.json").read_text())
    assert run["recipe"]["training"]["max_steps"] == 2 and run["recipe"]["model"]["init"] == "random"
    assert run["data"]["sources"][0]["path"] == "data/samples/ultrachat" and "dropped" in run["data"]["totals"]
    assert run["versions"]["trl"] and run["versions"]["transformers"] and "commit" in run["git"]

    assert main([*base, "--max_steps", "3", "--resume"]) == 2  # a longer schedule than the checkpoint's
    assert main([*base, "--max_steps", "3", "--resume", "--resume_accept_changes"]) == 0
    log = (out / "train.log").read_text()  # transformers' warnings included
    assert log.count("sft: model random init") == 2 and "resuming from" in log  # the resume appended
    assert "missing keys" not in log  # the tied lm_head is not reported missing
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["resumed_from"].endswith("checkpoint-2")
    assert resumed["resume_changes"] == {"training.max_steps": {"recorded": 2, "new": 3, "used": 3}}
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3]


def weights(directory):
    from safetensors.torch import load_file

    return load_file(directory / "model.safetensors")


@pytest.mark.slow
def test_resuming_a_finished_stage_trains_no_further(tmp_path):
    out = tmp_path / "sft"
    argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "1",
            *FAST]
    assert main(argv) == 0
    finished, metrics = weights(out), json.loads((out / "metrics.json").read_text())

    assert main([*argv, "--resume"]) == 0
    assert sorted(path.name for path in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert json.loads((out / "run.json").read_text())["resumed_from"].endswith("checkpoint-2")
    assert json.loads((out / "metrics.json").read_text())["train"] == metrics["train"]
    resaved = weights(out)
    assert resaved.keys() == finished.keys()
    assert all(resaved[name].equal(finished[name]) for name in finished)


@pytest.fixture
def align_log_level():
    """`main` sets the align loggers' level for the process it runs in: put it back for the other tests."""
    yield
    logging.getLogger("align").setLevel(logging.NOTSET)


@pytest.mark.slow
@pytest.mark.parametrize("main_process", [True, False])
def test_only_the_main_process_reports(main_process, tmp_path, capsys, caplog, monkeypatch, align_log_level):
    """`accelerate launch` runs the command in every process: the results and the data report come from one."""
    monkeypatch.setattr(PartialState, "is_main_process", property(lambda state: main_process))
    caplog.set_level(logging.INFO)
    assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), "--save_strategy", "no", *FAST]) == 0
    assert ("SFT results" in capsys.readouterr().out) == main_process
    data_report = [record for record in caplog.records
                   if record.name.startswith("align.data") and record.levelno == logging.INFO]
    assert bool(data_report) == main_process


def test_init_tiny_saves_a_loadable_base(tmp_path):
    from transformers import AutoTokenizer, JetMoeForCausalLM

    assert main(["init-tiny", str(tmp_path)]) == 0
    model = JetMoeForCausalLM.from_pretrained(tmp_path)
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(tmp_path)) == 1024
