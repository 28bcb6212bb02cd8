"""Clipping inside the fused AdamW step (`align.training.clipping`) takes the step `clip_grad_norm_` then AdamW take."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

from align.training.clipping import ClipInFusedAdamMixin


class TransformersClipping:
    def _clip_grad_norm(self, model):
        return torch.nn.utils.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)


class Trainer(ClipInFusedAdamMixin, TransformersClipping):
    def __init__(self, optimizer, max_grad_norm: float):
        self.optimizer, self.args = optimizer, SimpleNamespace(max_grad_norm=max_grad_norm)
        self.accelerator = SimpleNamespace(distributed_type=DistributedType.NO, scaler=None)


def steps(clip, fused: bool, max_grad_norm: float, count: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    trainer = Trainer(optimizer, max_grad_norm)
    norms = []
    for step in range(count):
        x = torch.randn(8, 16, generator=torch.Generator().manual_seed(step)) * 10
        model(x).pow(2).sum().backward()
        norms.append(float(clip(trainer, model)))
        optimizer.step()
        optimizer.zero_grad()
    return norms, [param.detach().clone() for param in model.parameters()]


@pytest.mark.parametrize("max_grad_norm", [0.5, 1e6], ids=["clipped", "not clipped"])
def test_clipping_in_the_fused_step_takes_the_clipped_step(max_grad_norm):
    want_norms, want = steps(TransformersClipping._clip_grad_norm, True, max_grad_norm)
    got_norms, got = steps(Trainer._clip_grad_norm, True, max_grad_norm)
    assert got_norms == pytest.approx(want_norms, rel=1e-6)
    assert max_grad_norm > 1 or min(want_norms) > 10 * max_grad_norm  # the clipped case does clip
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)


def test_other_optimizers_clip_as_transformers_does():
    _, want = steps(TransformersClipping._clip_grad_norm, False, 0.5)
    _, got = steps(Trainer._clip_grad_norm, False, 0.5)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def test_the_model_is_walked_for_its_parameters_once():
    """Listing the parameters walks every module (~1,600 in JetMoE-8B with LoRA): once, not every step."""
    model = torch.nn.Linear(4, 2)
    trainer = Trainer(torch.optim.AdamW(model.parameters(), fused=True), 1.0)
    listed = []
    parameters = model.parameters
    model.parameters = lambda *args, **kwargs: listed.append(1) or parameters(*args, **kwargs)
    for _ in range(3):
        model(torch.ones(1, 4)).sum().backward()
        trainer._clip_grad_norm(model)
    assert len(listed) == 1
