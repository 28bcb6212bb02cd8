"""Optional outputs as transformers' common model tests check them: attention weights, hidden states and router
logits from arguments and from the config, `return_dict=False`; transformers' `JetMoeForCausalLM` is the oracle."""

import pytest
import torch
from model_pairs import stock_and_ours

from jetmoe_model import JetMoEModel
from jetmoe_model.cache_name import CACHE_NAME

ATOL = 2e-4


def left_padded_batch(vocab_size: int = 97):
    ids = torch.randint(3, vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    return ids, mask


def assert_all_close(ours, stock, name: str):
    assert len(ours) == len(stock), name
    for i, (a, b) in enumerate(zip(ours, stock)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=f"{name}[{i}]")


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_weights_match_stock_eager_whatever_the_attention(tmp_path, attn):
    """SDPA never materialises the weights: asking for them runs eager attention, not an ignored flag."""
    stock, ours = stock_and_ours(tmp_path, "e8k2", seed=1, ours_attn=attn)
    ids, mask = left_padded_batch()
    with torch.no_grad():
        out_stock = stock(ids, attention_mask=mask, output_attentions=True)
        out_ours = ours(ids, attention_mask=mask, output_attentions=True)
    heads = stock.config.num_key_value_heads * stock.config.num_experts_per_tok
    assert out_ours.attentions[0].shape == (2, heads, 7, 7)
    assert_all_close(out_ours.attentions, out_stock.attentions, "attentions")
    torch.testing.assert_close(out_ours.logits, out_stock.logits, atol=ATOL, rtol=0)
    assert ours(ids).attentions is None


def test_attention_weights_of_a_cached_step_cover_the_past(tmp_path):
    stock, ours = stock_and_ours(tmp_path, "e4k2", seed=2)
    ids, mask = left_padded_batch()
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        past_stock = stock(ids, attention_mask=mask)[CACHE_NAME]
        past_ours = ours(ids, attention_mask=mask)[CACHE_NAME]
        step = torch.tensor([[5], [9]])
        out_stock = stock(step, attention_mask=step_mask, output_attentions=True, **{CACHE_NAME: past_stock})
        out_ours = ours(step, attention_mask=step_mask, output_attentions=True, **{CACHE_NAME: past_ours})
    assert out_ours.attentions[0].shape[-2:] == (1, 8)
    assert_all_close(out_ours.attentions, out_stock.attentions, "attentions")


def test_hidden_states_and_attentions_from_the_config(tmp_path):
    stock, ours = stock_and_ours(tmp_path, "e4k2", seed=3, ours_attn="eager")
    ids, mask = left_padded_batch()
    for model in (stock, ours):
        model.config.output_hidden_states = True
        model.config.output_attentions = True
    with torch.no_grad():
        out_stock, out_ours = stock(ids, attention_mask=mask), ours(ids, attention_mask=mask)
        plain = ours(ids, attention_mask=mask, output_hidden_states=False, output_attentions=False)
    assert len(out_ours.hidden_states) == ours.config.num_hidden_layers + 1
    assert_all_close(out_ours.hidden_states, out_stock.hidden_states, "hidden_states")
    assert_all_close(out_ours.attentions, out_stock.attentions, "attentions")
    assert plain.hidden_states is None and plain.attentions is None  # the argument wins over the config


def test_return_dict_false_gives_tuples_like_stock(tmp_path):
    stock, ours = stock_and_ours(tmp_path, "e4k2", seed=4)
    ids, _ = left_padded_batch()
    with torch.no_grad():
        loss, logits = ours(ids, labels=ids, use_cache=False, return_dict=False)
        expected = ours(ids, labels=ids, use_cache=False)
        stock_tuple = stock(ids, labels=ids, use_cache=False, return_dict=False)
        ours.config.return_dict = False
        from_config = ours(ids, use_cache=False)
        base = ours.model(ids, use_cache=False)
    torch.testing.assert_close(loss, expected.loss)
    torch.testing.assert_close(logits, expected.logits)
    assert len(stock_tuple) == 2
    torch.testing.assert_close(stock_tuple[0], loss, atol=1e-5, rtol=1e-5)
    assert isinstance(from_config, tuple) and len(from_config) == 1
    assert isinstance(base, tuple) and len(base) == 1 and base[0].shape == (2, 7, ours.config.hidden_size)


def test_base_model_returns_router_logits_only_when_asked(tmp_path):
    _, ours = stock_and_ours(tmp_path, "e4k2", seed=5)
    base: JetMoEModel = ours.model
    ids, _ = left_padded_batch()
    with torch.no_grad():
        assert base(ids).router_logits is None
        asked = base(ids, output_router_logits=True).router_logits
        base.config.output_router_logits = True
        from_config = base(ids).router_logits
    assert len(asked) == 2 * base.config.num_hidden_layers  # MoA and MoE router of each layer
    assert asked[0].shape == (ids.numel(), base.config.num_local_experts)
    assert_all_close(from_config, asked, "router_logits")


def test_gradients_reach_the_returned_attention_weights(tmp_path):
    """The weights returned are the ones the output is computed from, not a copy beside the graph."""
    _, ours = stock_and_ours(tmp_path, "e4k2", seed=6)
    ids, mask = left_padded_batch()
    out = ours(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    for tensor in (out.attentions[0], out.hidden_states[0]):
        tensor.retain_grad()
    out.logits[:, -1].sum().backward()
    assert out.attentions[0].grad is not None and out.attentions[0].grad.abs().sum() > 0
    assert out.hidden_states[0].grad is not None
