"""How MT-Bench is run: `eval mt-bench`'s options, and the `eval:` section of a pipeline recipe, which evaluates
the DPO output when the pipeline has trained it."""

from dataclasses import dataclass

from ..config.engines import ENGINES
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
    engine: str = "jetmoe"  # or "transformers": its JetMoeForCausalLM and generate (align.config.engines)
    per_category: int | None = None  # the first N questions of each category only
    note: str = ""  # a line for the score table

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be at least 1")


@dataclass
class HarnessSettings:
    """`eval harness`'s options (lm-eval's names), and the `harness:` part of a pipeline recipe's `eval:` section."""

    tasks: list[str]  # lm-eval task or group names, presets (harness_presets) or `model_card` for all six
    num_fewshot: int | None = None  # default: a preset's shots, else the task's own
    include_path: str | None = None  # a directory of task YAMLs (lm-eval's --include_path)
    limit: float | None = None  # documents per task: a count, or a fraction below 1 (a quick look, not a score)
    batch_size: int | str = 32  # requests a batch, or "auto"; ours packs a batch into one row of at most max_batch_tokens
    max_batch_tokens: int = 32768  # engine jetmoe: tokens of one packed forward
    engine: str = "jetmoe"  # or "transformers": lm-eval's own `hf` model on transformers' JetMoeForCausalLM
    device: str | None = None  # default: cuda where there is one
    log_samples: bool = False  # also write lm-eval's per-document samples

    def __post_init__(self):
        if isinstance(self.tasks, str):
            self.tasks = [name.strip() for name in self.tasks.split(",") if name.strip()]
        if not self.tasks:
            raise ValueError("tasks: name at least one lm-eval task or preset (e.g. model_card)")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        self.batch_size = str(self.batch_size)
        if not (self.batch_size.isdigit() and int(self.batch_size) > 0 or self.batch_size.startswith("auto")):
            raise ValueError(f"batch_size {self.batch_size!r}: a positive number or auto")
        if self.num_fewshot is not None and self.num_fewshot < 0 or self.limit is not None and self.limit <= 0:
            raise ValueError("num_fewshot must be 0 or more, limit above 0")
        if self.max_batch_tokens < 1:
            raise ValueError("max_batch_tokens must be at least 1")


@dataclass
class PipelineEval:
    """A pipeline recipe's `eval:` section: what runs once the pipeline has trained its DPO output."""

    mt_bench: MTBenchSettings | None = None  # on the DPO output
    harness: HarnessSettings | None = None  # on the SFT's pretrained base (when it has one), SFT and DPO outputs
