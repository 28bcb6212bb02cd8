"""Where a forward+backward step of our JetMoE spends GPU time: torch.profiler's kernel table, grouped by name.

    PYTHONPATH=. python bench/profile_jetmoe.py --layers 4 --backend triton
"""

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, "bench")
from bench_jetmoe import JETMOE_8B, build  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--backend", default="triton")
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    model = build(args.backend, JETMOE_8B, args.layers).train()
    ids = torch.randint(0, JETMOE_8B["vocab_size"], (args.batch, args.seq), device="cuda")

    def step():
        model(ids, labels=ids).loss.backward()
        for param in model.parameters():
            param.grad = None

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
