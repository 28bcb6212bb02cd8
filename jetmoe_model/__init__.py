"""Our JetMoE: a transformers `PreTrainedModel` whose checkpoints are interchangeable with `JetMoeForCausalLM`."""

from .configuration import JetMoEConfig
from .attention import preferred_attn_implementation
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
]
