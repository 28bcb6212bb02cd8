"""`eval harness`'s loglikelihood scoring at the JetMoE-8B shape (random bf16 weights): our engine
(`align.evaluation.harness_lm.JetMoEAlignLM`: packed rows, vocabulary projection only where scored, Triton
experts) against lm-eval's stock `hf` model (`HFLM`) on transformers' `JetMoeForCausalLM`, the same weights (shared
tensors), the same requests, in one process (issue 25).

The requests are MMLU's shape: `--questions` questions (MMLU's test set has 14,042; the default is a subset that
keeps both engines within a few minutes on one H200), each a 5-shot prompt of synthetic tokens whose length is
drawn around MMLU's (with Llama's tokenizer most 5-shot prompts run 400-900 tokens, a few long-passage subjects up
to ~2,000: here log-normal, median 560, clipped to 250-2,048), and 4 one-token continuations (" A" .. " D"). Both
engines get the requests as lm-eval hands them to the model (`_loglikelihood_tokens`: tokenised context and
continuation), so tokenisation, identical in both, is left out; both compute a question's 4 choices in one forward
(lm-eval's one-token-continuation grouping). Timed after a warm-up on other questions. Prints time, requests/s,
the ratio, and how often the two pick the same answer (bf16: a near tie may go either way).

    PYTHONPATH=. python bench/bench_harness.py                      # GPU, the JetMoE-8B shape
    PYTHONPATH=. python bench/bench_harness.py --questions 14042    # all of MMLU's size
    PYTHONPATH=. python bench/bench_harness.py --tiny               # CPU smoke run
"""

import argparse
import time

import torch

import jetmoe_model  # noqa: F401  (first: it makes our kernels importable from a source checkout)
from jetmoe_model import JetMoEConfig, JetMoEForCausalLM

CONFIG = "align/assets/jetmoe-8b"
TOKENIZER = "recipes/tiny/tokenizer"  # JetMoE's is on the hub; the requests come tokenised, so it only sets pad/eos
TINY = dict(hidden_size=64, num_hidden_layers=2, num_key_value_heads=2, kv_channels=16, intermediate_size=128,
            num_local_experts=4, num_experts_per_tok=2, vocab_size=1024, max_position_embeddings=4096)
CHOICES = 4


def requests(questions: int, vocab: int, seed: int) -> list:
    """lm-eval's loglikelihood requests: ((context, continuation), context tokens, continuation tokens)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.exp(torch.randn(questions, generator=generator) * 0.35 + torch.log(torch.tensor(560.0)))
    answers = torch.randint(3, vocab, (CHOICES,), generator=generator).tolist()  # " A" .. " D"
    made = []
    for question, length in enumerate(lengths.clamp(250, 2048).long().tolist()):
        context = torch.randint(3, vocab, (length,), generator=generator).tolist()
        made += [((f"question {question}", f" {'ABCD'[i]}"), context, [answers[i]]) for i in range(CHOICES)]
    return made


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(lm, warmup: list, measured: list) -> tuple[float, list]:
    lm._loglikelihood_tokens(warmup, disable_tqdm=True)
    synchronize()
    start = time.perf_counter()
    results = lm._loglikelihood_tokens(measured, disable_tqdm=True)
    synchronize()
    return time.perf_counter() - start, results


def stock_model(ours: JetMoEForCausalLM):
    """transformers' JetMoeForCausalLM on our model's tensors (the same checkpoint layout): its own weights are
    dropped for ours, so the two engines share one copy."""
    from transformers import JetMoeConfig, JetMoeForCausalLM

    config = JetMoeConfig(**{k: v for k, v in ours.config.to_dict().items() if k != "model_type"})
    with torch.device(ours.device):
        stock = JetMoeForCausalLM(config).to(ours.dtype)
    stock.load_state_dict(ours.state_dict(), assign=True, strict=True)
    stock.tie_weights()
    return stock.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=5000, help="timed questions (4 requests each)")
    parser.add_argument("--warmup", type=int, default=64, help="untimed questions first")
    parser.add_argument("--batch_size", type=int, default=32, help="lm-eval's hf: requests per padded batch")
    parser.add_argument("--max_batch_tokens", type=int, default=32768, help="ours: tokens per packed row")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape and few questions (CPU smoke run)")
    cli = parser.parse_args()

    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from align.evaluation.harness_lm import JetMoEAlignLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = JetMoEConfig(**TINY) if cli.tiny else JetMoEConfig.from_pretrained(CONFIG)
    questions = min(cli.questions, 24) if cli.tiny else cli.questions
    warmup = min(cli.warmup, 4) if cli.tiny else cli.warmup
    torch.manual_seed(0)
    with torch.device(device):
        ours = JetMoEForCausalLM(config).to(dtype).eval()
    stock = stock_model(ours)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    every = requests(warmup + questions, config.vocab_size, seed=1)
    warm, measured = every[: warmup * CHOICES], every[warmup * CHOICES:]
    tokens = sum(len(context) for index, (_, context, _) in enumerate(measured) if index % CHOICES == 0)

    engines = {
        "lm-eval hf (transformers JetMoeForCausalLM)": HFLM(pretrained=stock, tokenizer=tokenizer,
                                                            batch_size=cli.batch_size),
        "ours (jetmoe-align)": JetMoEAlignLM(ours, tokenizer=tokenizer, batch_size="auto",
                                             max_batch_tokens=cli.max_batch_tokens),
    }  # fmt: skip
    times, answers = {}, {}
    for name, lm in engines.items():
        seconds, results = timed(lm, warm, measured)
        times[name] = seconds
        scores = torch.tensor([score for score, _ in results]).view(-1, CHOICES)
        answers[name] = scores.argmax(1)
        print(f"{name}: {seconds:.1f} s", flush=True)
    name_stock, name_ours = engines
    same = (answers[name_stock] == answers[name_ours]).float().mean().item()
    shape = "tiny" if cli.tiny else "JetMoE-8B"
    print(f"\n{shape} shape, {dtype}, {torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}; {questions} "
          f"questions x {CHOICES} choices = {len(measured)} requests, {tokens / questions:.0f} context tokens a "
          f"question on average\n")
    print("| engine | time (s) | requests/s | questions/s | context tokens/s |")
    print("|---|---|---|---|---|")
    for name, seconds in times.items():
        print(f"| {name} | {seconds:.1f} | {len(measured) / seconds:.0f} | {questions / seconds:.1f} | "
              f"{tokens / seconds:.0f} |")
    print(f"\nratio (ours / hf, requests/s): {times[name_stock] / times[name_ours]:.2f}x; the same answer picked for "
          f"{100 * same:.1f}% of the questions")


if __name__ == "__main__":
    main()
