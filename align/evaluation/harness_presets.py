"""The benchmarks of JetMoE-8B's model card, as lm-evaluation-harness tasks with the card's shots and metrics, and
the card's published numbers (percent), which the harness table puts beside ours. The card follows the Open LLM
Leaderboard (v1) methodology; GSM8k's answers are read from "#### N" as that leaderboard did (lm-eval's
`strict-match` filter)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    label: str  # as the model card names it
    num_fewshot: int
    metric: str  # the key in lm-eval's results: "metric,filter"
    published: float  # JetMoE-8B on the model card, percent


# Keyed by lm-eval's task (or group) name: `--tasks mmlu` runs it 5-shot, as the card did.
PRESETS = {
    "arc_challenge": Preset("ARC-challenge", 25, "acc_norm,none", 48.7),
    "hellaswag": Preset("HellaSwag", 10, "acc_norm,none", 80.5),
    "mmlu": Preset("MMLU", 5, "acc,none", 49.2),
    "truthfulqa_mc2": Preset("TruthfulQA (mc2)", 0, "acc,none", 41.7),
    "winogrande": Preset("WinoGrande", 5, "acc,none", 70.2),
    "gsm8k": Preset("GSM8k", 5, "exact_match,strict-match", 27.8),
}
MODEL_CARD = "model_card"  # all six
PUBLISHED_AVERAGE = 53.0  # the card's "Open LLM Leaderboard Average" of the six


def expand(names: list[str]) -> list[str]:
    """Task names as given, `model_card` replaced by the six, each once, in order."""
    tasks = []
    for name in names:
        for task in PRESETS if name == MODEL_CARD else [name]:
            if task not in tasks:
                tasks.append(task)
    return tasks
