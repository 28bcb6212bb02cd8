"""`--resume` with a changed recipe: a change to what the checkpoint was trained with (learning rate, data seed,
batch size, ...) is refused in one line naming each key, before anything loads; settings that do not change the
training (logging, saving, evaluation, where data is prepared) resume silently; `--resume_accept_changes` trains
with the new values (the learning rate included, which transformers would take from the checkpoint) and run.json
records the recorded, new and used value of each."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import align.training.stage
from align.cli import main
from align.config.recipes import load_recipe
from align.runs.checkpoints import ResumeError
from align.runs.resume_changes import SETTINGS_FILE, UNSET, recorded_settings, resume_changes, training_changes
from align.training.sft import run_sft

# A constant learning rate, a checkpoint at step 2: a resumed step's update is proportional to its learning rate.
STEPS = ["--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--logging_steps", "1",
         "--report_to", "none", "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--learning_rate", "1e-3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """An SFT run stopped at step 2 of the tiny recipe, with checkpoint-2."""
    out = tmp_path_factory.mktemp("trained") / "sft"
    assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), *STEPS, "--max_steps", "2"]) == 0
    return out


@pytest.fixture
def nothing_loads(monkeypatch):
    def loading(*args, **kwargs):
        raise AssertionError("the stage started loading")

    monkeypatch.setattr(align.training.stage, "_run_stage", loading)


def resume_argv(output_dir: Path, *changes: str) -> list[str]:
    return ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(output_dir), *STEPS, "--max_steps", "2", *changes,
            "--resume"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_the_checkpoint_records_its_settings(trained):
    recorded = json.loads((trained / "checkpoint-2" / SETTINGS_FILE).read_text())
    assert recorded["training"]["learning_rate"] == 1e-3 and recorded["data"]["seed"] == 42
    assert recorded["training"]["per_device_train_batch_size"] == 8 and recorded["launch"] == {"num_processes": 1}
    assert json.loads((trained / "run.json").read_text())["launch"] == {"num_processes": 1}


@pytest.mark.parametrize("changes, named", [
    (["--learning_rate", "2e-4"], ["training.learning_rate 0.001 -> 0.0002"]),
    (["--data.seed", "7"], ["data.seed 42 -> 7"]),
    (["--per_device_train_batch_size", "4"], ["training.per_device_train_batch_size 8 -> 4"]),
    (["--learning_rate", "2e-4", "--data.seed", "7", "--per_device_train_batch_size", "4", "--max_steps", "3",
      "--model.config.hidden_size", "32"],
     ["model.config.hidden_size 64 -> 32", "data.seed 42 -> 7", "training.per_device_train_batch_size 8 -> 4",
      "training.max_steps 2 -> 3", "training.learning_rate 0.001 -> 0.0002"]),
])
def test_a_changed_recipe_is_refused_naming_each_key(changes, named, trained, capsys, nothing_loads):
    assert main(resume_argv(trained, *changes)) == 2
    line = error_line(capsys)
    assert f"{trained / 'checkpoint-2'} was trained with other settings: " in line
    assert ", ".join(named) in line and "--resume_accept_changes" in line
    assert main(["check", *resume_argv(trained, *changes)[1:]]) == 2
    assert ", ".join(named) in error_line(capsys)


def test_settings_that_do_not_change_the_training_resume_silently(trained, tmp_path, capsys):
    harmless = ["--logging_steps", "5", "--save_steps", "7", "--save_total_limit", "4", "--eval_strategy", "steps",
                "--eval_steps", "3", "--per_device_eval_batch_size", "2", "--data.num_proc", "1",
                "--data.prepared_dir", str(tmp_path), "--model.moe_backend", "auto"]
    assert main(["check", *resume_argv(trained, *harmless)[1:]]) == 0
    assert capsys.readouterr().err == ""


def test_the_stage_itself_refuses_before_loading(trained, monkeypatch):
    """Called without the CLI's pre-flight check (as a library), the stage refuses the same way."""
    monkeypatch.setattr(align.training.stage, "load_tokenizer",
                        lambda *args: pytest.fail("the stage loaded a tokenizer"))
    recipe = load_recipe("recipes/tiny/sft.yaml", "sft", {"output_dir": str(trained), "learning_rate": "5e-3",
                                                          "lr_scheduler_type": "constant", "warmup_steps": "0",
                                                          "max_steps": 2})
    with pytest.raises(ResumeError, match=r"training.learning_rate 0.001 -> 0.005; resume with the settings"):
        run_sft(recipe, resume=True)


def test_accept_flag_goes_with_resume(tmp_path, capsys, nothing_loads):
    assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), "--resume_accept_changes"]) == 2
    assert "--resume_accept_changes goes with --resume" in error_line(capsys)


