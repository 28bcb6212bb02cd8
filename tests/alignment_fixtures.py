"""Small things the alignment tests share: a tokenizer built on a synthetic corpus, a tiny JetMoE, TRL args."""

from align.config.recipes import ModelArgs
from align.model.model_loading import build_model
from align.model.tokenizer import build_tokenizer

TINY_MODEL = dict(hidden_size=64, num_hidden_layers=2, num_key_value_heads=2, kv_channels=16, intermediate_size=128,
                  num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=128)

# What every CPU test run of a TRL trainer needs: no bf16, no checkpointing, no files beyond output_dir, no reports.
QUIET_ARGS = dict(bf16=False, use_cpu=True, activation_checkpointing=False, report_to="none", save_strategy="no",
                  disable_tqdm=True, logging_steps=5, seed=0)


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def tokenizer_for(texts: list[str], vocab_size: int = 320):
    return build_tokenizer(texts, vocab_size=vocab_size)


def tiny_model(tokenizer, seed: int = 0):
    return build_model(ModelArgs(init="random", config=TINY_MODEL, moe_backend="torch"), tokenizer, seed=seed)
