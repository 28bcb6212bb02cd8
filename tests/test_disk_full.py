"""A full disk: every file a stage writes is replaced in one step or not at all, and a write that fails for want
of space ends the command with one line naming the path and saying "no space left", exit status 2; `--resume`
after space is freed finishes the run and writes what was missing, with the weights of an uninterrupted run.

The out-of-space errors are real where that is safe: Python's own writes go to /dev/full (every write to it
fails with ENOSPC), through a symbolic link put where a stage writes a file first. Libraries that write a file
under a temporary name and rename it over the target (safetensors does) would replace /dev/full itself, so no
library writes there; their errors are raised with the messages they give on a full file system (torch's zip
writer and safetensors, on a 512 KiB tmpfs).
"""

import errno
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from test_crash_safety import assert_same_run, checkpoint_names

from align.cli import main
from align.runs.atomic_files import temporary_path, write_json_atomically
from align.runs.checkpoints import read_loss_tally
from align.runs.disk_full import DiskFullError, out_of_space_named

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.is_char_device(), reason="needs /dev/full (Linux)")
STEPS = ["--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
         "--eval_strategy", "no", "--disable_tqdm", "true"]
# What torch and safetensors raise when the file system is full (seen on a 512 KiB tmpfs).
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"


def write_to_dev_full() -> None:
    with DEV_FULL.open("w") as file:
        file.write("{}")


@pytest.mark.parametrize("fail", [
    pytest.param(write_to_dev_full, id="ENOSPC", marks=needs_dev_full),
    pytest.param(lambda: (_ for _ in ()).throw(OSError(errno.EDQUOT, "Disk quota exceeded")), id="EDQUOT"),
    pytest.param(lambda: (_ for _ in ()).throw(RuntimeError(TORCH_FULL)), id="torch"),
    pytest.param(lambda: (_ for _ in ()).throw(SafetensorError(SAFETENSORS_FULL)), id="safetensors"),
])
def test_a_write_that_found_no_space_is_named_as_such(fail, tmp_path):
    target = tmp_path / "model.safetensors"
    with pytest.raises(DiskFullError, match=rf"^{re.escape(str(target))}: no space left on device while writing it "
                                            r"\(\d+ MiB free there now; "):
        with out_of_space_named(target):
            fail()


@pytest.mark.parametrize("error", [FileNotFoundError(errno.ENOENT, "No such file or directory"),
                                   RuntimeError("CUDA out of memory"), ValueError("a bad value")])
def test_other_errors_pass_through_unchanged(error, tmp_path):
    with pytest.raises(type(error)) as raised:
        with out_of_space_named(tmp_path):
            raise error
    assert raised.value is error


@needs_dev_full
def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"train": {"train_loss": 1.5}}\n')
    temporary_path(path).symlink_to(DEV_FULL)
    with pytest.raises(DiskFullError, match=rf"^{re.escape(str(path))}: no space left on device"):
        write_json_atomically(path, {"train": {"train_loss": 2.5}})
    assert path.read_text() == '{"train": {"train_loss": 1.5}}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), *STEPS]) == 0
    return out


def one_error_line(capsys) -> str:
    """The command's stderr ends with its one error line, and holds no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert sum("no space left" in line for line in err.splitlines()) == 1, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.mark.slow
@needs_dev_full
def test_a_full_disk_at_the_final_write_ends_in_one_line_and_resume_finishes(uninterrupted, tmp_path, capsys):
    out = tmp_path / "sft"
    out.mkdir()
    temporary_path(out / "metrics.json").symlink_to(DEV_FULL)  # the stage's metrics.json finds the disk full
    argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(out), *STEPS]
    assert main(argv) == 2
    assert re.fullmatch(rf"error: {re.escape(str(out / 'metrics.json'))}: no space left on device while writing it "
                        r"\(\d+ MiB free there now; \[Errno 28\] No space left on device\)", one_error_line(capsys))
    assert not (out / "metrics.json").exists() and not (out / "run.json").exists()
    assert not list(out.glob(".*tmp-*"))  # the failed write's temporary is gone

    assert main([*argv, "--resume"]) == 0  # space freed (the link is gone): the run finishes and re-saves
    assert_same_run(out, uninterrupted)
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["train_loss"] == pytest.approx(read_loss_tally(out / "checkpoint-3").loss_sum / 3)


@pytest.mark.slow
def test_a_full_disk_inside_a_checkpoint_save_ends_in_one_line_and_resume_finishes(uninterrupted, tmp_path,
                                                                                   monkeypatch, capsys):
    save = torch.save

    def save_on_a_full_disk(obj, path, *args, **kwargs):
        if str(path).endswith("checkpoint-2/optimizer.pt"):
            raise RuntimeError(TORCH_FULL)
        return save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    argv = ["sft", "recipes/tiny/sft.yaml", "--output_dir", str(tmp_path), *STEPS]
    assert main(argv) == 2
    staged = tmp_path / "tmp-checkpoint-2" / "checkpoint-2"
    assert re.fullmatch(rf"error: {re.escape(str(staged))}: no space left on device while writing it \(\d+ MiB "
                        rf"free there now; {re.escape(TORCH_FULL)}\)", one_error_line(capsys))
    assert checkpoint_names(tmp_path) == ["checkpoint-1"] and not staged.parent.exists()

    monkeypatch.setattr(torch, "save", save)
    assert main([*argv, "--resume"]) == 0
    assert_same_run(tmp_path, uninterrupted)
