"""Logits only where they are read: TRL 1.16's fused LM head (both our trainers compute their losses through it)
projects, on GPUs, only the positions whose next token is trained (SFT: labels != -100; DPO: the responses), in
tiles, so `[tokens, vocab]` logits never exist whole. Here that selection is switched on on CPU (TRL keeps every
position there, to keep shapes fixed), and the SFT and DPO losses, metrics and gradients are checked against the
oracle of the full logits: `log_softmax` over every position's vocabulary, then the loss written out."""

import pytest
import torch
import torch.nn.functional as F
import trl.trainer.utils
from trl.kernels import ChunkedLogProbFunction

from align.training.deferred_metrics import as_numbers
from test_dpo_learning import _setup as dpo_setup
from test_sft_learning import _setup as sft_setup


@pytest.fixture
def response_rows_only(monkeypatch):
    """TRL's GPU selection on CPU: the fused head projects only the positions it reads; counts the rows it gets."""
    projected = []
    original = ChunkedLogProbFunction.apply

    def counting(hidden, *args):
        projected.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(trl.trainer.utils, "_use_triton", lambda device: True)
    monkeypatch.setattr(trl.trainer.utils._ChunkedLogProbFunction, "apply", counting)
    return projected


def full_log_probs(model, input_ids, labels, **forward):
    """Every position's logits, log-softmaxed over the vocabulary; the next-token label's log-prob (0 where
    ignored) and the router loss of the same forward."""
    out = model(input_ids=input_ids, output_router_logits=True, use_cache=False, **forward)
    log_probs = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    picked = log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0] * (targets != -100)
    return picked, log_probs, out.router_loss


def grads_of(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def trainer_step(trainer, rows: int):
    """The trainer's own loss and backward on its first `rows` rows: the batch, the model, the loss, the
    gradients and the metrics the trainer logged."""
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(rows)]))
    model = trainer.model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    metrics = {key: as_numbers(values)[-1] for key, values in trainer._metrics["train"].items()}
    return batch, model, loss, grads_of(model), metrics


def test_sft_loss_metrics_and_gradients_from_trained_positions_only(tmp_path, response_rows_only):
    trainer, _ = sft_setup(tmp_path, max_steps=1)
    batch, model, loss, ours, metrics = trainer_step(trainer, rows=4)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert response_rows_only == [trained] and trained < batch["labels"][:, 1:].numel() // 2

    model.zero_grad()
    picked, log_probs, router_loss = full_log_probs(model, batch["input_ids"], batch["labels"],
                                                    attention_mask=batch.get("attention_mask"))  # fmt: skip
    oracle = -picked.sum() / trained + router_loss
    oracle.backward()
    torch.testing.assert_close(loss, oracle, atol=1e-5, rtol=1e-5)
    for name, grad in grads_of(model).items():
        torch.testing.assert_close(ours[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    mask = batch["labels"][:, 1:] != -100
    entropy = -(log_probs.exp() * log_probs).sum(-1)[mask].mean()
    accuracy = (log_probs.argmax(-1) == batch["labels"][:, 1:])[mask].float().mean()
    assert metrics["entropy"] == pytest.approx(entropy.item(), rel=1e-4)
    assert metrics["mean_token_accuracy"] == pytest.approx(accuracy.item(), abs=1e-6)


def test_dpo_loss_rewards_and_gradients_from_response_positions_only(tmp_path, response_rows_only):
    trainer = dpo_setup(tmp_path, max_steps=1)
    with torch.no_grad():  # the policy a step away from its reference
        generator = torch.Generator().manual_seed(0)
        for _, param in sorted(trainer.model.named_parameters()):
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    batch, model, loss, ours, metrics = trainer_step(trainer, rows=6)
    responses = int(batch["completion_mask"][:, 1:].sum())
    assert response_rows_only == [responses, responses]  # policy and reference
    assert responses < int(batch["attention_mask"].sum()) * 3 // 4

    model.zero_grad()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    mask = batch["attention_mask"]
    config = model.config
    config.padding_free = trainer.ref_model.config.padding_free = False  # the oracle: padded rows, full logits
    picked, _, router_loss = full_log_probs(model, batch["input_ids"], labels, attention_mask=mask)
    with torch.no_grad():
        ref_picked, _, _ = full_log_probs(trainer.ref_model, batch["input_ids"], labels, attention_mask=mask)
    chosen, rejected = picked.sum(1).chunk(2)
    ref_chosen, ref_rejected = ref_picked.sum(1).chunk(2)
    beta = trainer.args.beta
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    oracle = -F.logsigmoid(beta * margin).mean() + router_loss
    oracle.backward()
    torch.testing.assert_close(loss, oracle, atol=1e-5, rtol=1e-5)
    for name, grad in grads_of(model).items():
        torch.testing.assert_close(ours[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert metrics["rewards/chosen"] == pytest.approx((beta * (chosen - ref_chosen)).mean().item(), abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx((beta * margin).mean().item(), abs=1e-6)
    assert abs(metrics["rewards/margins"]) > 1e-5
