"""Our `kernels` package must never pass for the unrelated hub `kernels` package transformers probes for."""

import importlib.metadata

import transformers.utils.import_utils as import_utils


def test_transformers_does_not_mistake_our_kernels_package_for_the_hub_one():
    import_utils.is_kernels_available.cache_clear()
    assert import_utils.is_kernels_available() is False
    assert importlib.metadata.version("jetmoe-align") < import_utils.KERNELS_MIN_VERSION


def test_public_api_imports():
    from jetmoe_model import JetMoEConfig, JetMoEForCausalLM  # noqa: F401
