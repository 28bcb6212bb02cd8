"""Batched generation at the JetMoE-8B shape, random bf16 weights (which never stop early, so every row decodes
every step), in one process: our decoder (`jetmoe_model.decoding`: preallocated cache, CUDA-graph steps) against
transformers' `generate` on transformers' `JetMoeForCausalLM` and on ours. 80 left-padded prompts of 40-400
tokens, greedy, `--new_tokens` new tokens each (issue 12's measurement).

`--mt-bench QUESTIONS` then times MT-Bench's whole answer generation through `align eval`'s code with our
decoder: 1024 new tokens a turn, `--mt-bench-batch` questions a batch (default 40, as `eval mt-bench`), the
categories' temperatures. The tokenizer is the project's tiny one (JetMoE's is on the hub), so that run's model
has its 1024-token vocabulary; its end-of-sequence token is switched off, so every answer is 1024 tokens (the
slowest case).

    PYTHONPATH=. python bench/bench_generate.py [--mt-bench ../shared/data/mt_bench/question.jsonl]   # GPU
    PYTHONPATH=. python bench/bench_generate.py --tiny --new_tokens 8                                 # CPU smoke
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch

import jetmoe_model  # noqa: F401  (first: it makes our kernels importable from a source checkout)
from align.evaluation.settings import MTBenchSettings
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM, decoding

CONFIG = "align/assets/jetmoe-8b"
TOKENIZER = "recipes/tiny/tokenizer"
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


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(generate, inputs: dict, new_tokens: int) -> tuple[float, torch.Tensor]:
    generate(inputs, 2)  # warm-up: kernels compiled, allocator primed
    synchronize()
    start = time.perf_counter()
    output = generate(inputs, new_tokens)
    synchronize()
    assert output.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return time.perf_counter() - start, output


def stock_generate(model):
    return lambda inputs, n: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)


def our_decoder(model):
    return lambda inputs, n: decoding.generate(model, inputs["input_ids"], inputs["attention_mask"], n)


def build(model_class, config, dtype, device):
    torch.manual_seed(0)
    with torch.device(device):
        return model_class._from_config(config, dtype=dtype).eval()


def mt_bench_answers(question_file: str, batch_size: int, config, dtype, device) -> None:
    """MT-Bench's 80 questions x 2 turns through `write_answers`, `batch_size` questions a batch, our decoder."""
    from transformers import AutoTokenizer

    from align.evaluation.answers import write_answers
    from align.evaluation.questions import load_questions
    from align.inference.generate import ChatModel

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER, padding_side="left")
    model = build(JetMoEForCausalLM, JetMoEConfig(**{**config.to_dict(), "vocab_size": len(tokenizer)}), dtype,
                  device)
    model.generation_config.eos_token_id = None  # random weights: every answer runs to max_new_tokens
    questions = load_questions(question_file)
    with tempfile.TemporaryDirectory() as out:
        answers = Path(out) / "answers.jsonl"
        synchronize()
        start = time.perf_counter()
        write_answers(ChatModel.of(model, tokenizer), questions, answers, "random-8b", max_new_tokens=1024,
                      batch_size=batch_size, progress=print)
        synchronize()
        seconds = time.perf_counter() - start
    new_tokens = len(questions) * 2 * 1024
    print(f"mt-bench answers, ours: {len(questions)} questions x 2 turns x 1024 new tokens, {batch_size} questions a "
          f"batch, in {seconds:.1f} s "
          f"({new_tokens / seconds:,.0f} new tokens/s, prefill included; peak "
          f"{torch.cuda.max_memory_allocated() / 2**30 if device == 'cuda' else 0:.1f} GiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=80)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--sides", default="decoder,ours-generate,transformers",
                        help="comma-separated: decoder (ours + jetmoe_model.decoding), ours-generate (ours + "
                             "transformers' generate), transformers (its JetMoeForCausalLM and generate)")
    parser.add_argument("--mt-bench", metavar="QUESTIONS", help="MT-Bench's question.jsonl: time its answers too")
    parser.add_argument("--mt-bench-batch", type=int, default=MTBenchSettings.batch_size,
                        help="questions a batch in the MT-Bench run (default: eval mt-bench's)")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], help="default: bfloat16 on a GPU, else float32")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape (CPU smoke run)")
    cli = parser.parse_args()

    from transformers import JetMoeConfig, JetMoeForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, cli.dtype or ("bfloat16" if device == "cuda" else "float32"))
    ours_config = JetMoEConfig(**TINY) if cli.tiny else JetMoEConfig.from_pretrained(CONFIG)
    stock_config = JetMoeConfig(**{key: value for key, value in ours_config.to_dict().items()
                                   if key not in ("moe_backend", "router_z_loss_coef", "padding_free")})
    inputs = prompts(cli.prompts, ours_config.vocab_size, torch.Generator().manual_seed(0), device)
    sides = {
        "decoder": (JetMoEForCausalLM, ours_config, our_decoder),
        "ours-generate": (JetMoEForCausalLM, ours_config, stock_generate),
        "transformers": (JetMoeForCausalLM, stock_config, stock_generate),
    }
    rates, outputs = {}, {}
    for name in cli.sides.split(","):
        model_class, config, generate = sides[name]
        model = build(model_class, config, dtype, device)
        seconds, outputs[name] = timed(generate(model), inputs, cli.new_tokens)
        rates[name] = cli.prompts * cli.new_tokens / seconds
        print(f"{name}: {seconds:.2f} s, {rates[name]:,.0f} new tokens/s, "
              f"{1000 * seconds / cli.new_tokens:.1f} ms a step (prefill included)")
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    if "transformers" in rates:
        for name in rates.keys() - {"transformers"}:
            print(f"{name} / transformers: {rates[name] / rates['transformers']:.2f}x "
                  f"({cli.prompts} prompts x {cli.new_tokens} new tokens, {device}, {dtype})")
    if {"decoder", "ours-generate"} <= outputs.keys():  # same weights: how far do the greedy answers agree?
        new = slice(inputs["input_ids"].shape[1], None)
        same = (outputs["decoder"][:, new] == outputs["ours-generate"][:, new]).int()
        agree = same.cumprod(1).sum(1).float()
        print(f"decoder vs ours-generate, greedy: identical rows {int((agree == cli.new_tokens).sum())}/"
              f"{cli.prompts}, tokens identical before the first difference: median {agree.median():.0f}")
        for name in ("decoder", "ours-generate"):
            print(f"  {name}, row 0: {outputs[name][0, new][:8].tolist()}")
    if cli.mt_bench:
        mt_bench_answers(cli.mt_bench, cli.mt_bench_batch, ours_config, dtype, device)


if __name__ == "__main__":
    main()
