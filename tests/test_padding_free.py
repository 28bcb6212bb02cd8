"""Padding-free forwards compute what padded ones do: logits, loss, router losses, gradients, DPO log-probs and
TRL's own SFT and DPO losses, in float32 on CPU. The padded path (`config.padding_free = False`, SDPA with a mask)
is the oracle; on a GPU the flash kernel is also checked against the per-sequence reference."""

import pytest
import torch
from conftest import tiny_config_kwargs
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import add_fused_lm_head

from align.training.deferred_metrics import as_numbers
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM
from jetmoe_model.packing import PACK_MULTIPLE, unpad
from jetmoe_model.varlen_attention import reference_varlen_attention, varlen_attention

LENGTHS = [9, 3, 14, 6]


def tiny_model(seed: int = 0, **overrides) -> JetMoEForCausalLM:
    torch.manual_seed(seed)
    config = JetMoEConfig(**tiny_config_kwargs("e8k2", **{"moe_backend": "torch", "output_router_logits": True,
                                                          **overrides}))
    model = JetMoEForCausalLM(config)
    with torch.no_grad():  # break the zero biases / unit norms of a fresh init so every path carries signal
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.train()


def padded_batch(lengths=LENGTHS, side="right", seed=0):
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[row, cols] = torch.randint(1, 97, (n,), generator=generator)
        mask[row, cols] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, : width // 3] = -100  # a prompt part, as assistant-only masks make
    # A row's first token is never a target (it would be predicted from the padding before it).
    labels[torch.arange(len(lengths)), mask.argmax(1)] = -100
    return dict(input_ids=ids, attention_mask=mask, labels=labels)


