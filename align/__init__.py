"""jetmoe-align: turn a JetMoE base model into a chat model — recipes, data, chat template, SFT and DPO stages on
TRL, and the `python -m align` command line."""

import jetmoe_model  # noqa: F401  first: in an uninstalled source checkout it makes `jetmoe_kernels` importable
