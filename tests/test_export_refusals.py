"""`export` never writes over what it did not make: a non-empty target is refused (exit 2, one line, the target
byte-identical) unless `--overwrite`, which replaces it whole; the adapter directory and the base it names are
refused even then (a merge written into the base would be merged again by the next export)."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config_kwargs
from peft import PeftModel

import align.lora.stage_support
from align.cli import main
from align.lora.adapters import add_lora
from align.lora.arguments import LoraArguments
from align.model.tokenizer import build_tokenizer
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

IDS = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def adapter(tmp_path) -> Path:
    """A LoRA adapter with non-zero weights whose base lives in its own `base/`, as after LoRA on a random init."""
    directory = tmp_path / "adapter"
    base = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs("e4k2"), moe_backend="torch"))
    base.save_pretrained(directory / "base")
    model = add_lora(JetMoEForCausalLM.from_pretrained(directory / "base"), LoraArguments(r=2, alpha=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    model.save_pretrained(directory)
    build_tokenizer(["a tiny corpus for a tiny tokenizer"], vocab_size=97).save_pretrained(directory)
    return directory


@pytest.fixture
def finished_run(tmp_path) -> Path:
    """A directory holding someone's results."""
    run = tmp_path / "finished"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "checkpoint-3" / "model.safetensors").write_bytes(b"\x00weights")
    (run / "model.safetensors").write_bytes(b"\x01weights")
    (run / "run.json").write_text('{"stage": "sft"}')
    return run


@pytest.fixture
def nothing_merges(monkeypatch):
    monkeypatch.setattr(align.lora.stage_support, "merge_adapter",
                        lambda *args: pytest.fail("export started merging"))


def snapshot(directory: Path) -> dict:
    return {str(path.relative_to(directory)): path.read_bytes() if path.is_file() else None
            for path in sorted(directory.rglob("*"))}


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_a_non_empty_target_is_refused_and_left_byte_identical(adapter, finished_run, capsys, nothing_merges):
    before = snapshot(finished_run)
    assert main(["export", str(adapter), str(finished_run)]) == 2
    assert f"{finished_run}: already exists and is not empty" in error_line(capsys)
    assert snapshot(finished_run) == before
    assert sorted(path.name for path in finished_run.parent.iterdir()) == ["adapter", "finished"]


@pytest.mark.parametrize("target, named", [
    ("{adapter}/base", "would write over the adapter's base model"),
    ("{adapter}", "would write over the adapter directory"),
    ("{adapter}/..", "would write over the adapter directory"),
    ("{adapter}/base/sub", "would write over the adapter's base model"),
])
@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_adapter_and_its_base_are_never_written_over(target, named, overwrite, adapter, capsys, nothing_merges):
    before = snapshot(adapter)
    assert main(["export", str(adapter), target.format(adapter=adapter), *overwrite]) == 2
    assert named in error_line(capsys)
    assert snapshot(adapter) == before


def test_inside_the_adapter_directory_only_with_overwrite(adapter, capsys, nothing_merges):
    assert main(["export", str(adapter), str(adapter / "merged")]) == 2
    assert "inside the adapter directory" in error_line(capsys) and not (adapter / "merged").exists()


def test_overwrite_replaces_the_target_whole_with_the_merge(adapter, finished_run):
    assert main(["export", str(adapter), str(finished_run), "--overwrite"]) == 0
    assert not (finished_run / "run.json").exists() and not (finished_run / "checkpoint-3").exists()
    assert json.loads((finished_run / "config.json").read_text())["model_type"] == "jetmoe"
    adapted = PeftModel.from_pretrained(JetMoEForCausalLM.from_pretrained(adapter / "base"), adapter).eval()
    merged = JetMoEForCausalLM.from_pretrained(finished_run).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(IDS).logits, adapted(IDS).logits, atol=1e-5, rtol=0)
    assert sorted(path.name for path in finished_run.parent.iterdir()) == ["adapter", "finished"]
