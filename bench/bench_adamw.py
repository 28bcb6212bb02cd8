"""One optimizer step over the parameters of JetMoE-8B's first `--layers` layers (bf16, what the full DPO bench
trains), torch's fused AdamW against ours (`align.training.adamw.TritonAdamW`), both given the gradient scale our
clipping sets, on a GPU.

    PYTHONPATH=. python bench/bench_adamw.py --layers 12

Times are medians of `triton.testing.do_bench` (CUDA events); GB/s counts what the update must move (parameter,
gradient and both moments read, parameter and moments written), not what a kernel moves beyond it.
"""

import argparse

import torch
from triton.testing import do_bench

import jetmoe_model  # noqa: F401  first: with PYTHONPATH=. (no install) it makes `jetmoe_kernels` importable
from align.training.adamw import TritonAdamW
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

MODEL_CONFIG = "align/assets/jetmoe-8b"


def parameter_shapes(layers: int) -> list[torch.Size]:
    config = JetMoEConfig.from_pretrained(MODEL_CONFIG, num_hidden_layers=layers)
    with torch.device("meta"):
        return [param.shape for param in JetMoEForCausalLM(config).parameters()]


def optimizer_step_ms(optimizer_cls, shapes) -> float:
    generator = torch.Generator(device="cuda").manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(shape, device="cuda", generator=generator, dtype=torch.bfloat16) * 0.02)
              for shape in shapes]  # fmt: skip
    for param in params:
        param.grad = torch.randn(param.shape, device="cuda", generator=generator, dtype=torch.bfloat16)
    optimizer = optimizer_cls(params, lr=1e-6, weight_decay=0.01, fused=True)
    optimizer.grad_scale = torch.tensor(2.0, device="cuda")
    return do_bench(optimizer.step, warmup=5, rep=100, return_mode="median")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    cli = parser.parse_args()
    shapes = parameter_shapes(cli.layers)
    count = sum(shape.numel() for shape in shapes)
    moved_gb = count * 2 * (4 + 3) / 1e9  # bf16: 4 tensors read, 3 written
    print(f"{len(shapes)} parameters, {count / 1e9:.2f} B elements, bf16; {torch.cuda.get_device_name()}")
    print("| optimizer | step ms | GB/s (update's bytes) |\n|---|---|---|")
    times = {}
    for name, cls in (("torch AdamW(fused=True)", torch.optim.AdamW), ("ours (TritonAdamW)", TritonAdamW)):
        times[name] = optimizer_step_ms(cls, shapes)
        print(f"| {name} | {times[name]:.2f} | {moved_gb / times[name] * 1e3:,.0f} |")
        torch.cuda.empty_cache()
    torch_ms, ours_ms = times.values()
    print(f"| ours / torch | **{torch_ms / ours_ms:.2f}x** | |")


if __name__ == "__main__":
    main()
