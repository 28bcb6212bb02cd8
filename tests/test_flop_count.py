"""`align.training.flop_count`: transformers' FLOP count of a step, its parameters counted once, not every step."""

from types import SimpleNamespace

import torch
from conftest import tiny_config_kwargs
from transformers import Trainer

from align.training.flop_count import CountParametersOnceMixin
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM


class TransformersCount:
    floating_point_ops = Trainer.floating_point_ops


class Counting(CountParametersOnceMixin, TransformersCount):
    def __init__(self, model):
        self.model = model


def test_the_count_is_transformers_and_the_model_is_walked_once():
    model = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs()))
    trainer, stock = Counting(model), SimpleNamespace(model=model)
    counted = []
    num_parameters = model.num_parameters
    model.num_parameters = lambda *args, **kwargs: counted.append(1) or num_parameters(*args, **kwargs)
    for tokens in (5, 9, 17):
        inputs = {"input_ids": torch.ones(2, tokens, dtype=torch.long)}
        assert trainer.floating_point_ops(inputs) == Trainer.floating_point_ops(stock, inputs) > 0
    assert len(counted) == 1 + 3  # ours once, transformers' on each of its three calls


def test_inputs_without_token_ids_count_as_transformers_counts():
    trainer = Counting(JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs())))
    assert trainer.floating_point_ops({"inputs_embeds": torch.ones(1, 3, 8)}) == 0
