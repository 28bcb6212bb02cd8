"""Run `python -m align ...` and SIGKILL the process at a chosen point, as a pre-emption or OOM kill would, or
send it SIGTERM, as a scheduler does first.

    python tests/kill_at.py step N -- sft RECIPE ...   killed as step N+1 begins (checkpoint-N is complete)
    python tests/kill_at.py save N -- sft RECIPE ...   killed inside the save of checkpoint-N (weights written,
                                                       trainer state not yet)
    python tests/kill_at.py term N -- sft RECIPE ...   SIGTERM as step N begins (the run saves checkpoint-N), to
                                                       the last process of a launch only
    python tests/kill_at.py engine-save N -- ...       under DeepSpeed, every rank killed inside the engine's own
                                                       save of checkpoint-N (model states written, optimizer
                                                       shards and `latest` not yet)
Used by tests/test_crash_safety.py, tests/test_multiprocess.py and tests/test_sigterm.py; the kill points are
patched in here, none lives in the package.
"""

import os
import signal
import sys

from transformers import Trainer


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_when(point: str, step: int) -> None:
    if point == "term":
        training_step = Trainer.training_step

        def training_step_after_sigterm(self, *args, **kwargs):
            last = self.accelerator.process_index == self.accelerator.num_processes - 1
            if last and self.state.global_step == step - 1 and not getattr(self, "_sigterm_sent", False):
                self._sigterm_sent = True
                os.kill(os.getpid(), signal.SIGTERM)
            return training_step(self, *args, **kwargs)

        Trainer.training_step = training_step_after_sigterm
    elif point == "step":
        training_step = Trainer.training_step

        def training_step_then_kill(self, *args, **kwargs):
            if self.state.global_step == step:
                kill()
            return training_step(self, *args, **kwargs)

        Trainer.training_step = training_step_then_kill
    elif point == "engine-save":
        from deepspeed import DeepSpeedEngine

        save_zero_checkpoint = DeepSpeedEngine._save_zero_checkpoint

        def kill_in_engine_save(self, save_dir, tag):
            if tag == f"global_step{step}":
                kill()
            return save_zero_checkpoint(self, save_dir, tag)

        DeepSpeedEngine._save_zero_checkpoint = kill_in_engine_save
    else:
        save_rng_state = Trainer._save_rng_state

        def save_rng_state_then_kill(self, output_dir):
            if self.state.global_step == step:
                kill()
            return save_rng_state(self, output_dir)

        Trainer._save_rng_state = save_rng_state_then_kill


if __name__ == "__main__":
    point, step, separator, *argv = sys.argv[1:]
    assert point in ("step", "save", "engine-save", "term") and separator == "--", sys.argv
    kill_when(point, int(step))
    from align.cli import main

    sys.exit(main(argv))
