"""RoPE scaling from the config (linear, dynamic, yarn) and inputs longer than `max_position_embeddings`, against
transformers' `JetMoeForCausalLM` loaded from the same checkpoint."""

import pytest
import torch
from model_pairs import stock_and_ours

MAX_POSITIONS = 24
ATOL = 2e-4


def rope(rope_type: str, **fields) -> dict:
    return dict(rope_type=rope_type, rope_theta=10000.0, **fields)


def random_ids(length: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 97, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "rope_parameters",
    [rope("default"), rope("linear", factor=4.0), rope("dynamic", factor=4.0), rope("yarn", factor=4.0)],
    ids=lambda parameters: parameters["rope_type"],
)
def test_scaled_rope_matches_stock_within_and_beyond_max_positions(tmp_path, rope_parameters):
    stock, ours = stock_and_ours(tmp_path, "e4k2", seed=21, max_position_embeddings=MAX_POSITIONS,
                                 rope_parameters=rope_parameters)  # fmt: skip
    assert ours.config.rope_parameters["rope_type"] == rope_parameters["rope_type"]
    # short, then long (dynamic rescales its frequencies), then short again (dynamic goes back to the original)
    for length, seed in ((10, 1), (int(MAX_POSITIONS * 1.5), 2), (10, 3)):
        ids = random_ids(length, seed)
        with torch.no_grad():
            torch.testing.assert_close(ours(ids).logits, stock(ids).logits, atol=ATOL, rtol=0, msg=f"{length}")


def test_dynamic_rope_changes_only_inputs_longer_than_max_positions(tmp_path):
    _, unscaled = stock_and_ours(tmp_path / "unscaled", "e4k2", seed=22, max_position_embeddings=MAX_POSITIONS)
    _, dynamic = stock_and_ours(tmp_path / "dynamic", "e4k2", seed=22, max_position_embeddings=MAX_POSITIONS,
                                rope_parameters=rope("dynamic", factor=4.0))  # fmt: skip
    short, long = random_ids(10, 4), random_ids(int(MAX_POSITIONS * 1.5), 5)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(short).logits, unscaled(short).logits)
        assert not torch.allclose(dynamic(long).logits, unscaled(long).logits, atol=1e-4)


def test_generation_past_max_positions_matches_stock(tmp_path):
    stock, ours = stock_and_ours(tmp_path, "e4k2", seed=23, max_position_embeddings=MAX_POSITIONS,
                                 rope_parameters=rope("yarn", factor=4.0))  # fmt: skip
    prompt = random_ids(MAX_POSITIONS - 4, 6)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(ours.generate(prompt, **kwargs), stock.generate(prompt, **kwargs))
