"""Compare multi-GPU runs of the tiny pipeline with the 1-GPU run, and load each final checkpoint in stock
transformers. Used by bench/multi_gpu_check.sh; prints one markdown row per config and stage.

    python bench/multi_gpu_compare.py RUNS_DIR REFERENCE CONFIG [CONFIG ...]

RUNS_DIR/NAME/{sft,dpo}/ are pipeline outputs; each NAME's per-step losses are compared with REFERENCE's.
"""

import json
import sys
from pathlib import Path


def step_losses(stage_dir: Path) -> list[float]:
    """Per-step training losses, from the trainer state of the last checkpoint."""
    checkpoint = max(stage_dir.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def stock_load(stage_dir: Path) -> str:
    """Load the consolidated checkpoint with transformers' own JetMoe class and tokenizer, and generate."""
    import torch
    from transformers import AutoTokenizer, JetMoeForCausalLM

    model = JetMoeForCausalLM.from_pretrained(stage_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(stage_dir)
    empty = [name for name, param in model.named_parameters() if param.numel() == 0]
    if empty:
        return f"empty tensors: {empty[:3]}"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    new_tokens = out.shape[1] - prompt["input_ids"].shape[1]
    return f"loads, {model.num_parameters() / 1e6:.2f}M params, generates {new_tokens} tokens"


def _show(losses: list[float]) -> str:
    return ", ".join(f"{loss:.5f}" for loss in losses)


def main(runs: Path, reference: str, configs: list[str]) -> None:
    print("| config | stage | step losses (1-GPU reference) | step losses (2 GPUs) | max rel. diff "
          "| stock transformers load |")
    print("|---|---|---|---|---|---|")
    for name in configs:
        for stage in ("sft", "dpo"):
            try:
                ref, got = step_losses(runs / reference / stage), step_losses(runs / name / stage)
                diff = max(abs(a - b) / abs(b) for a, b in zip(got, ref)) if len(got) == len(ref) else float("nan")
                loaded = stock_load(runs / name / stage)
            except Exception as error:  # a failed run is a row too: the table says what broke
                print(f"| {name} | {stage} | | | | FAILED: {type(error).__name__}: {str(error)[:200]} |")
                continue
            print(f"| {name} | {stage} | {_show(ref)} | {_show(got)} | {diff:.1e} | {loaded} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
