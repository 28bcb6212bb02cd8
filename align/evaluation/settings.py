"""How MT-Bench is run: `eval mt-bench`'s options, and the `eval:` section of a pipeline recipe, which evaluates
the DPO output when the pipeline has trained it."""

from dataclasses import dataclass

from . import published


@dataclass
class MTBenchSettings:
    questions: str = published.QUESTIONS  # question.jsonl, or a hub dataset id
    judge_prompts: str | None = None  # a file or URL; default: beside a question file, else FastChat's published one
    reference_answers: str | None = None  # FastChat's reference_answer/gpt-4.jsonl
    judge_url: str | None = None  # an OpenAI-compatible API base; none: answers only
    judge_model: str = "gpt-4"
    judge_key_env: str = "OPENAI_API_KEY"
    judge_workers: int = 8
    max_new_tokens: int = 1024
    batch_size: int = 40  # memory grows with it: 80 (all) peaked at 78.5 GiB at the 8B shape
    engine: str = "jetmoe"  # or "transformers": its JetMoeForCausalLM and generate (align.generate.ENGINES)
    per_category: int | None = None  # the first N questions of each category only
    note: str = ""  # a line for the score table

    def __post_init__(self):
        from ..generate import ENGINES  # here: generate imports the recipe reader, which imports this module

        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")
