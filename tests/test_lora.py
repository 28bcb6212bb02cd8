"""LoRA on every JetMoE projection: stock-PEFT adapter format, merge/export, frozen routers, DPO's reference."""

import json

import pytest
import torch
from conftest import tiny_config_kwargs
from peft import PeftModel
from peft.tuners.lora.layer import ParamWrapper
from safetensors.torch import load_file
from transformers import JetMoeForCausalLM

from align.inference.export import export_merged
from align.lora.adapters import add_lora, load_adapter
from align.lora.arguments import EXPERT_PROJECTIONS, LoraArguments
from align.lora.routed_experts import RoutedExpertLora
from align.model.tokenizer import build_tokenizer
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

IDS = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))


def randomize(module: torch.nn.Module, seed: int, only_lora: bool = False) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not only_lora or "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * (0.2 if param.dim() > 1 else 0.5))


@pytest.fixture
def base_dir(tmp_path):
    """A random tiny base checkpoint on disk, float32, torch backend: what `base_model_name_or_path` names."""
    model = JetMoEForCausalLM(JetMoEConfig(**tiny_config_kwargs("e4k2"), moe_backend="torch"))
    randomize(model, seed=1)
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def trained_adapter(base_dir, out_dir, **lora_fields):
    """A LoRA model with random (non-zero) adapter weights, as if trained, saved to `out_dir` with a tokenizer."""
    model = add_lora(JetMoEForCausalLM.from_pretrained(base_dir), LoraArguments(r=4, alpha=8, **lora_fields))
    randomize(model, seed=2, only_lora=True)
    model.save_pretrained(out_dir)
    build_tokenizer(["a tiny corpus for a tiny tokenizer"], vocab_size=97).save_pretrained(out_dir)
    return model.eval()


