"""`align.training.host_threads`: one PyTorch CPU thread while a GPU trains, the count restored after; CPU training,
DeepSpeed and FSDP runs (an offloaded optimizer works on the CPU) and a user's OMP_NUM_THREADS left alone."""

from types import SimpleNamespace

import pytest
import torch

from align.training.host_threads import host_threads_for


def training(device: str = "cuda", deepspeed=None, fsdp=""):
    """The TrainingArguments fields the choice reads."""
    return SimpleNamespace(device=torch.device(device), deepspeed=deepspeed, fsdp=fsdp)


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_thread_while_a_gpu_trains_then_restored(two_threads):
    with host_threads_for(training()):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_restored_when_training_raises(two_threads):
    with pytest.raises(RuntimeError), host_threads_for(training()):
        raise RuntimeError("a failed step")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("args, omp", [
    (training("cpu"), None),
    (training(), "2"),
    (training(deepspeed="recipes/deepspeed_configs/zero3.json"), None),
    (training(fsdp="full_shard"), None),
])  # fmt: skip
def test_cpu_training_engines_and_the_users_setting_are_left_alone(two_threads, monkeypatch, args, omp):
    if omp:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    with host_threads_for(args):
        assert torch.get_num_threads() == 2
