"""Our JetMoE against transformers' own `JetMoeForCausalLM`, the oracle: same checkpoints, same numbers."""

import pytest
import torch
from conftest import TINY_SHAPES, tiny_config_kwargs
from model_pairs import randomize, stock_and_ours
from transformers import JetMoeForCausalLM

from jetmoe_model import JetMoEConfig, JetMoEForCausalLM
from jetmoe_model.cache_name import CACHE_NAME


@pytest.mark.parametrize("shape", sorted(TINY_SHAPES))
def test_transformers_checkpoint_gives_same_logits_loss_and_gradients(tmp_path, shape):
    stock, ours = stock_and_ours(tmp_path, shape)
    ids = torch.randint(0, stock.config.vocab_size, (3, 11), generator=torch.Generator().manual_seed(1))
    out_stock, out_ours = stock(ids, labels=ids), ours(ids, labels=ids)

    torch.testing.assert_close(out_ours.logits, out_stock.logits, atol=2e-4, rtol=0)
    torch.testing.assert_close(out_ours.loss, out_stock.loss, atol=1e-5, rtol=1e-5)

    out_stock.loss.backward()
    out_ours.loss.backward()
    stock_grads = dict(stock.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, stock_grads[name].grad, atol=2e-4, rtol=1e-3, msg=name)


def test_our_checkpoint_loads_in_stock_transformers_without_missing_keys(tmp_path):
    ours = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs(), moe_backend="torch"))
    randomize(ours, seed=3)
    ours.save_pretrained(tmp_path / "ours")

    stock, info = JetMoeForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(stock.state_dict()) == set(ours.state_dict())
    ids = torch.randint(0, 97, (2, 7))
    torch.testing.assert_close(ours.eval()(ids).logits, stock.eval()(ids).logits, atol=2e-4, rtol=0)


def test_greedy_generation_is_token_identical(tmp_path):
    stock, ours = stock_and_ours(tmp_path, "e4k2", seed=5)
    prompt = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours.generate(prompt, **kwargs), stock.generate(prompt, **kwargs))


def test_generation_with_kv_cache_matches_full_recompute(tmp_path):
    _, ours = stock_and_ours(tmp_path, "e8k2", seed=6)
    prompt = torch.randint(3, 97, (1, 5))
    cached = ours.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
    uncached = ours.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(cached, uncached)


def test_prompt_cached_without_copy_matches_stock_cache(tmp_path):
    """Without grad, a prompt fills each empty cache layer with its own key/value tensors (`kv_cache.update_cache`);
    the cache holds what transformers' cache holds for the same checkpoint, and the next token's logits agree."""
    stock, ours = stock_and_ours(tmp_path, "e8k2", seed=7)
    ids = torch.randint(0, stock.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out_stock, out_ours = stock(ids, use_cache=True), ours(ids, use_cache=True)
        cache_stock, cache_ours = out_stock[CACHE_NAME], out_ours[CACHE_NAME]
        for layer_stock, layer_ours in zip(cache_stock.layers, cache_ours.layers):
            torch.testing.assert_close(layer_ours.keys, layer_stock.keys, atol=2e-4, rtol=0)
            torch.testing.assert_close(layer_ours.values, layer_stock.values, atol=2e-4, rtol=0)
        step = ids[:, -1:]
        next_stock = stock(step, **{CACHE_NAME: cache_stock}).logits
        next_ours = ours(step, **{CACHE_NAME: cache_ours}).logits
    torch.testing.assert_close(next_ours, next_stock, atol=2e-4, rtol=0)
    assert cache_ours.get_seq_length() == ids.shape[1] + 1


def test_left_padded_batch_matches_unpadded_runs(tmp_path):
    _, ours = stock_and_ours(tmp_path, "e4k2", seed=7)
    short, long = torch.randint(3, 97, (1, 4)), torch.randint(3, 97, (1, 9))
    batch = torch.cat([torch.cat([torch.zeros(1, 5, dtype=torch.long), short], dim=1), long])
    mask = torch.ones_like(batch)
    mask[0, :5] = 0

    padded = ours(batch, attention_mask=mask).logits
    torch.testing.assert_close(padded[0, 5:], ours(short).logits[0], atol=2e-4, rtol=0)
    torch.testing.assert_close(padded[1], ours(long).logits[0], atol=2e-4, rtol=0)

    generated = ours.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                              eos_token_id=None)
    alone = ours.generate(short, max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(generated[0, 5:], alone[0])