def test_adapter_covers_every_expert_projection_of_every_layer_and_kv_proj(base_dir, tmp_path):
    trained_adapter(base_dir, tmp_path / "adapter")
    keys = set(load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    for layer in range(2):
        prefix = f"base_model.model.model.layers.{layer}"
        modules = ["self_attention.kv_proj", "self_attention.experts.input_linear",
                   "self_attention.experts.output_linear", "mlp.input_linear", "mlp.output_linear"]
        for module in modules:
            assert {f"{prefix}.{module}.lora_A.weight", f"{prefix}.{module}.lora_B.weight"} <= keys, module
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["kv_proj"]
    assert sorted(config["target_parameters"]) == sorted(f"{name}.weight" for name in EXPERT_PROJECTIONS)
    assert config["base_model_name_or_path"] == str(base_dir)


def test_stock_peft_loads_the_adapter_with_the_same_logits_as_our_routed_path(base_dir, tmp_path):
    ours = trained_adapter(base_dir, tmp_path / "adapter", dropout=0.1)  # dropout: saved as 0, stock PEFT accepts
    stock = PeftModel.from_pretrained(
        JetMoEForCausalLM.from_pretrained(base_dir), tmp_path / "adapter", is_trainable=True
    ).eval()
    wrappers = [m for m in stock.modules() if isinstance(m, ParamWrapper)]
    assert len(wrappers) == 8 and not any(isinstance(m, RoutedExpertLora) for m in wrappers)
    assert sum(isinstance(m, RoutedExpertLora) for m in ours.modules()) == 8

    expected = stock(IDS).logits
    torch.testing.assert_close(ours(IDS).logits, expected, atol=1e-5, rtol=0)
    # both in eval mode (ours would apply its dropout in training); gradients flow all the same
    ours(IDS, labels=IDS).loss.backward()
    stock(IDS, labels=IDS).loss.backward()
    stock_params = dict(stock.named_parameters())
    for name, param in ours.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(param.grad, stock_params[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    reloaded = load_adapter(JetMoEForCausalLM.from_pretrained(base_dir), tmp_path / "adapter").eval()
    torch.testing.assert_close(reloaded(IDS).logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(reloaded.merge_and_unload()(IDS).logits, expected, atol=1e-4, rtol=0)
    with torch.no_grad():
        assert (expected - JetMoEForCausalLM.from_pretrained(base_dir)(IDS).logits).abs().max() > 1e-2


@pytest.mark.parametrize("lora_fields", [
    dict(train_routers=True),
    dict(targets=["kv_proj", "mlp.output_linear", "lm_head", "embed_tokens"]),  # tied in the base: merge unties
], ids=["routers trained", "embeddings"])
def test_merged_export_equals_base_plus_adapter_here_and_in_stock_transformers(base_dir, tmp_path, lora_fields):
    ours = trained_adapter(base_dir, tmp_path / "adapter", **lora_fields)
    expected = ours(IDS).logits
    out = export_merged(tmp_path / "adapter", tmp_path / "merged")
    assert (out / "tokenizer_config.json").is_file()

    merged = JetMoEForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(merged(IDS).logits, expected, atol=1e-4, rtol=0)
    stock, info = JetMoeForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(stock.eval()(IDS).logits, expected, atol=1e-4, rtol=0)


def test_frozen_routers_get_no_gradient_and_trained_routers_do(base_dir, tmp_path):
    for train_routers in (False, True):
        model = add_lora(JetMoEForCausalLM.from_pretrained(base_dir), LoraArguments(r=4, train_routers=train_routers))
        model(IDS, labels=IDS).loss.backward()
        routers = {name: p for name, p in model.named_parameters() if "router" in name}
        trained = {name: p for name, p in routers.items() if p.requires_grad}
        assert routers and bool(trained) == train_routers
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained.values())
        assert all(p.grad is None for name, p in routers.items() if name not in trained)
        lora_grads = [p.grad for name, p in model.named_parameters() if "lora_A" in name]
        assert all(grad is not None for grad in lora_grads)


def test_disabling_adapters_gives_the_base_model_for_dpo_reference(base_dir, tmp_path):
    model = trained_adapter(base_dir, tmp_path / "adapter", train_routers=True)
    base_logits = JetMoEForCausalLM.from_pretrained(base_dir).eval()(IDS).logits
    with model.disable_adapter():
        torch.testing.assert_close(model(IDS).logits, base_logits, atol=1e-6, rtol=0)
    assert (model(IDS).logits - base_logits).abs().max() > 1e-2


def test_unknown_target_is_named():
    with pytest.raises(ValueError, match="q_proj"):
        LoraArguments(targets=["kv_proj", "q_proj"])


def test_quick_adapter_switch_gives_what_peft_disable_adapter_gives(base_dir, tmp_path):
    """LoRA DPO's reference forward: the quick switch (`align.lora.adapter_switch`) against PEFT's own context."""
    import copy

    from align.lora.adapter_switch import install_quick_adapter_switch

    model = trained_adapter(base_dir, tmp_path / "adapter")
    with model.disable_adapter():
        peft_reference = model(IDS).logits
    policy = model(IDS).logits
    assert install_quick_adapter_switch(model) and install_quick_adapter_switch(model)  # idempotent
    with model.disable_adapter():
        torch.testing.assert_close(model(IDS).logits, peft_reference, atol=0, rtol=0)
        assert model._adapters_disabled
    torch.testing.assert_close(model(IDS).logits, policy, atol=0, rtol=0)  # adapters back on
    assert not model._adapters_disabled

    layers = [module for module in model.modules() if hasattr(module, "lora_A")]  # kv_proj and the experts
    with model.disable_adapter():
        assert all(layer.disable_adapters for layer in layers)
    layers[0]._disable_adapters = True  # a layer the user switched off stays off after the context
    with model.disable_adapter():
        pass
    assert layers[0]._disable_adapters and not any(layer._disable_adapters for layer in layers[1:])
    layers[0]._disable_adapters = False

    twin = copy.deepcopy(model)  # the copy's switch acts on the copy
    with twin.disable_adapter():
        assert all(layer.disable_adapters for layer in twin.modules() if hasattr(layer, "lora_A"))
        assert not any(layer._disable_adapters for layer in layers)


def test_quick_adapter_switch_leaves_trained_routers_to_peft(base_dir, tmp_path):
    """Trained routers are PEFT `modules_to_save` wrappers, which PEFT's context also switches: left to it."""
    from align.lora.adapter_switch import install_quick_adapter_switch

    model = trained_adapter(base_dir, tmp_path / "adapter", train_routers=True)
    assert not install_quick_adapter_switch(model)
    assert "disable_adapter" not in vars(model)


def stock_and_ours_linear(dtype):
    """One `kv_proj`-like layer with the same float32 adapter under stock PEFT and under `jetmoe_lora_config`."""
    from peft import LoraConfig, get_peft_model

    from align.lora.config import jetmoe_lora_config

    ours = jetmoe_lora_config(LoraArguments(r=4, alpha=8, dropout=0.0, targets=["kv_proj"]))
    ours.task_type = None  # a bare layer, not a causal LM
    models = []
    for config in (LoraConfig(r=4, lora_alpha=8, target_modules=["kv_proj"]), ours):
        torch.manual_seed(0)
        layer = torch.nn.Sequential()
        layer.add_module("kv_proj", torch.nn.Linear(16, 12, bias=False))
        model = get_peft_model(layer.to(dtype), config)
        randomize(model, seed=3, only_lora=True)
        models.append(model)
    return models


def test_lora_linear_computes_what_peft_computes():
    """float32: the same output and adapter gradients as PEFT's `Linear`; bf16 base with PEFT's float32 adapters: the
    update in bf16 (the factors cast down, not the input up), within bf16 rounding of PEFT's float32 update."""
    from align.lora.linear import LoraLinear

    for dtype, tolerance in ((torch.float32, dict(atol=1e-6, rtol=1e-5)), (torch.bfloat16, dict(atol=2e-2, rtol=2e-2))):
        stock, ours = stock_and_ours_linear(dtype)
        assert isinstance(ours.base_model.model.kv_proj, LoraLinear)
        assert not isinstance(stock.base_model.model.kv_proj, LoraLinear)
        x = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1)).to(dtype)
        outputs = [model(x) for model in (stock, ours)]
        assert outputs[1].dtype == dtype
        torch.testing.assert_close(outputs[1], outputs[0], **tolerance)
        upstream = torch.randn(outputs[0].shape, generator=torch.Generator().manual_seed(2)).to(dtype)
        grads = [torch.autograd.grad(out, [p for n, p in model.named_parameters() if "lora_" in n], upstream)
                 for out, model in zip(outputs, (stock, ours))]  # fmt: skip
        for got, want in zip(grads[1], grads[0]):
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want, **tolerance)
