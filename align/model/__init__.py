"""The model and tokenizer a stage or a saved-model command works on (the model itself is `jetmoe_model`).

    model_loading  our `JetMoEForCausalLM` built as a recipe says: a checkpoint, or a seeded random init
    tokenizer      a recipe's tokenizer with the chat template set; the tiny tokenizer we ship
    chat_template  JetMoE-8B-Chat's chat format (Zephyr style), with the markers TRL trains on

May import: `align.config` (and `jetmoe_model`). Nothing of the stages, runs or commands above it.
"""
