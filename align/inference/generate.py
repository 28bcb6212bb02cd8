"""Answer with a saved chat model, each prompt built by the tokenizer's chat template. Three ways in: one question,
an interactive multi-turn chat on stdin (`--chat`), or a JSONL file of prompts answered in batches (`--prompts IN
--output OUT`). Greedy by default; `--temperature` above 0 samples (with `--top_p`, reproducibly with `--seed`).

Two engines: "jetmoe" (the default) loads the checkpoint into our model and decodes with
`jetmoe_model.decoding` (a preallocated cache, CUDA-graph steps: several times transformers' speed on a GPU);
"transformers" loads it as its users' own stack would, transformers' `JetMoeForCausalLM` and its `generate`."""

import argparse
import json
from dataclasses import dataclass, replace
from pathlib import Path

from ..config.engines import ENGINES
from ..config.recipes import RecipeError
from ..data import DataError
from ..data.jsonl import jsonl_rows

CHAT_COMMANDS = "/reset starts a new conversation, /exit (or end of input) ends"


@dataclass
class Sampling:
    """How answers are drawn: greedy (the same answer every time) unless `temperature` is above 0."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.temperature,
                "top_p": self.top_p}


class ChatModel:
    def __init__(self, model_dir: str, engine: str = "jetmoe"):
        import torch
        from transformers import AutoTokenizer, JetMoeForCausalLM

        from jetmoe_model import JetMoEForCausalLM

        from ..model.tokenizer import TOKENIZER_FILES, has_tokenizer
        from ..runs.checkpoints import CheckpointFileError
        from ..runs.preflight import path_problems

        if engine not in ENGINES:
            raise RecipeError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
        problems = path_problems("generate", model_dir, set(), ("config.json",))
        if problems:  # named here: transformers would blame a missing sentencepiece or try the hub
            raise CheckpointFileError(problems[0])
        if not has_tokenizer(model_dir):
            raise CheckpointFileError(f"{model_dir}: no tokenizer ({' or '.join(TOKENIZER_FILES)}) beside the model; "
                                      "copy the tokenizer of the run it came from into it")
        # Left padding: in a batch every prompt then ends where its answer starts.
        tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        device = "cuda" if torch.cuda.is_available() else "cpu"  # the checkpoint's dtype, on the GPU where there is one
        model_class = JetMoEForCausalLM if engine == "jetmoe" else JetMoeForCausalLM
        self._use(model_class.from_pretrained(model_dir, dtype="auto", device_map=device).eval(), tokenizer, engine)

    @classmethod
    def of(cls, model, tokenizer, engine: str = "jetmoe") -> "ChatModel":
        """A chat model around a model already loaded (ours for "jetmoe"), its tokenizer padding on the left."""
        chat = cls.__new__(cls)
        chat._use(model.eval(), tokenizer, engine)
        return chat

    def _use(self, model, tokenizer, engine: str) -> None:
        self.model, self.tokenizer, self.engine = model, tokenizer, engine

    def answer(self, conversations: list[list[dict]], sampling: Sampling,
               temperatures: list[float] | None = None) -> list[str]:  # fmt: skip
        """The assistant's next turn in each conversation, generated as one batch; `temperatures`, one a
        conversation, replace `sampling.temperature` (transformers' engine generates each temperature apart)."""
        if temperatures is None or self.engine == "jetmoe":
            return self._generate(conversations, sampling, temperatures)
        answers = [""] * len(conversations)
        for temperature in sorted(set(temperatures)):
            rows = [row for row, value in enumerate(temperatures) if value == temperature]
            alike = self._generate([conversations[row] for row in rows], replace(sampling, temperature=temperature))
            for row, answer in zip(rows, alike):
                answers[row] = answer
        return answers

    def _generate(self, conversations: list[list[dict]], sampling: Sampling,
                  temperatures: list[float] | None = None) -> list[str]:  # fmt: skip
        import torch

        from jetmoe_model import decoding

        inputs = self.tokenizer.apply_chat_template(conversations, add_generation_prompt=True, padding=True,
                                                    return_tensors="pt", return_dict=True).to(self.model.device)
        with torch.no_grad():
            if self.engine == "transformers":
                output = self.model.generate(**inputs, **sampling.generate_kwargs())
            else:
                config = self.model.generation_config
                output = decoding.generate(
                    self.model, inputs["input_ids"], inputs["attention_mask"], sampling.max_new_tokens,
                    temperature=sampling.temperature if temperatures is None else temperatures,
                    top_p=sampling.top_p, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id,
                )  # fmt: skip
        return self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def load_chat_model(model_dir: str, engine: str = "jetmoe") -> ChatModel:
    """A full checkpoint as it is; a LoRA adapter dir merged into its base first (`align export`, into a
    temporary dir removed once loaded)."""
    from .export import full_checkpoint

    with full_checkpoint(model_dir) as checkpoint:
        return ChatModel(checkpoint, engine)


def opening(system: str | None) -> list[dict]:
    return [{"role": "system", "content": system}] if system else []


def chat(model: ChatModel, sampling: Sampling, system: str | None = None) -> None:
    """Multi-turn: each answer joins the conversation the next question is asked in."""
    print(f"Chat with the model ({CHAT_COMMANDS}).")
    conversation = opening(system)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        if line == "/exit":
            return
        if line == "/reset":
            conversation = opening(system)
            print("(new conversation)")
            continue
        if not line:
            continue
        conversation.append({"role": "user", "content": line})
        reply = model.answer([conversation], sampling)[0]
        conversation.append({"role": "assistant", "content": reply})
        print(f"assistant> {reply}", flush=True)


def _ends_with_a_question(messages) -> bool:
    return isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) \
        and messages[-1].get("role") == "user"


