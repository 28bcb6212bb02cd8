"""Host time of the module walks a LoRA DPO step's libraries make, at JetMoE-8B's shape, on any CPU.

A walk visits every module of the model (~1,600 for JetMoE-8B with the LoRA recipe's targets): TRL's reference pass
unwrapped the model twice a step (`is_peft_model`, `Accelerator.unwrap_model`; ours finds the PEFT model once, issue
23), and transformers' training step calls `model.train()` and `model.zero_grad()` (ours make them without a walk
while nothing changed: `align/training/module_walks.py`, the last two rows). The model is built on the meta device:
walks do not touch weights.

    PYTHONPATH=. python bench/bench_host_walks.py
"""

import argparse
import time

import torch
from accelerate import Accelerator
from accelerate.utils import is_peft_model

from align.lora.adapters import add_lora
from align.lora.arguments import LoraArguments
from align.training.module_walks import quicken_module_walks
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

JETMOE_8B = dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, intermediate_size=5632,
                 num_local_experts=8, num_experts_per_tok=2, kv_channels=128, num_key_value_heads=16)  # fmt: skip
LORA_TARGETS = ["kv_proj", "experts.input_linear", "experts.output_linear", "mlp.input_linear", "mlp.output_linear"]


def milliseconds_a_call(call, repeats: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    with torch.device("meta"):
        model = JetMoEForCausalLM(JetMoEConfig(**JETMOE_8B))
    model = add_lora(model, LoraArguments(r=64, alpha=128, dropout=0.05, targets=LORA_TARGETS))
    accelerator = Accelerator(cpu=True)
    print(f"JetMoE-8B with LoRA on {', '.join(LORA_TARGETS)}: {sum(1 for _ in model.modules())} modules")
    print("| walk | ms a call |\n|---|---|")
    for name, call in [("is_peft_model(model)", lambda: is_peft_model(model)),
                       ("accelerator.unwrap_model(model)", lambda: accelerator.unwrap_model(model)),
                       ("model.train()", model.train), ("model.zero_grad()", model.zero_grad)]:  # fmt: skip
        print(f"| `{name}` | {milliseconds_a_call(call, args.repeats):.2f} |")
    quicken_module_walks(model)
    for name, call in [("model.train()", model.train), ("model.zero_grad()", model.zero_grad)]:
        print(f"| `{name}`, ours | {milliseconds_a_call(call, args.repeats):.3f} |")


if __name__ == "__main__":
    main()
