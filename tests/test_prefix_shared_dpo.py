"""Prefix-shared DPO pairs (`jetmoe_model.pair_packing`) compute what TRL's padded pairs do, in float32 on CPU: the
model's hidden states, router logits, TRL's fused-head log-probs and their gradients against the padded forward
(`padding_free: false`, SDPA with a mask); and through our DPO trainer, loss, rewards, log-probs, router losses and
gradients against stock TRL's `DPOTrainer` on the padded batch plus the model's own router loss, full and LoRA."""

import pytest
import torch
import trl.trainer.dpo_trainer
from conftest import tiny_config_kwargs
from trl import DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import add_fused_lm_head

import jetmoe_model.batch_plan
from align.lora.arguments import LoraArguments
from align.lora.config import jetmoe_lora_config
from align.training.dpo import dpo_trainer, frozen_copy
from alignment_fixtures import tiny_model
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM
from jetmoe_model.packing import PACK_MULTIPLE
from jetmoe_model.pair_packing import shared_prefix_pairs
from test_dpo_learning import _setup as dpo_setup

# (prompt, chosen, rejected) token ids: prompts of several lengths, a response that starts like the other one
# (their common prefix reaches into the responses), a rejected response that is the start of the chosen one, and
# a pair whose rows begin differently (prompts truncated apart, as `keep_end` can): nothing shared.
PAIRS = [
    ([5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16], [17, 18, 19, 20]),
    ([21, 22, 23], [24, 25], [26, 27, 28, 29, 30, 31, 32, 33, 34]),
    ([35, 36, 37, 38], [39, 40, 41, 42], [39, 40, 43]),
    ([44, 45], [46, 47, 48, 49], [46, 47]),
]
TRUNCATED_APART = {"prompt_ids": [50, 51, 52], "chosen_ids": [53, 54], "rejected_ids": [55]}


def pair_batch(with_truncated=True):
    examples = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in PAIRS]
    batch = DataCollatorForPreference(pad_token_id=0)(examples + ([TRUNCATED_APART] if with_truncated else []))
    if with_truncated:  # its rejected row starts with another token, as if its prompt were cut elsewhere
        batch["input_ids"][len(examples) * 2 + 1, 0] = 56
    return batch


def test_layout_packs_each_prompt_once_and_lets_the_rejected_rest_read_it():
    batch = pair_batch(with_truncated=False)
    packed = shared_prefix_pairs(batch["input_ids"], batch["attention_mask"])
    # Shared: the prompt, plus the responses' common start (pairs 3 and 4); rejected 4 lies wholly in chosen 4.
    shared = [5, 3, 4 + 2, 2 + 2]
    rests = [4, 9, 1, 0]
    chosen = [len(p) + len(c) for p, c, _ in PAIRS]
    assert packed.real_tokens == sum(chosen) + sum(rests) == int(batch["attention_mask"].sum()) - sum(shared)
    queries, keys = [], []  # per pair: shared + chosen rest reading itself; the rejected rest reading shared + it
    for n_chosen, n_shared, rest in zip(chosen, shared, rests):
        queries += [n_chosen] + ([rest] if rest else [])
        keys += [n_chosen] + ([n_shared + rest] if rest else [])
    filler = PACK_MULTIPLE - packed.real_tokens
    assert torch.diff(packed.cu_seqlens).tolist() == queries + [filler]
    assert torch.diff(packed.cu_seqlens_k).tolist() == keys + [filler]
    # Pair 1's rejected rest reads the 5 prompt tokens at the start of the row, then itself (after chosen 1).
    first_rest_keys = packed.key_index[12:12 + 9].tolist()
    assert first_rest_keys == list(range(5)) + list(range(12, 16))
    # Each packed token's copies among the keys (the backward sums them): a shared token's two, any other's one.
    for token, positions in enumerate(packed.key_sources.tolist()):
        positions = [p for p in positions if p >= 0]
        assert positions == (packed.key_index == token).nonzero().flatten().tolist() and 1 <= len(positions) <= 2
    # The rejected row's prompt positions read the chosen row's packed prompt tokens.
    width = batch["input_ids"].shape[1]
    assert packed.padded_index.view(-1, width)[4, :5].tolist() == packed.padded_index.view(-1, width)[0, :5].tolist()
    ids = packed.pack(batch["input_ids"][..., None])[0, :, 0]
    torch.testing.assert_close(packed.unpack(ids[None, :, None])[..., 0], batch["input_ids"])


