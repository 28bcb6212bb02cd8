"""TRL's fused LM head on positions planned on the host (`align.training.planned_lm_head`): the same per-token
fields, loss and gradients as TRL's own head (`add_fused_lm_head`, boolean masks on the device) on the same model
and batch, for the DPO trainer's policy and reference and for SFT; and on a GPU, no host sync in the DPO trainer's
loss and backward of a planned batch."""

import pytest
import torch

import align.training.planned_lm_head as planned_lm_head
from align.training.planned_lm_head import plan_scored_tokens
from test_dpo_learning import _setup as dpo_setup
from test_planned_batches import sft_setup
from test_prefix_shared_dpo import trainers

FIELDS = ("log_probs", "entropy", "mean_logits", "is_top1", "label_mask")


def test_the_plan_holds_the_positions_trls_mask_selects():
    labels = torch.tensor([[5, -100, 7, 8, -100, 9], [-100, -100, 3, -100, -100, -100], [1, 2, 3, 4, 5, 6]])
    plan = plan_scored_tokens(labels)
    mask = labels[:, 1:] != -100
    assert torch.equal(plan.label_mask, mask)
    hidden = torch.arange(labels.numel()).view(labels.shape)  # each position's own index stands for its state
    assert torch.equal(hidden.flatten()[plan.hidden_rows], hidden[:, :-1][mask])
    assert torch.equal(plan.targets, labels[:, 1:][mask])
    assert torch.equal(torch.zeros(mask.numel(), dtype=torch.long).index_copy(0, plan.output_index,
                                                                              plan.targets).view(mask.shape),
                       labels[:, 1:].clamp(min=0) * mask)  # fmt: skip


def _fields_and_grads(model, kwargs):
    model.zero_grad()
    out = model(**kwargs, fused_lm_head=True, use_cache=False)
    entropy = 0 if out.entropy is None else out.entropy.sum()  # a reference's head: log-probs only
    (out.log_probs.sum() + 0.5 * entropy + out.loss).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {name: getattr(out, name) for name in ("loss", *FIELDS)}, grads


def _assert_same_as_trls_head(model, batch, labels, planned_calls):
    """The forward with the batch's plan against the same forward without it (TRL's head)."""
    kwargs = {key: value for key, value in batch.items() if key not in ("completion_mask", "scored_tokens")}
    kwargs["labels"] = labels
    before = len(planned_calls)
    got = _fields_and_grads(model, {**kwargs, "scored_tokens": batch["scored_tokens"]})
    assert len(planned_calls) == before + 1  # the plan was read, not passed on to TRL's head
    want = _fields_and_grads(model, kwargs)
    assert len(planned_calls) == before + 1
    assert got[0]["label_mask"].any() and not got[0]["label_mask"].all()
    for name in ("loss", *FIELDS):
        if want[0][name] is None:
            assert got[0][name] is None, name
        else:
            torch.testing.assert_close(got[0][name], want[0][name], atol=1e-5, rtol=1e-5, msg=name)
    assert got[1].keys() == want[1].keys() and got[1]
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.fixture
def planned_calls(monkeypatch):
    calls = []
    score = planned_lm_head._score_planned
    monkeypatch.setattr(planned_lm_head, "_score_planned", lambda *args, **kwargs: calls.append(1) or score(*args,
                                                                                                           **kwargs))
    return calls


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_policy_and_reference_heads_score_the_plan_as_trls_head(tmp_path, lora, planned_calls):
    ours, _ = trainers(tmp_path, lora)
    batch = ours._prepare_inputs(ours.data_collator([ours.train_dataset[i] for i in range(6)]))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)  # TRL's DPO labels
    policy = ours.model.get_base_model() if lora else ours.model
    _assert_same_as_trls_head(policy.train(), {**batch, "preference_pairs": True}, labels, planned_calls)
    if not lora:
        reference = ours.ref_model
        reference.requires_grad_(True)  # its gradients, only to compare them
        _assert_same_as_trls_head(reference, {**batch, "preference_pairs": True}, labels, planned_calls)
    ours.compute_loss(ours.model.train(), dict(batch))
    assert len(planned_calls) == (1 if lora else 2) + 2  # the step's reference and policy forwards, planned


def test_sft_head_scores_the_plan_as_trls_head(tmp_path, planned_calls):
    trainer = sft_setup(tmp_path, packing=True, padding_free=True)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    labels = batch.pop("labels")
    _assert_same_as_trls_head(trainer.model.train(), batch, labels, planned_calls)


def test_labels_of_another_shape_than_planned_are_refused(tmp_path):
    trainer = dpo_setup(tmp_path, max_steps=1)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)[:, :-1]
    with pytest.raises(ValueError, match=r"scored_tokens were planned for labels of shape \(8, \d+\) after the "
                                         r"shift; this forward got labels \(8, \d+\)"):  # fmt: skip
        trainer.model(input_ids=batch["input_ids"][:, :-1], labels=labels, fused_lm_head=True,
                      scored_tokens=batch["scored_tokens"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are a GPU matter")
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_dpo_training_loss_and_its_backward_run_without_a_host_sync(tmp_path, lora):
    """The trainer's whole loss of a planned batch (the reference and the policy forward, DPO's loss and metrics,
    the router losses) and its backward, in bfloat16 on the Triton kernels and flash attention as in training, with
    syncs made errors (after a first, compiling run). The metrics become numbers when logged."""
    ours, _ = trainers(tmp_path, lora)
    policy = ours.model.get_base_model() if lora else ours.model
    for model in (policy, ours.ref_model):
        if model is not None:
            model.to("cuda", torch.bfloat16).set_moe_backend("triton")
    batch = ours.data_collator([ours.train_dataset[i] for i in range(6)])
    batch = {key: value.to("cuda") for key, value in batch.items()}  # the trainer's own device is the CPU here
    ours.model.train()

    def loss_and_backward():
        ours.compute_loss(ours.model, dict(batch)).backward()

    loss_and_backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_and_backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ours.log({})
    logged = ours.state.log_history[-1]
    assert logged["num_tokens"] > 0 and logged["router_z_loss"] > 0 and logged["rewards/margins"] != 0