@pytest.mark.slow
def test_accepted_changes_train_with_the_new_values_and_are_recorded(trained, tmp_path):
    """Two resumes from checkpoint-2, at learning rates 2e-3 and 6e-3, for one step: Adam's update (same
    moments, same gradient) is proportional to the learning rate, so the weights moved 3 times as far in the
    second; with the checkpoint's learning rate (transformers' own resume) they would move alike."""
    moved = {}
    for lr in ("2e-3", "6e-3"):
        out = tmp_path / lr
        shutil.copytree(trained, out)
        changes = ["--learning_rate", lr, "--data.seed", "7", "--per_device_train_batch_size", "4"]
        argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), *STEPS, *changes, "--max_steps", "3"]
        assert main([*argv, "--resume", "--resume_accept_changes"]) == 0

        record = json.loads((out / "run.json").read_text())
        assert record["resume_changes"] == {
            "data.seed": {"recorded": 42, "new": 7, "used": 7},
            "training.per_device_train_batch_size": {"recorded": 8, "new": 4, "used": 4},
            "training.max_steps": {"recorded": 2, "new": 3, "used": 3},
            "training.learning_rate": {"recorded": 1e-3, "new": float(lr), "used": float(lr)},
        }
        assert record["recipe"]["training"]["learning_rate"] == float(lr)
        recorded = json.loads((out / "checkpoint-3" / SETTINGS_FILE).read_text())
        assert recorded["training"]["learning_rate"] == float(lr) and recorded["data"]["seed"] == 7
        assert main(["check", *argv[1:], "--resume"]) == 0  # checkpoint-3 records the new settings: no change

        before, after = load_file(trained / "checkpoint-2" / "model.safetensors"), load_file(out / "model.safetensors")
        moved[lr] = sum((after[name] - before[name]).abs().sum() for name in before)
    assert moved["6e-3"] / moved["2e-3"] == pytest.approx(3.0, rel=1e-3)


def test_an_accepted_model_shape_change_ends_in_one_line(trained, tmp_path, capsys):
    out = tmp_path / "sft"
    shutil.copytree(trained, out)
    assert main([*resume_argv(out, "--model.config.intermediate_size", "64"), "--resume_accept_changes"]) == 2
    line = error_line(capsys)
    assert f"{out / 'checkpoint-2'}: its weights do not fit the recipe's model (size mismatch for " in line
    assert "a model's shape cannot change on resume" in line


def test_checkpoints_of_older_versions_compare_with_run_json_or_say_they_cannot(tmp_path, caplog):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    assert recorded_settings(checkpoint) is None
    assert resume_changes(checkpoint, {"training": {"learning_rate": 1.0}}, accept=False) == {}
    assert "records no run settings" in caplog.text
    (tmp_path / "run.json").write_text(json.dumps({"recipe": {"training": {"learning_rate": 0.5}}}))
    with pytest.raises(ResumeError, match=r"training.learning_rate 0.5 -> 1.0"):
        resume_changes(checkpoint, {"training": {"learning_rate": 1.0}}, accept=False)


def test_differences_are_named_down_to_the_changed_field():
    sources = [{"path": "a", "weight": 1.0}, {"path": "b", "weight": 1.0}]
    old = {"data": {"sources": sources}, "lora": None, "model": {"config": {"hidden_size": 64}},
           "training": {"logging_steps": 1, "only_in_an_older_trl": 1}, "launch": {"num_processes": 2}}
    new = {"data": {"sources": [sources[0], {"path": "b", "weight": 0.5}]}, "lora": {"r": 8},
           "model": {"config": {"hidden_size": 64, "num_local_experts": 8}}, "training": {"logging_steps": 9},
           "launch": {"num_processes": 1}}
    assert training_changes(old, new) == {
        "data.sources[1].weight": (1.0, 0.5),
        "lora": (None, {"r": 8}),
        "model.config.num_local_experts": (UNSET, 8),
        "launch.num_processes": (2, 1),
    }
    assert training_changes(new, new) == {}


def test_an_accepted_learning_rate_reaches_the_optimizer_and_scheduler():
    """The restored optimizer takes the recipe's hyperparameters, keeping the checkpoint's moments."""
    from torch.optim.lr_scheduler import LambdaLR

    from align.training.resume_trainer import ResumeSettingsMixin

    parameter = torch.nn.Parameter(torch.ones(2))

    def optimizer_and_scheduler(lr, weight_decay):
        optimizer = torch.optim.AdamW([parameter], lr=lr, weight_decay=weight_decay)
        return optimizer, LambdaLR(optimizer, lambda step: 1 / (step + 1))

    old_optimizer, old_scheduler = optimizer_and_scheduler(1e-3, 0.0)
    parameter.grad = torch.ones(2)
    old_optimizer.step()
    old_scheduler.step()

    class Base:
        is_deepspeed_enabled = False

        def _load_optimizer_and_scheduler(self, checkpoint):  # what transformers' resume does
            self.optimizer.load_state_dict(old_optimizer.state_dict())
            self.lr_scheduler.load_state_dict(old_scheduler.state_dict())

    class Trainer(ResumeSettingsMixin, Base):
        pass

    trainer = Trainer()
    trainer.optimizer, trainer.lr_scheduler = optimizer_and_scheduler(5e-2, 0.1)
    trainer.use_run_settings({}, changed_on_resume=True)
    trainer._load_optimizer_and_scheduler("checkpoint-1")
    group = trainer.optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(5e-2 / 2) and trainer.lr_scheduler.get_last_lr() == [group["lr"]]
    assert group["weight_decay"] == 0.1 and trainer.lr_scheduler.last_epoch == 1
    assert trainer.optimizer.state[parameter]["exp_avg"].equal(old_optimizer.state[parameter]["exp_avg"])
    assert trainer.optimizer_in_use["training.learning_rate"] == 5e-2
    assert trainer.optimizer_in_use["training.weight_decay"] == 0.1
