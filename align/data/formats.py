"""Normalise the chat formats the sources use to the one schema the TRL stages read.

Output schema (conversational, as TRL's `SFTTrainer` / `DPOTrainer` take it; every message is exactly
`{"role": str, "content": str}`, roles "system" | "user" | "assistant"):

- SFT:        `{"messages": [message, ...]}`
- preference: `{"prompt": [message, ...], "chosen": [message, ...], "rejected": [message, ...]}` where the prompt
  ends with the user turn and chosen/rejected hold only the responses (beginning with an assistant turn).

Inputs recognised:

- SFT: a `messages` list of `role`/`content` dicts (UltraChat, Airoboros, Capybara, SystemChat on the hub);
  ShareGPT `conversations` of `from`/`value` dicts (`human`/`gpt`/`system`/... aliases); `prompt` plus
  `completion`/`response`/`output` columns (strings or message lists) with an optional `system` string.
- preference: `prompt`/`chosen`/`rejected`, each a string or a message list. When chosen and rejected are whole
  conversations (UltraFeedback binarized: the user turn, then the answer), their shared leading turns become the
  prompt and only the differing answers remain.

Normalisers only reshape; they raise `RowProblem` when the shape is wrong (missing field, wrong type). Content
checks (roles, empty text, assistant turns) live in `validation`.
"""

from __future__ import annotations

from datasets import Features, List, Value

from .errors import MISSING_FIELD, PROMPT_MISMATCH, WRONG_TYPE, RowProblem
from .spec import DataSource

MESSAGE_LIST = List({"role": Value("string"), "content": Value("string")})
FEATURES = {
    "sft": Features({"messages": MESSAGE_LIST}),
    "preference": Features({"prompt": MESSAGE_LIST, "chosen": MESSAGE_LIST, "rejected": MESSAGE_LIST}),
}

ROLE_ALIASES = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bot": "assistant", "model": "assistant",
}
CONVERSATION_FIELDS = ("messages", "conversations", "conversation")
COMPLETION_FIELDS = ("completion", "response", "output")


def normalise_sft(row: dict, source: DataSource) -> dict:
    """One SFT row in any recognised format -> `{"messages": [...]}`."""
    field = source.messages_field or next((f for f in CONVERSATION_FIELDS if f in row), None)
    if field is not None:
        return {"messages": to_messages(_required(row, field), field)}
    completion_field = next((f for f in COMPLETION_FIELDS if f in row), None)
    if "prompt" not in row or completion_field is None:
        raise RowProblem(MISSING_FIELD, "messages", "no 'messages' or 'conversations' list and no 'prompt' with "
                                                    f"one of {', '.join(COMPLETION_FIELDS)}")
    system = _optional_system(row)
    prompt = to_messages(row["prompt"], "prompt", default_role="user")
    completion = to_messages(row[completion_field], completion_field, default_role="assistant")
    return {"messages": system + prompt + completion}


def normalise_preference(row: dict, source: DataSource) -> dict:
    """One preference row -> `{"prompt", "chosen", "rejected"}` with the shared prefix moved into the prompt."""
    prompt_field = source.prompt_field or "prompt"
    chosen_field, rejected_field = source.chosen_field or "chosen", source.rejected_field or "rejected"
    chosen = to_messages(_required(row, chosen_field), chosen_field, default_role="assistant")
    rejected = to_messages(_required(row, rejected_field), rejected_field, default_role="assistant")
    shared = _shared_prompt_length(chosen, rejected)
    if shared:
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if row.get(prompt_field) not in (None, "", []):
            _check_prompt_agrees(prompt, to_messages(row[prompt_field], prompt_field, default_role="user"),
                                 prompt_field)
    else:  # the prompt comes from its own column; a side that repeats it keeps only its response
        prompt = _optional_system(row) + to_messages(_required(row, prompt_field), prompt_field, default_role="user")
        chosen, rejected = _without_prefix(chosen, prompt), _without_prefix(rejected, prompt)
    for name, response in ((chosen_field, chosen), (rejected_field, rejected)):
        if response and response[0]["role"] != "assistant":
            raise RowProblem(PROMPT_MISMATCH, name, f"begins with a {response[0]['role']} turn that neither the "
                                                    "other side nor the prompt has: the pair answers different prompts")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _check_prompt_agrees(turns: list[dict], declared: list[dict], field: str) -> None:
    """A `prompt` column next to whole conversations must say what their shared turns say: as a string, the last
    user turn; as messages, the turns themselves (system turns aside)."""
    asked = [m for m in turns if m["role"] != "system"]
    if len(declared) == 1 and declared[0]["role"] == "user":
        agrees = bool(asked) and asked[-1]["content"].strip() == declared[0]["content"].strip()
    else:
        agrees = asked == [m for m in declared if m["role"] != "system"]
    if not agrees:
        raise RowProblem(PROMPT_MISMATCH, field, "differs from the prompt turns that chosen and rejected share")


def to_messages(value, field: str, default_role: str | None = None) -> list[dict]:
    """A message list (role/content or from/value dicts), or a plain string taken as one `default_role` turn."""
    if isinstance(value, str) and default_role is not None:
        return [{"role": default_role, "content": value}]
    if not isinstance(value, list):
        expected = "a string or a list of messages" if default_role else "a list of messages"
        raise RowProblem(WRONG_TYPE, field, f"expected {expected}, got {type(value).__name__}")
    return [_message(item, f"{field}[{index}]") for index, item in enumerate(value)]


def _message(item, field: str) -> dict:
    if not isinstance(item, dict):
        raise RowProblem(WRONG_TYPE, field, f"a message must be an object, got {type(item).__name__}")
    role_key = "role" if "role" in item else "from"
    content_key = "content" if "content" in item else "value"
    for key, name in ((role_key, "role"), (content_key, "content")):
        if key not in item:
            raise RowProblem(MISSING_FIELD, f"{field}.{name}", f"the message has no '{name}'")
        if not isinstance(item[key], str):
            raise RowProblem(WRONG_TYPE, f"{field}.{key}", f"expected a string, got {type(item[key]).__name__}")
    role = item[role_key]
    return {"role": ROLE_ALIASES.get(role.strip().lower(), role), "content": item[content_key]}


def _shared_prompt_length(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading turns chosen and rejected share, backed off so the responses start at an assistant turn."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    while shared and chosen[shared - 1]["role"] == "assistant":
        shared -= 1
    return shared


def _without_prefix(messages: list[dict], prefix: list[dict]) -> list[dict]:
    for start in (prefix, [m for m in prefix if m["role"] != "system"]):
        if start and messages[:len(start)] == start:
            return messages[len(start):]
    return messages


def _optional_system(row: dict) -> list[dict]:
    system = row.get("system")
    if system is None or system == "":
        return []
    if not isinstance(system, str):
        raise RowProblem(WRONG_TYPE, "system", f"expected a string, got {type(system).__name__}")
    return [{"role": "system", "content": system}]


def _required(row: dict, field: str):
    if field not in row or row[field] is None:
        raise RowProblem(MISSING_FIELD, field, f"no '{field}' value")
    return row[field]
