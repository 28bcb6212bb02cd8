"""A diverged run is stopped, not published: what counts as non-finite, and the error that ends the stage.

A NaN or infinite loss or gradient norm is looked for at every optimizer step, and the run stops before anything
from that step is logged or saved (`align.training.step_guard`); the weights themselves are checked before every
save, since an update with finite gradients can still overflow them (a learning rate of 1e38), and a model with a
NaN weight must never become a checkpoint a run resumes from, nor the stage's output."""

import math

import torch


class NonFiniteError(RuntimeError):
    """Training produced a NaN or infinite value; the message names the step and the value."""

    EXIT_STATUS = 3  # not a bad input (2), not a crash (1): the run diverged


def first_nonfinite(rows: list[list[float]], names: tuple[str, ...]) -> tuple[str, float] | None:
    """`rows`: one row of values per process, in the order of `names`. The first (name, value) that is not finite,
    names first (any process's loss before any gradient norm), or None."""
    for column, name in enumerate(names):
        for row in rows:
            if not math.isfinite(row[column]):
                return name, row[column]
    return None


def local_values(parameter: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds: a ZeRO-3 shard, an FSDP DTensor's local shard, or all of it."""
    shard = getattr(parameter, "ds_tensor", None)  # DeepSpeed ZeRO-3 keeps the real values here
    if shard is not None:
        return shard
    return parameter.to_local() if hasattr(parameter, "to_local") else parameter


def nonfinite_flags(model: torch.nn.Module) -> tuple[list[str], torch.Tensor]:
    """The names of `model`'s parameters, and a 0/1 float per parameter: 1 where this process's values of it hold
    a NaN or an infinity (to be summed over processes, each holding its own shards)."""
    names, flags = [], []
    for name, parameter in model.named_parameters():
        names.append(name)
        flags.append((~torch.isfinite(local_values(parameter).detach())).any())
    device = flags[0].device if flags else "cpu"
    return names, torch.stack(flags).float() if flags else torch.zeros(0, device=device)
