"""Where MT-Bench is published, which `eval mt-bench` reads unless given local files: the questions as a hub
dataset, the judge prompts in FastChat's repository. A fetch that fails (offline, host unreachable, no such
dataset) ends in one `DataError` line saying what could not be fetched and how to use local copies instead."""

import logging
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from ..data import DataError

# FastChat's question.jsonl on the hub (its dataset card: `turns` renamed `prompt`, a hash of the turns as `prompt_id`).
QUESTIONS = "HuggingFaceH4/mt_bench_prompts"
# FastChat's judge prompts at a fixed commit, so every evaluation is judged with the same prompts.
JUDGE_PROMPTS = ("https://raw.githubusercontent.com/lm-sys/FastChat/0e6e7fdc78bf64aceea1508694ce4e6472810b8b/"
                 "fastchat/llm_judge/data/judge_prompts.jsonl")
LOCAL_COPIES = ("for local copies of FastChat's fastchat/llm_judge/data/mt_bench, pass --questions DIR/question.jsonl "
                "with judge_prompts.jsonl beside it (make eval MT_BENCH=DIR)")


def hub_rows(dataset_id: str, what: str) -> list[dict]:
    """The `train` split of a hub dataset."""
    from datasets import load_dataset

    try:
        with _retries_unlogged():
            return list(load_dataset(dataset_id, split="train"))
    except OSError as error:  # datasets and the hub client raise OSError subclasses for all of these
        raise DataError(dataset_id, f"could not fetch {what} from the hub ({_first_line(error)}); {LOCAL_COPIES}") from None


def fetch(url: str, destination: Path, what: str) -> Path:
    """`url` saved as `destination` (a record, beside the results, of what was used)."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            body = response.read()
    except OSError as error:  # URLError, time-outs and dropped connections alike
        raise DataError(url, f"could not fetch {what} ({_first_line(error)}); {LOCAL_COPIES}") from None
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(body)
    return destination


@contextmanager
def _retries_unlogged():
    """The hub client logs every retry of an unreachable host (five, over ~30 s); the failure is reported once."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
