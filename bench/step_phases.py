"""When the host finishes issuing each phase of a training step, and when the GPU finishes running it.

A step is host-bound where the GPU finishes a phase right after the host issued it (the GPU waited for work), and
GPU-bound where the GPU finishes well after. Marks: step begin (data already fetched), each model forward's start
and end (`policy` with autograd, `reference` without), backward start and end, optimizer step start and end, step
end; each as host time and as GPU time (a CUDA event), both from the step's begin, which follows a synchronise.
Python's garbage collection time within the step is counted too.

    timer = attach_phase_timer(trainer)   # then trainer.train(); timer.table(warmup) -> markdown
"""

import gc
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


class PhaseTimer(TrainerCallback):
    def __init__(self):
        self.marks, self.steps, self.gc_started, self.gc_seconds = None, [], None, 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase, info):
        if phase == "start":
            self.gc_started = time.perf_counter()
        elif self.gc_started is not None:
            self.gc_seconds += time.perf_counter() - self.gc_started
            self.gc_started = None

    def mark(self, name: str) -> None:
        if self.marks is None:
            return
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        self.marks.append((name, time.perf_counter(), event))

    def on_step_begin(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.marks, self.gc_seconds = [], 0.0
        self.mark("step begin")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.mark("optimizer start")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.mark("optimizer end")

    def on_step_end(self, args, state, control, **kwargs):
        self.mark("step end")
        torch.cuda.synchronize()
        _, host0, event0 = self.marks[0]
        self.steps.append({"gc_ms": 1e3 * self.gc_seconds, "marks": [
            (name, 1e3 * (host - host0), event0.elapsed_time(event)) for name, host, event in self.marks]})
        self.marks = None

    def table(self, warmup: int) -> str:
        """Median host and GPU time of each mark over the steps after `warmup` (marks by their order in a step)."""
        timed = self.steps[warmup:] or self.steps
        rows = ["| mark | host ms | GPU ms | GPU - host ms |", "|---|---|---|---|"]
        names = [name for name, _, _ in timed[0]["marks"]]
        for index, name in enumerate(names):
            found = [step["marks"][index] for step in timed if len(step["marks"]) > index]
            host = statistics.median(mark[1] for mark in found)
            device = statistics.median(mark[2] for mark in found)
            rows.append(f"| {name} | {host:.1f} | {device:.1f} | {device - host:+.1f} |")
        rows.append(f"| python gc in the step | {statistics.median(s['gc_ms'] for s in timed):.1f} | | |")
        return "\n".join(rows)


def attach_phase_timer(trainer) -> PhaseTimer:
    timer = PhaseTimer()
    model = trainer.accelerator.unwrap_model(trainer.model)
    core = model.get_base_model() if hasattr(model, "get_base_model") else model

    def before(module, args, kwargs):
        timer.mark(("policy" if torch.is_grad_enabled() else "reference") + " forward start")

    def after(module, args, kwargs, output):
        timer.mark(("policy" if torch.is_grad_enabled() else "reference") + " forward end")

    core.register_forward_pre_hook(before, with_kwargs=True)
    core.register_forward_hook(after, with_kwargs=True)
    backward = trainer.accelerator.backward

    def timed_backward(loss, **kwargs):
        timer.mark("backward start")
        backward(loss, **kwargs)
        timer.mark("backward end")

    trainer.accelerator.backward = timed_backward
    trainer.add_callback(timer)
    return timer


class StackSampler(TrainerCallback):
    """Where the host's Python time goes over `steps` steps after `first`: every thread's stack sampled every
    half millisecond from another thread (no tracing overhead on the sampled code, unlike cProfile), counted per
    function, as the innermost frame (self) and anywhere on the stack (inclusive)."""

    def __init__(self, path: str, first: int, steps: int):
        self.path, self.first, self.steps = path, first, steps
        self.self_counts, self.inclusive, self.samples, self.running = {}, {}, 0, False

    def _sample(self, main_id: int) -> None:
        own_id = threading.get_ident()
        while self.running:
            for thread_id, frame in sys._current_frames().items():
                if thread_id != own_id:
                    self._count(frame, "" if thread_id == main_id else "[other thread] ")
            self.samples += 1
            time.sleep(0.0005)

    def _count(self, frame, label: str) -> None:
        """One sample of one thread's stack. Backward's Python (custom autograd functions, hooks) runs on autograd's
        device thread, not the main one, hence every thread, the others' frames labelled."""
        seen = set()
        innermost = True
        while frame is not None:
            code = frame.f_code
            name = f"{label}{code.co_filename.split('site-packages/')[-1]}:{code.co_firstlineno}({code.co_name})"
            if innermost:  # by line: which call of the function the time is in
                line = f"{name.split('(')[0].rsplit(':', 1)[0]}:{frame.f_lineno}({code.co_name})"
                self.self_counts[line] = self.self_counts.get(line, 0) + 1
                innermost = False
            if name not in seen:
                seen.add(name)
                self.inclusive[name] = self.inclusive.get(name, 0) + 1
            frame = frame.f_back

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.first and not self.running:
            self.running = True
            sys.setswitchinterval(0.0005)
            self.thread = threading.Thread(target=self._sample, args=(threading.get_ident(),), daemon=True)
            self.thread.start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.running and state.global_step == self.first + self.steps:
            self.running = False
            self.thread.join()
            lines = [f"{self.samples} samples over {self.steps} steps", "", "self:"]
            for name, count in sorted(self.self_counts.items(), key=lambda item: -item[1])[:60]:
                lines.append(f"{100 * count / self.samples:6.1f}%  {name}")
            lines += ["", "inclusive:"]
            for name, count in sorted(self.inclusive.items(), key=lambda item: -item[1])[:120]:
                lines.append(f"{100 * count / self.samples:6.1f}%  {name}")
            Path(self.path).write_text("\n".join(lines), encoding="utf-8")
