"""Bad input gets a named error, not an index error from deep inside torch."""

import pytest
import torch
from conftest import tiny_config_kwargs

from jetmoe_model import JetMoECheckpointError, JetMoEConfig, JetMoEForCausalLM, JetMoEInputError


@pytest.fixture(scope="module")
def model():
    return JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs(moe_backend="torch"))).eval()


@pytest.mark.parametrize(
    "inputs, message",
    [
        (dict(input_ids=torch.rand(2, 5)), "integer token ids"),
        (dict(input_ids=torch.randint(0, 97, (5,))), r"\[batch, sequence\]"),
        (dict(input_ids=torch.tensor([[1, 2, 97]])), "vocab_size is 97"),
        (dict(input_ids=torch.tensor([[1, -2, 3]])), "vocab_size"),
        (dict(input_ids=torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, -1, 2]])), "negative positions"),
        (dict(input_ids=torch.tensor([[1, 2, 3]]), position_ids=torch.tensor([[0, 1]])), "position_ids has shape"),
        (dict(input_ids=torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4)), "attention_mask has shape"),
    ],
)
def test_bad_inputs_are_named(model, inputs, message):
    with pytest.raises(JetMoEInputError, match=message):
        model(**inputs)


def test_checkpoint_with_wrong_shapes_names_the_tensors(tmp_path):
    JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs())).save_pretrained(tmp_path)
    with pytest.raises(JetMoECheckpointError, match=r"mlp\.input_linear\.weight: checkpoint \(4, 96, 32\)"):
        JetMoEForCausalLM.from_pretrained(tmp_path, intermediate_size=40)


def test_unknown_moe_backend_is_rejected():
    with pytest.raises(Exception, match="moe_backend='cuda'"):
        JetMoEConfig(**tiny_config_kwargs(moe_backend="cuda"))


def test_legacy_field_names_of_the_original_release_are_understood():
    config = JetMoEConfig(moe_num_experts=6, moe_top_k=3, num_layers=5)
    assert (config.num_local_experts, config.num_experts_per_tok, config.num_hidden_layers) == (6, 3, 5)