def read_prompts(path: Path, system: str | None) -> list[tuple[dict, list[dict]]]:
    """Each row of a JSONL file with its conversation: a `prompt` text (asked after `system`, if given), or
    `messages`, a conversation in the chat format ending with the user's turn."""
    if not path.is_file():
        raise DataError(path, "no such prompts file")
    rows = []
    for number, row in jsonl_rows(path):
        if isinstance(row, dict) and isinstance(row.get("prompt"), str):
            rows.append((row, [*opening(system), {"role": "user", "content": row["prompt"]}]))
        elif isinstance(row, dict) and _ends_with_a_question(row.get("messages")):
            rows.append((row, row["messages"]))
        else:
            raise DataError(path, "expected a 'prompt' text or a 'messages' list ending with the user's turn",
                            row=number)
    return rows


def answer_file(model: ChatModel, prompts: Path, output: Path, sampling: Sampling, batch_size: int,
                system: str | None = None) -> int:
    """Write each prompt row, with its `answer` added, to `output` (JSONL, in the input's order)."""
    rows = read_prompts(prompts, system)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8") as out:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            for (row, _), answer in zip(batch, model.answer([conversation for _, conversation in batch], sampling)):
                out.write(json.dumps({**row, "answer": answer}, ensure_ascii=False) + "\n")
    return len(rows)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="a saved chat model: a stage's output_dir (full or LoRA adapter) or an "
                                          "exported merge")
    parser.add_argument("question", nargs="?", help="one question to answer")
    parser.add_argument("--chat", action="store_true", help=f"an interactive multi-turn chat on stdin "
                                                             f"({CHAT_COMMANDS})")
    parser.add_argument("--prompts", type=Path, help="a JSONL file of prompts: {\"prompt\": text} or "
                                                     "{\"messages\": [...]} per line")
    parser.add_argument("--output", type=Path, help="with --prompts: the JSONL file to write, each row with its "
                                                    "\"answer\"")
    parser.add_argument("--batch_size", type=int, default=8, help="with --prompts: prompts generated together")
    parser.add_argument("--system", help="a system message to start each conversation with")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (the default): greedy; above 0: sample")
    parser.add_argument("--top_p", type=float, default=1.0, help="when sampling: nucleus sampling's mass")
    parser.add_argument("--seed", type=int, help="when sampling: the same seed gives the same answers")
    add_engine_argument(parser)


def add_engine_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=ENGINES, default="jetmoe",
                        help="jetmoe (default): our model and fast batched decoding; transformers: transformers' "
                             "JetMoeForCausalLM and its generate")


def run_generate(args: argparse.Namespace) -> None:
    modes = [name for name, given in (("a question", args.question is not None), ("--chat", args.chat),
                                      ("--prompts", args.prompts is not None)) if given]
    if len(modes) != 1:
        raise RecipeError(f"generate: give one of a question, --chat or --prompts (got {', '.join(modes) or 'none'})")
    if args.prompts is not None and args.output is None:
        raise RecipeError("generate: --prompts needs --output, the JSONL file to write the answers to")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        raise RecipeError("generate: --batch_size and --max_new_tokens must be at least 1")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise RecipeError("generate: --temperature must be 0 or more and --top_p in (0, 1]")
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_p)
    if args.seed is not None:
        from transformers import set_seed

        set_seed(args.seed)
    model = load_chat_model(args.model_dir, args.engine)
    if args.chat:
        chat(model, sampling, args.system)
    elif args.prompts is not None:
        count = answer_file(model, args.prompts, args.output, sampling, args.batch_size, args.system)
        print(f"answered {count} prompts: {args.output}")
    else:
        print(model.answer([[*opening(args.system), {"role": "user", "content": args.question}]], sampling)[0])
