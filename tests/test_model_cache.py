"""The KV cache reaches our model under the name the installed transformers uses (`past_key_values` up to 5.23,
`cache` from 5.24) and is used: when 5.24 renamed it, our forward silently ran every decode step without its cache,
on the new token alone, while the teacher-forced logits still matched."""

import pytest
import torch
from conftest import tiny_config_kwargs
from model_pairs import randomize
from transformers.cache_utils import DynamicCache

from jetmoe_model import JetMoEConfig, JetMoEForCausalLM
from jetmoe_model.cache_name import CACHE_KEYWORDS, CACHE_NAME

NEW_TOKENS = 5


@pytest.fixture(scope="module")
def model():
    model = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs(), moe_backend="torch")).eval()
    randomize(model, seed=21)
    return model


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 97, (2, 7), generator=torch.Generator().manual_seed(22))


def test_decode_steps_see_only_the_new_token_and_the_filled_cache(model, ids):
    """Each decode step gets one token and the cache of everything before it, and the tokens are those of
    generating without a cache (every step recomputing the whole sequence)."""
    seen = []

    def record(module, args, kwargs):
        cache = kwargs.get(CACHE_NAME)
        seen.append((kwargs["input_ids"].shape[1], None if cache is None else cache.get_seq_length()))

    kwargs = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None)
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        cached = model.generate(ids, **kwargs)
    finally:
        handle.remove()
    length = ids.shape[1]
    assert seen == [(length, 0)] + [(1, length + step) for step in range(NEW_TOKENS - 1)]
    assert torch.equal(cached, model.generate(ids, use_cache=False, **kwargs))


@pytest.mark.parametrize("name", CACHE_KEYWORDS)
def test_forward_reads_the_cache_under_either_name_and_returns_it_where_generate_reads_it(model, ids, name):
    with torch.no_grad():
        full = model(ids, use_cache=False).logits[:, -1]
        cache = getattr(model(ids[:, :-1], use_cache=True), CACHE_NAME)
        step = model(ids[:, -1:], use_cache=True, **{name: cache})
    assert step[CACHE_NAME] is cache and cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(step.logits[:, -1], full, atol=1e-5, rtol=0)


def test_two_different_caches_are_refused(model, ids):
    with pytest.raises(ValueError, match="two different caches"):
        model(ids, cache=DynamicCache(), past_key_values=DynamicCache())
