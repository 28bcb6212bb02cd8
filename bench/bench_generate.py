"""Batched greedy generation, ours against transformers' `JetMoeForCausalLM` in the same process: the decoding
MT-Bench answers need (issue 12). 80 left-padded prompts of 40-400 tokens, `--new_tokens` new tokens each,
random bf16 weights of the JetMoE-8B shape (random weights never stop early, so every row decodes every step).

    PYTHONPATH=. python bench/bench_generate.py                  # GPU: the 8B shape
    PYTHONPATH=. python bench/bench_generate.py --tiny           # CPU smoke run
"""

import argparse
import time

import torch

import jetmoe_model  # noqa: F401  (first: it makes our kernels importable from a source checkout)
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

CONFIG = "align/assets/jetmoe-8b"
TINY = dict(hidden_size=64, num_hidden_layers=2, num_key_value_heads=2, kv_channels=16, intermediate_size=128,
            num_local_experts=4, num_experts_per_tok=2, vocab_size=1024)


def prompts(count: int, vocab: int, generator: torch.Generator, device) -> dict:
    lengths = torch.randint(40, 401, (count,), generator=generator).tolist()
    width = max(lengths)
    ids = torch.zeros(count, width, dtype=torch.long)
    mask = torch.zeros(count, width, dtype=torch.long)
    for row, length in enumerate(lengths):  # left padding: every prompt ends where its answer starts
        ids[row, width - length:] = torch.randint(3, vocab, (length,), generator=generator)
        mask[row, width - length:] = 1
    return dict(input_ids=ids.to(device), attention_mask=mask.to(device))


def time_generate(model, inputs: dict, new_tokens: int) -> float:
    model.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)  # warm-up: kernels, allocator
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    assert output.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=80)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="a tiny shape (CPU smoke run)")
    cli = parser.parse_args()

    from transformers import JetMoeConfig, JetMoeForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    ours_config = JetMoEConfig(**TINY) if cli.tiny else JetMoEConfig.from_pretrained(CONFIG)
    stock_config = JetMoeConfig(**{key: value for key, value in ours_config.to_dict().items()
                                   if key not in ("moe_backend", "router_z_loss_coef", "padding_free")})
    inputs = prompts(cli.prompts, ours_config.vocab_size, torch.Generator().manual_seed(0), device)
    results = {}
    for name, build in (("ours", lambda: JetMoEForCausalLM._from_config(ours_config, dtype=dtype)),
                        ("transformers", lambda: JetMoeForCausalLM._from_config(stock_config, dtype=dtype))):
        torch.manual_seed(0)
        with torch.device(device):
            model = build().eval()
        seconds = time_generate(model, inputs, cli.new_tokens)
        results[name] = cli.prompts * cli.new_tokens / seconds
        print(f"{name}: {seconds:.1f} s, {results[name]:,.0f} new tokens/s")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"ours / transformers: {results['ours'] / results['transformers']:.2f}x "
          f"({cli.prompts} prompts x {cli.new_tokens} new tokens, {device})")


if __name__ == "__main__":
    main()
