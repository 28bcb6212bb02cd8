"""LoRA for JetMoE: every projection, experts included, in PEFT's adapter format.

    arguments       the recipe's `lora:` section
    config          -> PEFT `LoraConfig` (stock layout), with our expert and linear layers registered
    routed_experts  that layer: PEFT's `ParamWrapper` parameters, routed low-rank matmuls instead of `W + BA`
    linear          PEFT's `Linear` (kv_proj, lm_head) in the input's dtype, the update added by one matmul
    adapters        add fresh adapters to a model, load saved ones
    stage_support   a loadable base for the adapter, stock-loadable saved configs

May import: `align.model`, `align.runs` (`arguments` imports nothing of ours: the recipe reader, `align.config`,
reads it). Not the stages, inference, evaluation or the command line, which build on it.
"""
