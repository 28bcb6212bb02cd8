"""`align.training.host_threads`: one PyTorch CPU thread while a GPU trains, the count restored after; CPU training
and a user's OMP_NUM_THREADS left alone."""

import pytest
import torch

from align.training.host_threads import host_threads_for


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_thread_while_a_gpu_trains_then_restored(two_threads):
    with host_threads_for(torch.device("cuda", 0)):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_restored_when_training_raises(two_threads):
    with pytest.raises(RuntimeError), host_threads_for(torch.device("cuda")):
        raise RuntimeError("a failed step")
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("device, omp", [("cpu", None), ("cuda", "2")])
def test_cpu_training_and_the_users_setting_are_left_alone(two_threads, monkeypatch, device, omp):
    if omp:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    with host_threads_for(torch.device(device)):
        assert torch.get_num_threads() == 2
