"""SFT learns, not just runs: held-out assistant-token loss falls well below its start, trained answers come back
greedily, and the training loss is exactly our model's loss including its weighted router losses."""

import torch
from datasets import Dataset
from trl import SFTConfig

from align.training.sft import sft_trainer
from alignment_fixtures import QUIET_ARGS, chat, tiny_model, tokenizer_for

ANIMALS = ["cat", "dog", "cow", "owl", "fox", "bee", "ant", "elk", "yak"]
SOUNDS = ["meow", "woof", "moo", "hoot", "yip", "buzz", "tick", "bugle", "grunt"]


def _question(animal, wording="What does the {} say?"):
    return wording.format(animal)


def _rows(wording):
    return [{"messages": chat(_question(a, wording), f"It says {s}.")} for a, s in zip(ANIMALS, SOUNDS)]


def _setup(tmp_path, **args):
    # Held out: conversations never trained on (the questions worded anew), whose answers the facts determine.
    train, held_out = _rows("What does the {} say?"), _rows("Tell me, what does the {} say?")
    tokenizer = tokenizer_for([m["content"] for row in train + held_out for m in row["messages"]])
    config = SFTConfig(output_dir=str(tmp_path), assistant_only_loss=True, per_device_train_batch_size=9,
                       learning_rate=5e-3, lr_scheduler_type="linear", max_length=64, **{**QUIET_ARGS, **args})
    trainer = sft_trainer(config, tiny_model(tokenizer), tokenizer, Dataset.from_list(train),
                          Dataset.from_list(held_out))
    return trainer, tokenizer


def test_sft_loss_is_model_loss_with_router_losses(tmp_path):
    trainer, _ = _setup(tmp_path, max_steps=1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert batch["labels"].eq(-100).any() and batch["labels"].ne(-100).any()  # prompts masked, answers trained
    model = trainer.model.eval()
    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        oracle = model(**batch, output_router_logits=True)
    assert oracle.router_loss > 0
    torch.testing.assert_close(ours, oracle.loss, rtol=1e-5, atol=1e-5)  # oracle.loss includes router_loss


def test_sft_drives_held_out_loss_down_and_recalls_answers(tmp_path):
    trainer, tokenizer = _setup(tmp_path, max_steps=120)
    start = trainer.evaluate()["eval_loss"]
    trainer.train()
    end = trainer.evaluate()["eval_loss"]
    assert end < 0.35 * start, (start, end)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry][-1]
    assert {"aux_loss", "router_z_loss"} <= set(logged), logged

    model = trainer.model.eval()
    recalled = 0
    for animal, sound in zip(ANIMALS, SOUNDS):
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": _question(animal)}],
                                               add_generation_prompt=True, return_tensors="pt", return_dict=True)
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False)
        answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
        recalled += answer.strip() == f"It says {sound}."
    assert recalled >= len(ANIMALS) - 2, recalled
