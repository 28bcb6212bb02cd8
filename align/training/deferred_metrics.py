"""Training metrics kept on the GPU until they are logged.

TRL's trainers collect each step's metrics as Python floats in `self._metrics[mode][name]` lists and average them
when they log. Making a float of a GPU value (`.item()`) waits for the GPU to finish everything queued before it:
in a host-paced DPO step that wait falls between the policy forward and the backward, and the GPU then idles while
the host issues the backward's first kernels. Our losses append 0-d tensors to the same lists instead; this mixin
turns them into floats when the trainer logs (every `logging_steps`, and for evaluation), where a wait costs nothing
that matters.
"""

import torch


def as_numbers(values: list) -> list:
    """`values` with each tensor replaced by its Python number (an int stays an int, as TRL logs token counts)."""
    return [value.item() if isinstance(value, torch.Tensor) else value for value in values]


class DeferredMetricsMixin:
    """Mix in before a TRL trainer whose `_metrics` lists may hold tensors; `log` sees only numbers."""

    def log(self, logs: dict, *args, **kwargs) -> None:
        for per_mode in self._metrics.values():
            for name, values in per_mode.items():
                per_mode[name] = as_numbers(values)
        super().log(logs, *args, **kwargs)
