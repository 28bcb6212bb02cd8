"""DPO learns, not just runs: on synthetic preference pairs the held-out `rewards/accuracies` (TRL's own metric)
reaches 0.9 with a positive margin, and the training loss is TRL's DPO loss plus our weighted router losses."""

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from align.training.dpo import dpo_trainer, frozen_copy
from alignment_fixtures import QUIET_ARGS, tiny_model, tokenizer_for

COLOURS = ["red", "blue", "green", "pink", "gold", "grey", "teal", "navy", "plum", "lime", "rose", "sand"]
THINGS = ["car", "cup", "hat", "box", "pen", "bag", "mug", "toy", "kite", "lamp", "sock", "bell"]


def _pairs(things):
    # Chosen answers are polite and complete, rejected ones curt: a rule a model can carry to unseen prompts.
    return [{"prompt": [{"role": "user", "content": f"What colour is the {thing}?"}],
             "chosen": [{"role": "assistant", "content": f"The {thing} is {colour}, thank you for asking."}],
             "rejected": [{"role": "assistant", "content": "No idea."}]}
            for thing, colour in zip(things, COLOURS[::-1])]


def _setup(tmp_path, **args):
    train, held_out = _pairs(THINGS[:8]) * 3, _pairs(THINGS[8:])
    texts = [m["content"] for row in train + held_out for key in ("prompt", "chosen", "rejected") for m in row[key]]
    tokenizer = tokenizer_for(texts)
    config = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                       learning_rate=2e-3, lr_scheduler_type="constant", beta=0.1, max_length=64,
                       **{**QUIET_ARGS, **args})
    return dpo_trainer(config, tiny_model(tokenizer), tokenizer, Dataset.from_list(train),
                       Dataset.from_list(held_out))


def test_dpo_lifts_held_out_preference_accuracy(tmp_path):
    trainer = _setup(tmp_path, max_steps=24)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_rewards/accuracies"] >= 0.9, (before, after)
    assert after["eval_rewards/margins"] > 0 and after["eval_rewards/margins"] > before["eval_rewards/margins"]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert {"aux_loss", "router_z_loss", "rewards/accuracies"} <= set(logged), logged


def test_dpo_loss_is_trl_loss_plus_router_losses(tmp_path):
    trainer = _setup(tmp_path, max_steps=1)
    model = trainer.model.eval()
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    plain = DPOTrainer(model=model, ref_model=frozen_copy(model), args=trainer.args, processing_class=trainer.processing_class,
                       train_dataset=trainer.train_dataset)
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        trl_only = plain.compute_loss(model, dict(batch))
        oracle = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_router_logits=True)
    assert oracle.router_loss > 0
    torch.testing.assert_close(ours - trl_only, oracle.router_loss, rtol=1e-4, atol=1e-6)


def test_precomputed_reference_keeps_no_copy(tmp_path):
    trainer = _setup(tmp_path, max_steps=2, precompute_ref_log_probs=True)
    assert trainer.ref_model is None
    trainer.train()
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
