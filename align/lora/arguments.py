"""A recipe's `lora:` section: what gets LoRA and how. Plain data (no PEFT import), so recipes parse fast.

Targets are named as the model names its modules.
"""

from dataclasses import dataclass, field

EXPERT_PROJECTIONS = {
    "experts.input_linear": "MoA query experts",
    "experts.output_linear": "MoA output experts",
    "mlp.input_linear": "MLP GLU input experts",
    "mlp.output_linear": "MLP output experts",
}
MODULE_TARGETS = {
    "kv_proj": "attention's shared key/value projection",
    "lm_head": "output embedding",
    "embed_tokens": "input embedding",
}
DEFAULT_TARGETS = ("kv_proj", *EXPERT_PROJECTIONS)


@dataclass
class LoraArguments:
    """A recipe's `lora:` section; its presence turns LoRA on. Names follow PEFT's `LoraConfig` where they exist.

    targets: what gets a LoRA pair (each expert its own); see `EXPERT_PROJECTIONS` and `MODULE_TARGETS`.
    modules_to_save: modules trained in full and saved with the adapter (PEFT's `modules_to_save`).
    train_routers: train the MoA and MLP routers in full; off, they stay frozen as in the base model.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    modules_to_save: list[str] = field(default_factory=list)
    train_routers: bool = False
    use_rslora: bool = False

    def __post_init__(self):
        known = {**MODULE_TARGETS, **EXPERT_PROJECTIONS}
        unknown = [name for name in self.targets if name not in known]
        if unknown:
            raise ValueError(f"lora.targets: unknown target(s) {unknown}; JetMoE LoRA targets are: {', '.join(known)}")
        if self.r <= 0:
            raise ValueError(f"lora.r must be positive, got {self.r}")
