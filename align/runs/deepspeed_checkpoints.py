"""DeepSpeed's own files in a `checkpoint-N`: what a complete one holds.

Under DeepSpeed the trainer's checkpoint holds, beside our files, the engine's: `global_stepK/` with each rank's
shards (ZeRO-3: `zero_pp_rank_R_mp_rank_00_model_states.pt` and `..._optim_states.pt` per rank; ZeRO-1/2 one
`mp_rank_00_model_states.pt` and an optimizer shard per rank) and `latest`, which names `global_stepK` and is
written last. DeepSpeed writes them into the directory transformers gives it, which is our staging directory
(`align.runs.crash_safe`), so a save cut short is never published; this check catches the rest (a copy cut short, a
shard lost), naming the file, so that resuming falls back to an older checkpoint instead of failing in DeepSpeed.
"""

import re
import zipfile
from pathlib import Path

RANK_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_(model|optim)_states\.pt$")
RNG_STATE = re.compile(r"^rng_state(?:_(\d+))?\.pth$")  # one per process: the number of ranks that saved


def is_deepspeed_checkpoint(path: Path) -> bool:
    return (path / "latest").exists() or any(path.glob("global_step*"))


def deepspeed_problem(path: Path) -> str | None:
    """What is missing or damaged among DeepSpeed's files of checkpoint `path`, or None when they are complete."""
    latest = path / "latest"
    if not latest.is_file():
        return f"{latest}: missing (DeepSpeed's save was cut short)"
    tag = latest.read_text().strip()
    shards_dir = path / tag
    if not tag or not shards_dir.is_dir():
        return f"{latest}: names {tag!r}, which is not a directory of the checkpoint"
    files = sorted(shards_dir.glob("*.pt"))
    if not any(file.name.endswith("model_states.pt") for file in files):
        return f"{shards_dir}: no model states (*model_states.pt)"
    for file in files:
        if not zipfile.is_zipfile(file):  # torch.save writes a zip archive, whose directory is at its end
            return f"{file}: not a complete torch file (cut short while being written or copied?)"
    shard_ranks = {"model": set(), "optim": set()}  # per-rank shards (ZeRO-1/2 keep one model file for all)
    for file in files:
        if shard := RANK_SHARD.search(file.name):
            shard_ranks[shard.group(2)].add(int(shard.group(1)))
    ranks = max([sum(1 for file in path.iterdir() if RNG_STATE.match(file.name)),
                 *(max(found) + 1 for found in shard_ranks.values() if found)])
    for kind, found in shard_ranks.items():
        missing = sorted(set(range(ranks)) - found) if found else []
        if missing:
            return f"{shards_dir}: no {kind} states of rank {missing[0]} (of {ranks} ranks)"
    return None