def run(model, padding_free: bool, **inputs):
    """Loss, router losses, logits and parameter gradients of one forward/backward."""
    model.config.padding_free = padding_free
    model.zero_grad()
    out = model(**inputs, use_cache=False)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same_training_signal(reference, reference_grads, candidate, candidate_grads, real):
    for name in ("loss", "aux_loss", "router_z_loss"):
        torch.testing.assert_close(getattr(candidate, name), getattr(reference, name), atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(candidate.logits[real], reference.logits[real], atol=1e-5, rtol=1e-5)
    assert candidate_grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        torch.testing.assert_close(candidate_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("side", ["right", "left"])
def test_unpadded_batch_gives_the_padded_loss_router_losses_and_gradients(side):
    model = tiny_model()
    batch = padded_batch(side=side)
    padded, padded_grads = run(model, False, **batch)
    free, free_grads = run(model, True, **batch)
    assert_same_training_signal(padded, padded_grads, free, free_grads, batch["attention_mask"].bool())
    assert (free.logits[~batch["attention_mask"].bool()] == 0).all()  # padding got no compute


def test_packed_row_from_trls_collator_gives_the_padded_loss_and_gradients():
    model = tiny_model(seed=1)
    batch = padded_batch()
    examples = [
        {"input_ids": ids[mask.bool()].tolist(), "labels": labels[mask.bool()].tolist()}
        for ids, mask, labels in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])
    ]
    packed = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    assert packed["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in packed
    padded = DataCollatorForLanguageModeling(pad_token_id=0)(examples)

    reference, reference_grads = run(model, False, **padded)
    free, free_grads = run(model, True, **packed)
    # Router losses: the padded batch's mean over real tokens is the packed row's mean over all its tokens.
    real = padded["attention_mask"].bool()
    for name in ("loss", "aux_loss", "router_z_loss"):
        torch.testing.assert_close(getattr(free, name), getattr(reference, name), atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(free.logits[0], reference.logits[real], atol=1e-5, rtol=1e-5)
    for name, grad in reference_grads.items():
        torch.testing.assert_close(free_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)

    # The same row through the mask path (padding_free off: create_causal_mask's block-diagonal mask) agrees too.
    masked, _ = run(model, False, **packed)
    torch.testing.assert_close(masked.logits, free.logits, atol=1e-5, rtol=1e-5)


def test_dpo_log_probs_of_trls_fused_head_match_with_and_without_padding():
    model = tiny_model(seed=2, output_router_logits=False)  # as our trainers set it: router losses come by hook
    add_fused_lm_head(model)
    batch = padded_batch([12, 5, 12, 8])  # [chosen_1, chosen_2, rejected_1, rejected_2], as TRL's DPO lays them out
    results = {}
    for padding_free in (False, True):
        model.config.padding_free = padding_free
        model.zero_grad()
        log_probs = model(**batch, use_cache=False, fused_lm_head=True).log_probs
        log_probs.sum(1).pow(2).sum().backward()
        results[padding_free] = log_probs, model.model.layers[0].self_attention.kv_proj.weight.grad.clone()
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[True][1], results[False][1], atol=1e-5, rtol=1e-4)


def test_unpad_rounds_the_packed_row_up_with_one_filler_sequence():
    mask = padded_batch()["attention_mask"]
    packed = unpad(mask)
    total = sum(LENGTHS)
    assert packed.real_tokens == total and packed.token_index.tolist() == mask.flatten().nonzero().squeeze(1).tolist()
    assert packed.cu_seqlens.tolist() == [0, 9, 12, 26, 32, PACK_MULTIPLE]
    assert packed.max_length == PACK_MULTIPLE - total
    hidden = torch.randn(*mask.shape, 5)
    packed_hidden = packed.pack(hidden)
    assert packed_hidden.shape == (1, PACK_MULTIPLE, 5) and (packed_hidden[0, total:] == 0).all()
    torch.testing.assert_close(packed.unpack(packed_hidden), hidden * mask[..., None])


def test_generation_with_a_cache_keeps_the_padded_path():
    model = tiny_model(seed=3).eval()
    batch = padded_batch(side="left")
    del batch["labels"]
    outputs = {}
    for padding_free in (False, True):
        model.config.padding_free = padding_free
        outputs[padding_free] = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(outputs[True], outputs[False])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs a CUDA GPU")
def test_flash_varlen_attention_matches_the_per_sequence_reference():
    torch.manual_seed(0)
    lengths = [700, 1, 129, 2048, 64]
    cu_seqlens = torch.tensor([0, *lengths], device="cuda").cumsum(0, dtype=torch.int32)
    total, heads, kv_heads, dim = sum(lengths), 32, 16, 128
    # The layouts the model hands over: rotary outputs [heads, T, D] seen as [T, heads, D], values strided.
    query = torch.randn(heads, total, dim, device="cuda", dtype=torch.bfloat16).transpose(0, 1).requires_grad_()
    key = torch.randn(kv_heads, total, dim, device="cuda", dtype=torch.bfloat16).transpose(0, 1).requires_grad_()
    value = torch.randn(total, 2, kv_heads, dim, device="cuda", dtype=torch.bfloat16)[:, 1].requires_grad_()
    grad_out = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16)

    out = varlen_attention(query, key, value, cu_seqlens, max(lengths), dim**-0.5)
    grads = torch.autograd.grad(out, (query, key, value), grad_out)
    as64 = [x.detach().double().requires_grad_() for x in (query, key, value)]
    expected = reference_varlen_attention(*as64, cu_seqlens, dim**-0.5)
    expected_grads = torch.autograd.grad(expected, as64, grad_out.double())
    for got, want in zip((out, *grads), (expected, *expected_grads)):
        error = (got.double() - want).norm() / want.norm()
        assert error < 1e-2, error


def test_trls_dpo_loss_with_our_router_losses_is_the_same_padding_free(tmp_path, monkeypatch):
    import jetmoe_model.batch_plan
    from test_dpo_learning import _setup

    unpadded = []
    monkeypatch.setattr(jetmoe_model.batch_plan, "unpad", lambda mask: unpadded.append(mask) or unpad(mask))
    trainer = _setup(tmp_path, max_steps=1)
    examples = [trainer.train_dataset[i] for i in (0, 3, 5, 6)]  # pairs of different lengths: padding in the batch
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    batch.pop("packed_batch")  # the forward lays the batch out (with each setting below), not the collator
    assert not batch["attention_mask"].all()
    results = {}
    for padding_free in (False, True):
        for model in (trainer.model, trainer.ref_model):  # pairs unpadded, not prefix-shared (that: its own tests)
            model.config.padding_free, model.config.share_pair_prefix = padding_free, False
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
        results[padding_free] = loss, grads, {key: as_numbers(values)[-1] for key, values in trainer._metrics["train"].items()}
    assert len(unpadded) == 2  # the policy's and the reference's forward, both padding-free
    torch.testing.assert_close(results[True][0], results[False][0], atol=1e-5, rtol=1e-5)
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    for name in ("aux_loss", "router_z_loss", "logps/chosen", "logps/rejected", "rewards/margins"):
        assert results[True][2][name] == pytest.approx(results[False][2][name], rel=1e-4, abs=1e-5), name


