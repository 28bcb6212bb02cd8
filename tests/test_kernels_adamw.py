"""The AdamW update kernel (`jetmoe_kernels.adamw`) and the optimizer running it (`align.training.adamw`) against
`torch.optim.AdamW` itself: parameters and moments after several steps, a gradient scale (how our clipping clips),
the state saved and loaded both ways, and what still runs torch's step."""

import io

import pytest
import torch
from kernel_cases import DEVICE
from test_planned_batches import sft_setup
from transformers import TrainingArguments

import align.training.adamw as adamw_module
from align.training.adamw import TritonAdamW, TritonAdamWMixin
from align.training.clipping import fused_adam
from jetmoe_kernels.adamw import adamw_update_

HYPER = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
SIZES = [(37,), (64, 40), (3, 5, 7)]  # none a multiple of the interpreter's 1,024-element blocks but the second


def parameters(dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(size, generator=generator).to(DEVICE, dtype)) for size in SIZES]


def set_grads(params, step):
    generator = torch.Generator().manual_seed(100 + step)
    for param in params:
        param.grad = (torch.randn(param.shape, generator=generator) * 3).to(DEVICE, param.dtype)


def run(optimizer_cls, dtype, steps=4, grad_scale=None, **options):
    params = parameters(dtype)
    optimizer = optimizer_cls(params, **HYPER, **options)
    for step in range(steps):
        set_grads(params, step)
        if grad_scale is not None:
            optimizer.grad_scale = torch.tensor(grad_scale, device=DEVICE)
        optimizer.step()
    return params, optimizer


def assert_same_training(got, want, tolerance=None):
    (got_params, got_optimizer), (want_params, want_optimizer) = got, want
    tolerance = tolerance or dict(atol=1e-6, rtol=1e-5)
    for got_param, want_param in zip(got_params, want_params):
        torch.testing.assert_close(got_param, want_param, **tolerance)
        got_state, want_state = got_optimizer.state[got_param], want_optimizer.state[want_param]
        assert got_state.keys() == want_state.keys() and {"step", "exp_avg", "exp_avg_sq"} <= got_state.keys()
        for key, value in want_state.items():  # `step` is kept on the CPU by torch's unfused AdamW
            assert got_state[key].dtype == value.dtype and (key == "step" or got_state[key].device == value.device)
            torch.testing.assert_close(got_state[key].to(value.device), value, **tolerance, msg=key)


def saved_and_loaded(state_dict):
    """As a checkpoint carries it: a copy (an optimizer loading a state dict in memory shares its tensors)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer)


@pytest.fixture
def kernel_updates(monkeypatch):
    """Counts the kernel's updates, of parameters of any size; on a machine without a GPU, runs them in Triton's
    interpreter."""
    if DEVICE == "cpu":
        monkeypatch.setattr(adamw_module, "kernel_runs_on", lambda tensor: True)
    monkeypatch.setattr(TritonAdamW, "kernel_min_elements", 1)
    calls = []
    monkeypatch.setattr(adamw_module, "kernel_update", lambda *args: calls.append(1) or adamw_update_(*args))
    return calls


@pytest.mark.parametrize("grad_scale", [None, 4.0], ids=["unscaled", "scaled"])
def test_steps_are_torchs_fused_adamw_steps(grad_scale, kernel_updates):
    got = run(TritonAdamW, torch.float32, grad_scale=grad_scale, fused=True)
    want = run(torch.optim.AdamW, torch.float32, grad_scale=grad_scale, fused=True)
    assert len(kernel_updates) == 4 * len(SIZES)
    assert_same_training(got, want)
    assert all((p - q).abs().max() > 1e-3 for p, q in zip(got[0], parameters(torch.float32)))  # the steps moved them


@pytest.mark.parametrize("grad_scale", [None, 4.0], ids=["unscaled", "scaled"])
def test_each_bfloat16_step_is_torchs_fused_step_to_the_last_place(grad_scale, kernel_updates):
    """Stored in bfloat16, parameters and moments are rounded at every step, and two runs of the same arithmetic
    in another order part by units of the last place, then drift (torch's unfused AdamW drifts from its fused one
    alike). So each step is checked alone: ours from torch's state after k steps, one step, within one unit of
    the last place of torch's (at most 2**-7 of the value; where a moment cancels to ~0, 1e-6)."""
    params = parameters(torch.bfloat16)
    theirs = torch.optim.AdamW(params, **HYPER, fused=True)
    for step in range(4):
        ours = TritonAdamW([torch.nn.Parameter(p.detach().clone()) for p in params], **HYPER, fused=True)
        if step:
            ours.load_state_dict(saved_and_loaded(theirs.state_dict()))
        for optimizer in (ours, theirs):
            set_grads(optimizer.param_groups[0]["params"], step)
            if grad_scale is not None:
                optimizer.grad_scale = torch.tensor(grad_scale, device=DEVICE)
            optimizer.step()
        assert_same_training((ours.param_groups[0]["params"], ours), (params, theirs),
                             tolerance=dict(rtol=2**-7, atol=1e-6))  # fmt: skip
    assert len(kernel_updates) == 4 * len(SIZES)


