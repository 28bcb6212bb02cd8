"""Every generation mode of transformers' `GenerationMixin` on our model, token for token against transformers'
`JetMoeForCausalLM`: greedy, sampling, beam search and beam sampling on a left-padded batch, dict outputs with
attentions and hidden states, assisted and prompt-lookup decoding, cache implementations, continuing from a
returned cache, and `torch.export`."""

import pytest
import torch
from model_pairs import randomize, stock_and_ours

from jetmoe_model import JetMoEForCausalLM
from jetmoe_model.cache_name import CACHE_NAME

NEW_TOKENS = 5
ATOL = 2e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return stock_and_ours(tmp_path_factory.mktemp("generation"), "e4k2", seed=11)


@pytest.fixture(scope="module")
def prompt():
    """Two prompts, the first left-padded by three tokens."""
    ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(12))
    mask = torch.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0
    return dict(input_ids=ids, attention_mask=mask)


def generate(model, prompt, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return model.generate(**prompt, max_new_tokens=NEW_TOKENS, pad_token_id=0, eos_token_id=None, **kwargs)


@pytest.mark.parametrize(
    "mode",
    [
        dict(do_sample=False),
        dict(do_sample=True, top_k=20),
        dict(do_sample=False, num_beams=3, num_return_sequences=2),
        dict(do_sample=True, num_beams=2),
    ],
    ids=["greedy", "sample", "beam_search", "beam_sample"],
)
def test_generation_modes_match_stock(models, prompt, mode):
    stock, ours = models
    assert torch.equal(generate(ours, prompt, **mode), generate(stock, prompt, **mode))


def test_dict_outputs_with_attentions_and_hidden_states_match_stock(models, prompt):
    """`output_attentions` in generate used to crash inside transformers: our attentions were None."""
    stock, ours = models
    flags = dict(do_sample=False, return_dict_in_generate=True, output_attentions=True, output_hidden_states=True,
                 output_scores=True, output_logits=True)  # fmt: skip
    out_stock, out_ours = generate(stock, prompt, **flags), generate(ours, prompt, **flags)
    assert torch.equal(out_ours.sequences, out_stock.sequences)
    for name in ("scores", "logits"):
        for step_ours, step_stock in zip(getattr(out_ours, name), getattr(out_stock, name)):
            torch.testing.assert_close(step_ours, step_stock, atol=ATOL, rtol=0)
    for name in ("attentions", "hidden_states"):
        steps_ours, steps_stock = getattr(out_ours, name), getattr(out_stock, name)
        assert len(steps_ours) == len(steps_stock) == NEW_TOKENS
        for step_ours, step_stock in zip(steps_ours, steps_stock):
            assert len(step_ours) == len(step_stock)
            for layer_ours, layer_stock in zip(step_ours, step_stock):
                torch.testing.assert_close(layer_ours, layer_stock, atol=ATOL, rtol=0, msg=name)


def test_assisted_and_prompt_lookup_decoding_give_the_greedy_tokens(models, prompt):
    """The assistant is a different model (other weights), so some drafted tokens are rejected."""
    _, ours = models
    assistant = JetMoEForCausalLM(ours.config).eval()
    randomize(assistant, seed=13)
    single = {key: value[1:] for key, value in prompt.items()}  # assisted decoding takes one sequence at a time
    greedy = generate(ours, single, do_sample=False)

    assisted = generate(ours, single, assistant_model=assistant, do_sample=False, return_dict_in_generate=True,
                        output_attentions=True, output_scores=True)  # fmt: skip
    assert torch.equal(assisted.sequences, greedy)
    assert all(layer is not None for step in assisted.attentions for layer in step)
    assert torch.equal(generate(ours, single, prompt_lookup_num_tokens=2, do_sample=False), greedy)


@pytest.mark.parametrize("cache_implementation", ["dynamic", "static"])
def test_cache_implementations_match_stock(models, prompt, cache_implementation):
    stock, ours = models
    kwargs = dict(do_sample=False, cache_implementation=cache_implementation)
    assert torch.equal(generate(ours, prompt, **kwargs), generate(stock, prompt, **kwargs))


def test_generation_continues_from_a_returned_cache(models, prompt):
    _, ours = models
    first = generate(ours, prompt, do_sample=False, return_dict_in_generate=True)
    mask = torch.cat([prompt["attention_mask"], torch.ones(2, NEW_TOKENS, dtype=torch.long)], dim=1)
    continued = generate(ours, dict(input_ids=first.sequences, attention_mask=mask), do_sample=False,
                         **{CACHE_NAME: first[CACHE_NAME]})  # fmt: skip
    at_once = ours.generate(**prompt, max_new_tokens=2 * NEW_TOKENS, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(continued, at_once)


def test_torch_export_runs_like_eager(models, prompt):
    _, ours = models
    inputs = dict(prompt, use_cache=False)
    exported = torch.export.export(ours, args=(), kwargs=inputs, strict=False)
    # Eager runs padding-free (zeros at padding), the exported graph padded: they agree on every real token.
    real = prompt["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(**inputs).logits[real], ours(**inputs).logits[real], atol=1e-5,
                                   rtol=0)
