"""Where padding-free time goes, at the model level: forward+backward of our JetMoE on variable-length batches,
padded (`padding_free=False`: SDPA with a padding mask) against unpadded inside the model (`padding_free=True`) and
against one row packed as TRL's padding-free collator lays it out. Prints real (non-pad) tokens/s, the median and
worst step after warm-up, and how many Triton kernels were compiled during the timed steps (each a stall).

    PYTHONPATH=. python bench/bench_padding_free.py --layers 24 --rows 8 --steps 12

Lengths are drawn from a lognormal with the SFT mixture's median 617 and sigma 0.78 (mean ~840 tokens), capped at
`--max_length`; the end-to-end stage benchmark (`bench/bench_stages.py`) is the result that counts.
"""

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cache-")  # empty: every compile of this run counts

import torch  # noqa: E402

from jetmoe_model import JetMoEConfig, JetMoEForCausalLM  # noqa: E402

CONFIG = "align/assets/jetmoe-8b"


def lengths_for_step(generator: torch.Generator, rows: int, max_length: int) -> list[int]:
    draws = torch.empty(rows).log_normal_(math.log(617), 0.78, generator=generator)
    return [max(8, min(max_length, int(n))) for n in draws]


def padded_batch(lengths: list[int], vocab: int, device) -> dict:
    width = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), width), device=device)
    mask = (torch.arange(width, device=device)[None] < torch.tensor(lengths, device=device)[:, None]).long()
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))


def packed_row(lengths: list[int], vocab: int, device) -> dict:
    ids = torch.randint(3, vocab, (1, sum(lengths)), device=device)
    positions = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
    return dict(input_ids=ids, position_ids=positions, labels=ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                max_length_q=max(lengths), max_length_k=max(lengths))


def compiled_kernels() -> int:
    """Entries of this run's own Triton cache: each new one is a compilation (a stall when it happens mid-training)."""
    cache = Path(os.environ["TRITON_CACHE_DIR"])
    return len(list(cache.iterdir())) if cache.is_dir() else 0


def run(model, make_batch, step_lengths, warmup: int) -> dict:
    times, before_timed = [], None
    for step, lengths in enumerate(step_lengths):
        if step == warmup:
            before_timed = compiled_kernels()
        batch = make_batch(lengths)
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(**batch, use_cache=False).loss.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = times[warmup:]
    real = sum(sum(lengths) for lengths in step_lengths[warmup:])
    median = statistics.median(timed)
    return dict(real_tok_s=real / sum(timed), median_s=median, worst_s=max(timed),
                worst_over_median=max(timed) / median, compiles_while_timed=compiled_kernels() - before_timed,
                peak_gib=torch.cuda.max_memory_allocated() / 2**30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--max_length", type=int, default=2048)
    cli = parser.parse_args()

    config = JetMoEConfig.from_pretrained(CONFIG, num_hidden_layers=cli.layers, moe_backend="triton")
    with torch.device("cuda"):
        model = JetMoEForCausalLM._from_config(config, dtype=torch.bfloat16).train()
    model.requires_grad_(False)
    for module in model.modules():  # train the expert projections and kv: a LoRA-like backward without optimizer
        if hasattr(module, "kv_proj"):
            module.kv_proj.weight.requires_grad_(True)
    model.model.embed_tokens.weight.requires_grad_(True)

    generator = torch.Generator().manual_seed(0)
    step_lengths = [lengths_for_step(generator, cli.rows, cli.max_length) for _ in range(cli.steps)]
    real = sum(map(sum, step_lengths))
    padded = sum(len(lengths) * max(lengths) for lengths in step_lengths)
    print(f"{cli.steps} steps of {cli.rows} rows; padding in a padded batch: {1 - real / padded:.1%}")
    vocab = config.vocab_size
    modes = {
        "padded (padding_free=False)": (False, lambda lengths: padded_batch(lengths, vocab, "cuda")),
        "unpadded in the model": (True, lambda lengths: padded_batch(lengths, vocab, "cuda")),
        "packed row (TRL padding-free collator)": (True, lambda lengths: packed_row(lengths, vocab, "cuda")),
    }
    print("| mode | real tok/s | median step s | worst step s | worst/median | compiles while timed | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for name, (padding_free, make_batch) in modes.items():
        model.config.padding_free = padding_free
        torch.cuda.reset_peak_memory_stats()
        result = run(model, make_batch, step_lengths, cli.warmup)
        print(f"| {name} | {result['real_tok_s']:,.0f} | {result['median_s']:.3f} | {result['worst_s']:.3f} | "
              f"{result['worst_over_median']:.2f} | {result['compiles_while_timed']} | {result['peak_gib']:.1f} |")


if __name__ == "__main__":
    main()
