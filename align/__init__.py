"""jetmoe-align: turn a JetMoE base model into a chat model — recipes, data, chat template, SFT and DPO stages on
TRL, and the `python -m align` command line.

Grouped by responsibility, each package importing only those listed below it, save that `config` reads the
settings types `lora.arguments` and `evaluation.settings` keep beside the code they configure (tests/test_layout.py
checks this, and that no import closes a circle):

    cli         the command line: commands, help, on top of everything
    evaluation  MT-Bench and lm-evaluation-harness on saved models
    training    the SFT and DPO stages, the pipeline, and what a training step needs
    inference   answering with a saved model (generate), merging an adapter (export)
    lora        LoRA on every projection, experts included
    runs        what keeps a run safe and visible: pre-flight check, lock, atomic files, checkpoints, logs, records
    model       the model and tokenizer a stage loads, the chat template
    config      the recipe's types and reader
    data        sources, formats, validation, mixing, prepared data
"""

import jetmoe_model  # noqa: F401  first: in an uninstalled source checkout it makes `jetmoe_kernels` importable
