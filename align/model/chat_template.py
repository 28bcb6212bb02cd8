"""JetMoE-8B-Chat's chat format (Zephyr style), with the markers TRL needs to train on assistant tokens only.

    <s><|system|>\\n{system}</s>\\n<|user|>\\n{question}</s>\\n<|assistant|>\\n{answer}</s>\\n

Every turn is closed by the tokenizer's eos token, so a chat model learns to stop after its answer. The bos token
opens the conversation because TRL tokenizes through the template without adding special tokens, and base models
were pretrained with bos at the start of each document. The assistant's answer and its eos sit inside
`{% generation %}` … `{% endgeneration %}`: `apply_chat_template(..., return_assistant_tokens_mask=True)` (what
TRL's `assistant_only_loss=True` uses) marks exactly those tokens.
"""

ZEPHYR_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role'] + ': expected system, user or assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

TEMPLATES = {"zephyr": ZEPHYR_TEMPLATE}
# What a template must render before anything is loaded: two user turns and an answer, then a generation prompt
# (no system turn: some models' templates refuse one, and data without system turns would not need it).
SAMPLE_CONVERSATION = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."},
                       {"role": "user", "content": "And 3 plus 4?"}]


def is_jinja(name_or_template: str) -> bool:
    return "{%" in name_or_template or "{{" in name_or_template


def resolve_chat_template(name_or_template: str) -> str:
    """A template by name ("zephyr"), or a literal Jinja template (anything containing `{%` or `{{`)."""
    if is_jinja(name_or_template):
        return name_or_template
    if name_or_template not in TEMPLATES:
        raise ValueError(f"unknown chat template {name_or_template!r}: expected one of {sorted(TEMPLATES)} or Jinja")
    return TEMPLATES[name_or_template]


def chat_template_problem(name_or_template: str) -> str | None:
    """Why a recipe's `chat_template` cannot be used (an unknown name; Jinja that does not compile or does not
    render `SAMPLE_CONVERSATION`), in one line; None when it renders. Checked with transformers' own renderer, the
    one `apply_chat_template` uses, with stand-in special tokens."""
    from transformers.utils.chat_template_utils import render_jinja_template

    try:
        template = resolve_chat_template(name_or_template)
    except ValueError as error:
        return str(error)
    try:
        render_jinja_template([SAMPLE_CONVERSATION], chat_template=template, add_generation_prompt=True,
                              bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    except Exception as error:  # jinja2's syntax and runtime errors, the template's own raise_exception, ...
        line = f" (line {error.lineno})" if getattr(error, "lineno", None) else ""
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"the Jinja template does not render a sample conversation{line}: {type(error).__name__}: {detail}"
    return None


def set_chat_template(tokenizer, name_or_template: str = "zephyr"):
    """Put the template on `tokenizer` (saved with it into `tokenizer_config.json`/`chat_template.jinja`); a
    template that cannot be used ends in one line naming the recipe field."""
    from ..config.recipes import RecipeError

    problem = chat_template_problem(name_or_template)
    if problem:
        raise RecipeError(f"tokenizer.chat_template: {problem}")
    tokenizer.chat_template = resolve_chat_template(name_or_template)
    if tokenizer.eos_token is None:
        raise ValueError("the chat template closes turns with eos_token, but the tokenizer has none")
    if tokenizer.pad_token is None:
        # Llama's tokenizer (jetmoe/jetmoe-8b) has no pad token; padding is masked out, so any id would do, but
        # eos keeps the vocabulary unchanged.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
