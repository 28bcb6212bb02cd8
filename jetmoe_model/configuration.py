"""JetMoE configuration: transformers' `JetMoeConfig` fields, plus what training needs."""

from huggingface_hub.dataclasses import strict
from transformers import JetMoeConfig

MOE_BACKENDS = ("auto", "torch", "triton")

# Field names used by the original JetMoE release (github.com/myshell-ai/JetMoE) for the same settings.
_LEGACY_FIELDS = {"moe_num_experts": "num_local_experts", "moe_top_k": "num_experts_per_tok", "num_layers": "num_hidden_layers"}


@strict
class JetMoEConfig(JetMoeConfig):
    """Same fields, defaults and `model_type` ("jetmoe") as transformers' `JetMoeConfig`, so a `config.json`
    goes both ways. Added:

    router_z_loss_coef: weight of the router z-loss (JetMoE report: 0.001); `aux_loss_coef` (0.01) weights the
        load-balancing loss. Both are added to the training loss when `output_router_logits` is on.
    moe_backend: "torch" (the PyTorch reference), "triton" (our kernels: experts, RMSNorm, rotary) or "auto"
        (Triton on CUDA).
    padding_free: forwards without a KV cache (training, scoring) compute only the real tokens of a padded batch,
        and keep the sequences of a packed row apart by their boundaries (`jetmoe_model.packing`).
    share_pair_prefix: with `padding_free`, a forward given DPO's preference pairs (`preference_pairs=True`, as our
        DPO trainer passes) computes each pair's prompt once for both responses (`jetmoe_model.pair_packing`).
    """

    router_z_loss_coef: float = 0.001
    moe_backend: str = "auto"
    padding_free: bool = True
    share_pair_prefix: bool = True

    def __post_init__(self, **kwargs):
        for legacy, field in _LEGACY_FIELDS.items():
            if legacy in kwargs:
                setattr(self, field, kwargs.pop(legacy))
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        super().validate_architecture()
        if self.moe_backend not in MOE_BACKENDS:
            raise ValueError(f"moe_backend={self.moe_backend!r}: expected one of {MOE_BACKENDS}")
