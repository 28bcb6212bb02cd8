"""Our batched decoder (`jetmoe_model.decoding.generate`: preallocated cache, CUDA-graph steps) against
transformers' `generate` on transformers' `JetMoeForCausalLM` (the oracle), token for token: greedy on left-padded
prompts across several cache spans, rows ending at an end-of-sequence token, per-row temperatures, top-p."""

import pytest
import torch
from model_pairs import stock_and_ours

from jetmoe_model import decoding

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return stock_and_ours(tmp_path_factory.mktemp("decoding"), "e8k2", seed=5)


@pytest.fixture(autouse=True)
def short_spans(monkeypatch):
    monkeypatch.setattr(decoding, "SPAN", 8)  # the tiny prompts and answers cross several spans


@pytest.fixture(scope="module")
def prompts():
    """Three prompts of 5, 11 and 3 tokens, left-padded to 11."""
    generator = torch.Generator().manual_seed(6)
    ids = torch.zeros(3, 11, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, length in enumerate((5, 11, 3)):
        ids[row, 11 - length:] = torch.randint(3, 97, (length,), generator=generator)
        mask[row, 11 - length:] = 1
    return dict(input_ids=ids, attention_mask=mask)


def stock_generate(model, prompts, **kwargs):
    return model.generate(**prompts, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, **kwargs)


def test_greedy_matches_transformers_generate(models, prompts):
    stock, ours = models
    expected = stock_generate(stock, prompts, eos_token_id=None)
    assert torch.equal(decoding.generate(ours, **prompts, max_new_tokens=NEW_TOKENS), expected)


def test_rows_end_at_end_of_sequence_and_generation_stops_when_all_have(models, prompts):
    stock, ours = models
    free = stock_generate(stock, prompts, eos_token_id=None)[:, 11:]
    # End tokens each row produces at some step (rows 0 and 1 early, row 2 in the middle).
    eos = [int(free[0, 2]), int(free[1, 4]), int(free[2, 9])]
    expected = stock_generate(stock, prompts, eos_token_id=eos)
    assert expected.shape[1] < 11 + NEW_TOKENS  # transformers stopped early: so must we, at the same step
    got = decoding.generate(ours, **prompts, max_new_tokens=NEW_TOKENS, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(got, expected)


def test_per_row_temperatures_sample_only_their_rows(models, prompts):
    _, ours = models
    greedy = decoding.generate(ours, **prompts, max_new_tokens=NEW_TOKENS)
    torch.manual_seed(0)
    mixed = decoding.generate(ours, **prompts, max_new_tokens=NEW_TOKENS, temperature=[0.0, 1.5, 0.0])
    torch.manual_seed(0)
    again = decoding.generate(ours, **prompts, max_new_tokens=NEW_TOKENS, temperature=[0.0, 1.5, 0.0])
    assert torch.equal(mixed, again)  # seeded: reproducible
    assert torch.equal(mixed[[0, 2]], greedy[[0, 2]])
    assert not torch.equal(mixed[1], greedy[1])  # 24 draws at temperature 1.5 from a random model: not all arg-max


def test_a_top_p_below_the_largest_probability_is_greedy(models, prompts):
    _, ours = models
    greedy = decoding.generate(ours, **prompts, max_new_tokens=NEW_TOKENS)
    sampled = decoding.generate(ours, **prompts, max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1e-6)
    assert torch.equal(sampled, greedy)


def test_next_tokens_draws_from_the_tempered_softmax_cut_to_top_p():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(20000, 1)
    draws = decoding.next_tokens(logits, torch.full((20000,), 1.0), top_p=1.0, sampling=True)
    assert torch.allclose(torch.bincount(draws, minlength=4) / 20000, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.01)
    draws = decoding.next_tokens(logits, torch.full((20000,), 1.0), top_p=0.7, sampling=True)  # 0.5 + 0.3 kept
    assert torch.allclose(torch.bincount(draws, minlength=4) / 20000, torch.tensor([0.625, 0.375, 0, 0]), atol=0.01)
    draws = decoding.next_tokens(logits, torch.full((20000,), 0.5), top_p=1.0, sampling=True)  # p^2, renormalised
    squared = torch.tensor([0.25, 0.09, 0.0225, 0.0025]) / 0.365
    assert torch.allclose(torch.bincount(draws, minlength=4) / 20000, squared, atol=0.01)


def test_prompts_padded_on_the_right_are_refused(models, prompts):
    _, ours = models
    with pytest.raises(ValueError, match="left-padded"):
        decoding.generate(ours, prompts["input_ids"], prompts["attention_mask"].flip(1), max_new_tokens=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_on_the_triton_kernels_cuda_graph_steps_match_eager_steps_and_generate(models, prompts, dtype):
    _, ours = models
    model = ours.to("cuda", dtype)
    model.set_moe_backend("triton")
    on_gpu = {name: tensor.cuda() for name, tensor in prompts.items()}
    try:
        eager = decoding.generate(model, **on_gpu, max_new_tokens=NEW_TOKENS, cuda_graphs=False)
        graphed = decoding.generate(model, **on_gpu, max_new_tokens=NEW_TOKENS, cuda_graphs=True)
        expected = model.generate(**on_gpu, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                                  eos_token_id=None)
        model.set_moe_backend("torch")  # its routing reads counts on the host: no graphs by default, still decodes
        on_reference = decoding.generate(model, **on_gpu, max_new_tokens=NEW_TOKENS)
    finally:
        model.set_moe_backend("torch")
        model.to("cpu", torch.float32)
    assert torch.equal(graphed, eager)
    assert torch.equal(eager, expected)
    assert on_reference.shape == expected.shape
