"""Our classes through transformers' auto classes, on request.

Our config keeps `model_type` "jetmoe", the stock model's, so that checkpoints go both ways; the auto classes
therefore build transformers' own `JetMoeForCausalLM` (slow experts, no gradient checkpointing) from our checkpoints.
`register_auto_classes()` points "jetmoe" at our classes for the rest of the process; checkpoints are unchanged.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import JetMoEConfig
from .modeling import JetMoEForCausalLM, JetMoEModel


def register_auto_classes() -> None:
    """After this, `AutoConfig`, `AutoModel` and `AutoModelForCausalLM` give `JetMoEConfig`, `JetMoEModel` and
    `JetMoEForCausalLM` for any JetMoE checkpoint or config (`from_pretrained`, `from_config`)."""
    AutoConfig.register(JetMoEConfig.model_type, JetMoEConfig, exist_ok=True)
    AutoModel.register(JetMoEConfig, JetMoEModel, exist_ok=True)
    AutoModelForCausalLM.register(JetMoEConfig, JetMoEForCausalLM, exist_ok=True)
