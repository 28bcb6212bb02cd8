"""Run `python -m align ...` with the training loss made NaN at chosen optimizer steps, as a diverging run's is,
on every process or on one of a launch:

    python tests/nan_at.py 2,4 -- sft RECIPE ...          NaN loss (and so NaN gradients) at steps 2 and 4
    python tests/nan_at.py 2 --rank 1 -- sft RECIPE ...   on process 1 only (under `accelerate launch`)

In-process: `monkeypatch.setattr(RouterLossMixin, "compute_loss", nan_loss_at({2, 4}))`. Used by
tests/test_nonfinite.py; the fault is patched in here, none lives in the package.
"""

import math
import sys

from align.training.router_loss import RouterLossMixin

compute_loss = RouterLossMixin.compute_loss


def nan_loss_at(steps: set[int], rank: int | None = None):
    """`RouterLossMixin.compute_loss` whose training loss is NaN at optimizer steps `steps` (1-based)."""

    def compute_loss_nan_at(self, model, inputs, return_outputs=False, **kwargs):
        result = compute_loss(self, model, inputs, return_outputs=return_outputs, **kwargs)
        hit = self.model.training and self.state.global_step + 1 in steps
        if not hit or rank not in (None, self.accelerator.process_index):
            return result
        if return_outputs:
            return result[0] * math.nan, result[1]
        return result * math.nan

    return compute_loss_nan_at


if __name__ == "__main__":
    steps, *options, separator = sys.argv[1:sys.argv.index("--") + 1]
    assert separator == "--" and (not options or len(options) == 2 and options[0] == "--rank"), sys.argv
    RouterLossMixin.compute_loss = nan_loss_at({int(step) for step in steps.split(",")},
                                               int(options[1]) if options else None)
    from align.cli import main

    sys.exit(main(sys.argv[sys.argv.index("--") + 1:]))