def test_small_parameters_go_to_torchs_kernel_together_in_the_same_step(kernel_updates, monkeypatch):
    monkeypatch.setattr(TritonAdamW, "kernel_min_elements", 1000)  # 37 and 105 elements: torch's; 2,560: ours
    assert_same_training(run(TritonAdamW, torch.float32, grad_scale=4.0, fused=True),
                         run(torch.optim.AdamW, torch.float32, grad_scale=4.0, fused=True))  # fmt: skip
    assert len(kernel_updates) == 4


def test_the_float32_update_is_torchs_reference_update():
    """Against the plain (not fused) AdamW: the formula, not just agreement between two fused kernels."""
    assert_same_training(run(TritonAdamW, torch.float32, fused=True), run(torch.optim.AdamW, torch.float32,
                                                                            foreach=False))


def test_a_checkpoints_state_loads_both_ways_and_training_goes_on_the_same(kernel_updates):
    ours_params, ours = run(TritonAdamW, torch.float32, steps=3, fused=True)
    torch_params, theirs = run(torch.optim.AdamW, torch.float32, steps=3, fused=True)
    # Cross over: torch's optimizer takes our state, ours takes torch's (with its parameters' values).
    resumed_torch = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone()) for p in ours_params], **HYPER,
                                      fused=True)  # fmt: skip
    resumed_torch.load_state_dict(saved_and_loaded(ours.state_dict()))
    resumed_ours = TritonAdamW([torch.nn.Parameter(p.detach().clone()) for p in torch_params], **HYPER, fused=True)
    resumed_ours.load_state_dict(saved_and_loaded(theirs.state_dict()))
    before = len(kernel_updates)
    for optimizer in (ours, theirs, resumed_torch, resumed_ours):
        params = optimizer.param_groups[0]["params"]
        for step in (3, 4):
            set_grads(params, step)
            optimizer.step()
    assert len(kernel_updates) - before == 2 * 2 * len(SIZES)  # ours and resumed ours, two steps each
    for optimizer in (resumed_torch, resumed_ours, ours):
        assert_same_training((optimizer.param_groups[0]["params"], optimizer),
                             (theirs.param_groups[0]["params"], theirs))  # fmt: skip
    assert float(resumed_ours.state[resumed_ours.param_groups[0]["params"][0]]["step"]) == 5


@pytest.mark.parametrize("option", [dict(amsgrad=True), dict(maximize=True)], ids=["amsgrad", "maximize"])
def test_what_the_kernel_does_not_do_runs_torchs_step(option, kernel_updates):
    assert_same_training(run(TritonAdamW, torch.float32, fused=True, **option),
                         run(torch.optim.AdamW, torch.float32, fused=True, **option))  # fmt: skip
    assert not kernel_updates


def test_adamw_torch_fused_builds_ours_and_other_settings_keep_theirs(tmp_path):
    def optimizer_cls(**args):
        return TritonAdamWMixin.get_optimizer_cls_and_kwargs(TrainingArguments(str(tmp_path), **args))[0]

    assert optimizer_cls(optim="adamw_torch_fused") is TritonAdamW
    assert optimizer_cls(optim="adamw_torch") is torch.optim.AdamW
    assert optimizer_cls(optim="adafactor") is not TritonAdamW


def test_our_trainers_build_it_and_hand_it_the_clipping(tmp_path):
    trainer = sft_setup(tmp_path)
    optimizer = trainer.create_optimizer()
    assert type(optimizer) is TritonAdamW and fused_adam(optimizer) is optimizer
