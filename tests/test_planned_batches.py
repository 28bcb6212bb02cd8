"""Batches planned on the host (`align.training.planned_batches`): the collator checks the inputs and lays the
batch out for the padding-free forward, and the forward given that plan computes what it computes without it."""

import pytest
import torch
from datasets import Dataset
from trl import SFTConfig

import jetmoe_model.batch_plan
from align.training.sft import sft_trainer
from alignment_fixtures import QUIET_ARGS, chat, tiny_model, tokenizer_for
from jetmoe_model.input_checks import JetMoEInputError

ROWS = [{"messages": chat("What is " + " plus ".join(map(str, range(n))) + "?", f"It is {n * (n - 1) // 2}.")}
        for n in range(2, 11)]  # fmt: skip


def sft_setup(tmp_path, **args):
    tokenizer = tokenizer_for([m["content"] for row in ROWS for m in row["messages"]])
    config = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, per_device_train_batch_size=4,
                       max_length=64, max_steps=1, **{**QUIET_ARGS, **args})  # fmt: skip
    return sft_trainer(config, tiny_model(tokenizer), tokenizer, Dataset.from_list(ROWS))


@pytest.mark.parametrize("layout", [dict(), dict(packing=True, padding_free=True)], ids=["padded", "packed"])
def test_a_planned_batch_gives_the_loss_and_gradients_of_the_forward_planning_it(tmp_path, monkeypatch, layout):
    trainer = sft_setup(tmp_path, **layout)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    assert batch["packed_batch"].real_tokens > 0
    unplanned = {key: value for key, value in batch.items() if key not in ("packed_batch", "scored_tokens")}
    planned_in_forward = []
    layout_of = jetmoe_model.batch_plan.padding_free_layout
    monkeypatch.setattr(jetmoe_model.modeling, "padding_free_layout",
                        lambda *args: planned_in_forward.append(1) or layout_of(*args))  # fmt: skip

    results = []
    for inputs in (batch, unplanned):
        trainer.model.train().zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(inputs))
        loss.backward()
        results.append((loss, {name: p.grad.clone() for name, p in trainer.model.named_parameters()
                               if p.grad is not None}))  # fmt: skip
    assert len(planned_in_forward) == 1  # only the unplanned batch was laid out by the forward
    (loss, grads), (want_loss, want_grads) = results
    torch.testing.assert_close(loss, want_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == want_grads.keys() and grads
    for name, grad in want_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_collator_refuses_token_ids_outside_the_vocabulary(tmp_path):
    trainer = sft_setup(tmp_path)
    examples = [dict(trainer.train_dataset[i]) for i in range(2)]
    examples[1]["input_ids"] = [*examples[1]["input_ids"][:-1], trainer.model.config.vocab_size + 5]
    with pytest.raises(JetMoEInputError, match=r"input_ids hold token ids in \[\d+, \d+\]; vocab_size is"):
        trainer.data_collator(examples)


def test_pinned_batches_are_copied_without_blocking_the_host(tmp_path):
    trainer = sft_setup(tmp_path)  # on a CPU the stage does not pin (nothing to copy to): pin as on a GPU
    assert not trainer.accelerator.dataloader_config.non_blocking
    trainer.args.dataloader_pin_memory = True
    trainer.create_accelerator_and_postprocess()
    assert trainer.accelerator.dataloader_config.non_blocking


def test_a_plan_is_not_used_where_the_model_runs_padded(tmp_path):
    trainer = sft_setup(tmp_path)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    unplanned = {key: value for key, value in batch.items() if key not in ("packed_batch", "scored_tokens")}
    trainer.model.config.padding_free = False  # after collation: the padded forward, whatever the batch carries
    with torch.no_grad():
        planned, padded = (trainer.compute_loss(trainer.model.eval(), dict(inputs)) for inputs in (batch, unplanned))
    hidden = trainer.model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 packed_batch=batch["packed_batch"]).last_hidden_state  # fmt: skip
    assert hidden[~batch["attention_mask"].bool()].abs().sum() > 0  # padding positions computed: not packed
    torch.testing.assert_close(planned, padded, rtol=0, atol=0)
