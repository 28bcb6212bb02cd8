"""The engines a saved model can answer with: "jetmoe" (our model and fast batched decoding) or "transformers"
(transformers' JetMoeForCausalLM and its generate). A constant of its own, down here, so that the settings types
that name an engine (`align.evaluation.settings`) check it without importing the engines themselves
(`align.inference.generate`), which read recipes."""

ENGINES = ("jetmoe", "transformers")
