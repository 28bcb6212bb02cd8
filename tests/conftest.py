"""Shared fixtures: tiny JetMoE configs that keep every model test fast on two CPU cores."""

import os
import shutil
import tempfile

import pytest
import torch

import jetmoe_model  # noqa: F401  first: in an uninstalled source checkout it makes `jetmoe_kernels` importable

# Keep CPU runs predictable and quiet.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Prepared data of the stages run by tests (and the processes they start) stays out of the user's cache, in a
# directory the session that made it removes at its end.
OWN_PREPARED_DIR = None
if "JETMOE_ALIGN_PREPARED_DIR" not in os.environ:
    OWN_PREPARED_DIR = os.environ["JETMOE_ALIGN_PREPARED_DIR"] = tempfile.mkdtemp(prefix="jetmoe-align-prepared-")

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_sessionfinish(session, exitstatus):
    if OWN_PREPARED_DIR is not None:
        shutil.rmtree(OWN_PREPARED_DIR, ignore_errors=True)


TINY_SHAPES = {
    # name: JetMoE config overrides (several shapes, so head/expert bookkeeping is checked beyond one case)
    "e4k2": dict(hidden_size=32, num_key_value_heads=2, kv_channels=8, intermediate_size=48, num_local_experts=4,
                 num_experts_per_tok=2),
    "e8k2": dict(hidden_size=48, num_key_value_heads=4, kv_channels=12, intermediate_size=40, num_local_experts=8,
                 num_experts_per_tok=2),
    "e3k1": dict(hidden_size=24, num_key_value_heads=3, kv_channels=8, intermediate_size=20, num_local_experts=3,
                 num_experts_per_tok=1),
}


def tiny_config_kwargs(shape: str = "e4k2", **overrides) -> dict:
    return {**dict(vocab_size=97, num_hidden_layers=2, max_position_embeddings=128, **TINY_SHAPES[shape]), **overrides}


@pytest.fixture
def tiny_kwargs():
    return tiny_config_kwargs


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`make demo`'s command, cut to a few steps that log and evaluate often, run as a user runs it (a fresh
    process, from the repository root): its output directory and everything it printed."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    output_dir = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "align", "pipeline", "recipes/tiny/pipeline.yaml", "--output_dir",
               str(output_dir), "--max_steps", "6", "--logging_steps", "1", "--eval_strategy", "steps",
               "--eval_steps", "3", "--save_strategy", "no"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return output_dir, run.stdout + run.stderr