def test_dpo_micro_batches_are_sized_by_tokens_with_batch_rebalance(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig

    from align.training.dpo import dpo_trainer
    from alignment_fixtures import QUIET_ARGS, tiny_model, tokenizer_for

    words = "the cat sat on a warm mat and then it slept for a very long time".split()
    pairs = [{"prompt": [{"role": "user", "content": " ".join(words[: 2 + i % 5])}],
              "chosen": [{"role": "assistant", "content": " ".join((words * 8)[: 120 if i % 8 == 0 else 1])}],
              "rejected": [{"role": "assistant", "content": " ".join(words[: 1 + i % 7])}]} for i in range(48)]
    tokenizer = tokenizer_for(words)
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=4,
                     train_sampling_strategy="batch_rebalance", max_length=256, **QUIET_ARGS)
    trainer = dpo_trainer(args, tiny_model(tokenizer), tokenizer, Dataset.from_list(pairs))
    lengths = trainer.train_dataset["length"]
    tokenised = [trainer.train_dataset[i] for i in range(len(lengths))]
    assert lengths == [min(256, len(p["prompt_ids"]) + len(p["chosen_ids"])) + min(256, len(p["prompt_ids"]) +
                       len(p["rejected_ids"])) for p in tokenised]
    batches = list(trainer.get_train_dataloader())
    rows = [len(batch["input_ids"]) // 2 for batch in batches]
    tokens = [int(batch["attention_mask"].sum()) for batch in batches]
    assert sorted(i for batch in trainer.get_train_dataloader().batch_sampler for i in batch) == list(range(48))
    assert len(set(rows)) > 1  # micro-batches hold different numbers of pairs...
    for step in range(0, len(tokens), 4):  # ...and about equal tokens within an optimizer step
        group = tokens[step: step + 4]
        assert max(group) - min(group) <= max(lengths), group


def test_trls_sft_loss_on_a_packed_row_is_the_padded_batchs(tmp_path):
    """TRL's padding-free collator (what `packing: true` feeds) against its padded one, on the same tokenised
    conversations with assistant-only labels: same loss, router losses and gradients."""
    from test_sft_learning import _setup

    padded_trainer, _ = _setup(tmp_path / "padded", max_steps=1)
    packed_trainer, _ = _setup(tmp_path / "packed", max_steps=1, packing=True, packing_strategy="bfd")
    packed_trainer.model.load_state_dict(padded_trainer.model.state_dict())
    examples = [padded_trainer.train_dataset[i] for i in range(5)]
    results = {}
    for name, trainer in (("padded", padded_trainer), ("packed", packed_trainer)):
        batch = trainer._prepare_inputs(trainer.data_collator([dict(example) for example in examples]))
        trainer.model.train().zero_grad()
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = {key: p.grad.clone() for key, p in trainer.model.named_parameters() if p.grad is not None}
        results[name] = batch, loss, grads, {key: as_numbers(values)[-1] for key, values in trainer._metrics["train"].items()}
    padded_batch, packed_batch = results["padded"][0], results["packed"][0]
    assert padded_batch["attention_mask"].eq(0).any() and "attention_mask" not in packed_batch
    assert packed_batch["input_ids"].shape[0] == 1 and (packed_batch["labels"] != -100).any()
    torch.testing.assert_close(results["packed"][1], results["padded"][1], atol=1e-5, rtol=1e-5)
    for key, grad in results["padded"][2].items():
        torch.testing.assert_close(results["packed"][2][key], grad, atol=1e-5, rtol=1e-4, msg=key)
    for key in ("aux_loss", "router_z_loss", "mean_token_accuracy"):
        assert results["packed"][3][key] == pytest.approx(results["padded"][3][key], rel=1e-4, abs=1e-5), key
