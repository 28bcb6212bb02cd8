"""Our JetMoE: a transformers `PreTrainedModel` whose checkpoints are interchangeable with `JetMoeForCausalLM`."""

from .source_checkout import ensure_kernels_importable

ensure_kernels_importable()  # before the modules that import jetmoe_kernels

from .configuration import JetMoEConfig
from .attention import preferred_attn_implementation
from .auto_classes import register_auto_classes
from .checkpoint_checks import JetMoECheckpointError
from .input_checks import JetMoEInputError
from .modeling import JetMoECausalLMOutput, JetMoEForCausalLM, JetMoEModel, JetMoEPreTrainedModel

__all__ = [
    "JetMoECausalLMOutput",
    "JetMoECheckpointError",
    "JetMoEConfig",
    "JetMoEForCausalLM",
    "JetMoEInputError",
    "JetMoEModel",
    "JetMoEPreTrainedModel",
    "preferred_attn_implementation",
    "register_auto_classes",
]
