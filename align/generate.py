"""Answer a question with a saved chat model, loaded the way its users will: transformers' own
`JetMoeForCausalLM` and `AutoTokenizer`, the prompt built by the tokenizer's chat template."""


def generate(model_dir: str, question: str, max_new_tokens: int = 64) -> str:
    from transformers import AutoTokenizer, JetMoeForCausalLM

    from .checkpoints import CheckpointFileError
    from .preflight import path_problems

    problems = path_problems("generate", model_dir, set(), ("config.json",))
    if problems:  # named here: transformers would blame a missing sentencepiece or try the hub
        raise CheckpointFileError(problems[0])

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = JetMoeForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
