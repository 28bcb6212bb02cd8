"""One PyTorch CPU thread while a GPU trains: the host's own tensor ops are small, and waking a thread pool for them
costs more than they do.

In a GPU training step the host issues kernels; its CPU tensor work is collating and planning the next batch (a few
thousand elements). PyTorch still runs some of those ops as OpenMP parallel regions, and between batches the pool's
threads go to sleep: such an op then waits for them to wake (`torch.repeat_interleave` over a batch's lengths: 2.6 ms
inside a training step under cProfile, 0.05 ms in a loop on its own). On the H200 machine (16 vCPUs), LoRA DPO at
8 pairs (`bench/bench_stages.py`, collate ms): the collation with our batch planning took 19.9 ms a step by median
(5.6-52 ms) with 16 threads, 6.4 ms (4.3-10 ms) with one, in a step the host paces (~0.4 s). torchrun gives each
process it starts one thread (`OMP_NUM_THREADS=1`) for the same reason; a single-process run gets one here too,
unless `OMP_NUM_THREADS` says otherwise. Runs under DeepSpeed or FSDP keep their threads: their engines may do CPU
work of their own (offloaded optimizer states).
"""

import contextlib
import logging
import os

import torch

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def host_threads_for(args):
    """Within the block, one intra-op thread when `args` (TrainingArguments) train on a GPU, without DeepSpeed or FSDP
    (ZeRO-Offload's CPU Adam runs on the same OpenMP threads), and the user set no `OMP_NUM_THREADS`."""
    threads = torch.get_num_threads()
    engine = args.deepspeed or args.fsdp
    if args.device.type != "cuda" or engine or "OMP_NUM_THREADS" in os.environ or threads == 1:
        yield
        return
    logger.info("training on %s: 1 PyTorch CPU thread (was %d; set OMP_NUM_THREADS to choose)", args.device, threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
