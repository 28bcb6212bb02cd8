"""jetmoe-align: turn a JetMoE base model into a chat model — recipes, data, chat template, SFT and DPO stages on
TRL, and the `python -m align` command line."""