def test_left_padded_rows_are_not_shared():
    batch = pair_batch(with_truncated=False)
    flipped = {key: torch.flip(value, dims=(1,)) for key, value in batch.items()}
    assert shared_prefix_pairs(flipped["input_ids"], flipped["attention_mask"]) is None


def tiny_jetmoe(seed=0, **overrides):
    torch.manual_seed(seed)
    model = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs("e8k2", moe_backend="torch", **overrides)))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.train()


def forward_and_grads(model, batch, padding_free, share):
    model.config.padding_free, model.config.share_pair_prefix = padding_free, share
    model.zero_grad()
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_router_logits=True, preference_pairs=True)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                fused_lm_head=True, preference_pairs=True, use_cache=False)
    real = batch["attention_mask"].bool().flatten()  # padding's router logits: the padded forward's own business
    (out.log_probs.sum() + sum(logits[real].pow(2).mean() for logits in hidden.router_logits)).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return hidden, out.log_probs, grads


def test_model_outputs_and_gradients_are_the_padded_pairs(monkeypatch):
    model = tiny_jetmoe(seed=4)
    add_fused_lm_head(model)
    batch = pair_batch()
    layouts = []
    monkeypatch.setattr(jetmoe_model.batch_plan, "shared_prefix_pairs",
                        lambda *args: layouts.append(shared_prefix_pairs(*args)) or layouts[-1])
    padded = forward_and_grads(model, batch, padding_free=False, share=False)
    shared = forward_and_grads(model, batch, padding_free=True, share=True)
    assert len(layouts) == 2 and layouts[0].real_tokens < int(batch["attention_mask"].sum())
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(shared[0].last_hidden_state[real], padded[0].last_hidden_state[real],
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    for got, want in zip(shared[0].router_logits, padded[0].router_logits):
        torch.testing.assert_close(got[real.flatten()], want[real.flatten()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared[1], padded[1], atol=1e-5, rtol=1e-5)
    assert padded[1].abs().sum() > 0 and shared[2].keys() == padded[2].keys()
    for name, grad in padded[2].items():
        torch.testing.assert_close(shared[2][name], grad, atol=1e-5, rtol=1e-4, msg=name)


# --- through the trainers --------------------------------------------------------------------------------------------


def randomize_lora(model, seed):
    """Non-zero adapters (fresh ones have B = 0), the same in both trainers: the policy then differs from the
    reference and every adapter weight gets a gradient."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)


def trainers(tmp_path, lora: bool):
    """Ours (prefix sharing on) and stock TRL's `DPOTrainer` (padded forwards), on the same weights and pairs."""
    ours = dpo_setup(tmp_path / "ours", max_steps=1)
    peft_config = jetmoe_lora_config(LoraArguments(r=4, alpha=8, dropout=0.0)) if lora else None
    if lora:
        ours = dpo_trainer(ours.args, tiny_model(ours.processing_class), ours.processing_class, ours.train_dataset,
                           peft_config=peft_config)  # fmt: skip
    stock_model = tiny_model(ours.processing_class)
    stock_model.config.padding_free = False
    stock = DPOTrainer(model=stock_model, ref_model=None if lora else frozen_copy(stock_model), args=ours.args,
                       train_dataset=ours.train_dataset, processing_class=ours.processing_class,
                       peft_config=peft_config)  # fmt: skip
    if lora:
        randomize_lora(ours.model, seed=1)
        randomize_lora(stock.model, seed=1)
    else:  # the policy a step away from its reference, on both sides
        for trainer in (ours, stock):
            generator = torch.Generator().manual_seed(3)
            with torch.no_grad():
                for _, param in sorted(trainer.model.named_parameters()):
                    param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    return ours, stock


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_loss_rewards_log_probs_and_gradients_equal_stock_trl_on_padded_pairs(tmp_path, monkeypatch, lora):
    ours, stock = trainers(tmp_path, lora)
    layouts = []
    monkeypatch.setattr(jetmoe_model.batch_plan, "shared_prefix_pairs",
                        lambda *args: layouts.append(shared_prefix_pairs(*args)) or layouts[-1])
    examples = [ours.train_dataset[i] for i in range(6)]
    batch = ours._prepare_inputs(ours.data_collator(examples))  # laid out once, on the host, by our collator
    assert not batch["attention_mask"].all() and batch["packed_batch"] is layouts[0]
    stock_batch = {key: value for key, value in batch.items() if key not in ("packed_batch", "scored_tokens")}

    results = {}
    for name, trainer in (("ours", ours), ("stock", stock)):
        trainer.model.train().zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch if name == "ours" else stock_batch))
        if name == "stock":  # the router losses our trainer adds, from the model's own padded forward
            router = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   output_router_logits=True, use_cache=False)  # fmt: skip
            loss = loss + router.router_loss
        loss.backward()
        grads = {key.removeprefix("base_model.model."): p.grad.clone()
                 for key, p in trainer.model.named_parameters() if p.grad is not None}
        if name == "ours":  # kept on the device (no wait for it in the step) until logged
            assert all(isinstance(values[-1], torch.Tensor) for values in trainer._metrics["train"].values())
        trainer.log({})
        results[name] = loss, grads, trainer.state.log_history[-1]
    assert len(layouts) == 1 and layouts[0] is not None  # the policy and the reference forward read the plan
    assert layouts[0].real_tokens < int(batch["attention_mask"].sum())

    (loss, grads, metrics), (stock_loss, stock_grads, stock_metrics) = results["ours"], results["stock"]
    torch.testing.assert_close(loss, stock_loss, atol=1e-5, rtol=1e-5)
    for key in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "rewards/accuracies", "logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy"):
        assert type(metrics[key]) is float, key
        assert metrics[key] == pytest.approx(stock_metrics[key], rel=1e-4, abs=1e-5), key
    assert metrics["num_tokens"] == stock_metrics["num_tokens"] > 0
    assert abs(metrics["rewards/margins"]) > 1e-4  # the policy is not its reference: rewards carry signal
    assert grads.keys() == stock_grads.keys() and (any("lora_" in key for key in grads) == lora)
    for key, grad in stock_grads.items():
        torch.testing.assert_close(grads[key], grad, atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_the_reference_forward_comes_first_without_router_logits(tmp_path, lora):
    """Our trainer makes the step's reference forward first, without autograd and not asked for router logits, then
    the policy's, with both (the loss and gradients are checked equal to stock TRL's above)."""
    ours, _ = trainers(tmp_path, lora)
    forwards = []
    backbones = {module for module in (*ours.model.modules(), *(ours.ref_model.modules() if ours.ref_model else ()))
                 if isinstance(module, jetmoe_model.JetMoEModel)}  # fmt: skip
    for backbone in backbones:  # registered after the router losses' hook: sees what it asked for
        backbone.register_forward_pre_hook(
            lambda module, args, kwargs: forwards.append(
                (torch.is_grad_enabled(), bool(kwargs.get("output_router_logits")))
            ),
            with_kwargs=True,
        )
    batch = ours._prepare_inputs(ours.data_collator([ours.train_dataset[i] for i in range(4)]))
    ours.model.train()
    ours.compute_loss(ours.model, dict(batch))
    assert forwards == [(False, False), (True, True)]


def test_the_lora_reference_pass_does_not_unwrap_the_model_each_step(tmp_path, monkeypatch):
    """TRL unwraps the model twice per reference pass, each a walk of all modules; ours finds the PEFT model once
    (its reference log-probs and the loss are checked equal to stock TRL's above)."""
    ours, _ = trainers(tmp_path, lora=True)
    batch = ours._prepare_inputs(ours.data_collator([ours.train_dataset[i] for i in range(4)]))
    ours.model.train()
    ours.compute_loss(ours.model, dict(batch))  # the first step finds it
    unwraps = []
    unwrap = ours.accelerator.unwrap_model
    monkeypatch.setattr(ours.accelerator, "unwrap_model",
                        lambda *args, **kwargs: unwraps.append(1) or unwrap(*args, **kwargs))
    monkeypatch.setattr(trl.trainer.dpo_trainer, "is_peft_model", lambda model: unwraps.append(1) or True)
    for _ in range(2):
        ours.compute_loss(ours.model, dict(batch))
    assert unwraps == []


def test_precomputed_reference_log_probs_are_the_padded_ones(tmp_path):
    ours, stock = trainers(tmp_path, lora=False)
    batch = ours._prepare_inputs(ours.data_collator([ours.train_dataset[i] for i in range(6)]))
    got = ours.compute_ref_log_probs(ours.ref_model, dict(batch))
    want = stock.compute_ref_log_probs(stock.ref_model, dict(batch))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_share_pair_prefix_off_keeps_the_unpadded_forward(tmp_path, monkeypatch):
    trainer = dpo_setup(tmp_path, max_steps=1)
    trainer.model.config.share_pair_prefix = False
    trainer.ref_model.config.share_pair_prefix = False
    calls = []
    monkeypatch.setattr(jetmoe_model.batch_plan, "shared_prefix_pairs", lambda *args: calls.append(1))
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    with torch.no_grad():
        trainer.compute_loss(trainer.model, dict(batch))
    assert not calls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the flash varlen kernel needs a CUDA GPU")
def test_flash_varlen_attention_with_keys_longer_than_queries_matches_the_masked_reference():
    """The GPU kernel's causal rule for a query sequence shorter than its keys (aligned to their end) is the one the
    CPU reference spells out as a mask: the semantics the CPU tests check."""
    from jetmoe_model.varlen_attention import reference_varlen_attention, varlen_attention

    torch.manual_seed(0)
    queries, keys = [700, 300, 1, 129, 64], [700, 420, 1, 1000, 64]  # chosen-like, rejected rests, a filler
    cu_q = torch.tensor([0, *queries], device="cuda").cumsum(0, dtype=torch.int32)
    cu_k = torch.tensor([0, *keys], device="cuda").cumsum(0, dtype=torch.int32)
    heads, kv_heads, dim = 32, 16, 128
    query = torch.randn(sum(queries), heads, dim, device="cuda", dtype=torch.bfloat16).requires_grad_()
    key = torch.randn(sum(keys), kv_heads, dim, device="cuda", dtype=torch.bfloat16).requires_grad_()
    value = torch.randn(sum(keys), kv_heads, dim, device="cuda", dtype=torch.bfloat16).requires_grad_()
    grad_out = torch.randn(sum(queries), heads, dim, device="cuda", dtype=torch.bfloat16)

    out = varlen_attention(query, key, value, cu_q, max(queries), dim**-0.5, cu_seqlens_k=cu_k,
                           max_length_k=max(keys))  # fmt: skip
    grads = torch.autograd.grad(out, (query, key, value), grad_out)
    as64 = [x.detach().double().requires_grad_() for x in (query, key, value)]
    expected = reference_varlen_attention(*as64, cu_q, dim**-0.5, cu_k)
    expected_grads = torch.autograd.grad(expected, as64, grad_out.double())
    for got, want in zip((out, *grads), (expected, *expected_grads)):
        error = (got.double() - want).norm() / want.norm()
        assert error < 1e-2, error


def test_pairs_of_stock_trls_collator_for_the_fixture_share_their_prompts(tmp_path):
    """The fixture's pairs (chat-templated, tokenised by TRL) really have prompts to share."""
    trainer = dpo_setup(tmp_path, max_steps=1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    packed = shared_prefix_pairs(batch["input_ids"], batch["attention_mask"])
    prompts = sum(len(trainer.train_dataset[i]["prompt_ids"]) for i in range(4))
    assert int(batch["attention_mask"].sum()) - packed.real_tokens >= prompts
