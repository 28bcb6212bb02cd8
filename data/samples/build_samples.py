"""Writes the shipped sample data (our own text) in each source's schema: `python data/samples/build_samples.py`.

The answers follow fixed patterns (correct sums, capitals, opposites, colour mixes, small Python functions,
system-prompt styles) so a tiny model can learn them in the CPU demo; test files use held-out items of the same
kinds. Deterministic: running it again rewrites identical files.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

NAMES = ["Maya", "Omar", "Lena", "Tariq", "Sofia", "Ken", "Amara", "Jonas", "Priya", "Diego", "Ines", "Wei"]
THINGS = ["apples", "marbles", "stickers", "pencils", "shells", "books", "cookies", "stamps"]
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Peru", "Lima"),
            ("Norway", "Oslo"), ("Egypt", "Cairo"), ("Italy", "Rome"), ("Chile", "Santiago"), ("India", "New Delhi"),
            ("Spain", "Madrid"), ("Ghana", "Accra"), ("Poland", "Warsaw"), ("Vietnam", "Hanoi"),
            ("Portugal", "Lisbon"), ("Morocco", "Rabat"), ("Greece", "Athens"), ("Mexico", "Mexico City")]
WRONG_CAPITALS = {"Canada": "Toronto", "India": "Mumbai", "Morocco": "Casablanca", "Vietnam": "Ho Chi Minh City",
                  "Italy": "Milan", "Spain": "Barcelona", "Japan": "Kyoto", "Peru": "Cusco", "Poland": "Krakow"}
OPPOSITES = [("hot", "cold"), ("early", "late"), ("empty", "full"), ("loud", "quiet"), ("heavy", "light"),
             ("ancient", "modern"), ("narrow", "wide"), ("rough", "smooth"), ("asleep", "awake"), ("shallow", "deep"),
             ("generous", "selfish"), ("fragile", "sturdy")]
COLOURS = [("blue", "yellow", "green"), ("red", "yellow", "orange"), ("red", "blue", "purple"),
           ("red", "white", "pink"), ("black", "white", "grey"), ("blue", "white", "light blue")]
FUNCTIONS = [("square", "returns the square of a number", "def square(x):\n    return x * x"),
             ("is_even", "tells whether a number is even", "def is_even(n):\n    return n % 2 == 0"),
             ("reverse", "reverses a string", "def reverse(text):\n    return text[::-1]"),
             ("largest", "returns the largest item of a list", "def largest(items):\n    return max(items)"),
             ("count_vowels", "counts the vowels in a string",
              "def count_vowels(text):\n    return sum(ch in 'aeiou' for ch in text.lower())"),
             ("average", "returns the average of a list of numbers",
              "def average(numbers):\n    return sum(numbers) / len(numbers)"),
             ("first_word", "returns the first word of a sentence",
              "def first_word(sentence):\n    return sentence.split()[0]"),
             ("celsius_to_fahrenheit", "converts Celsius to Fahrenheit",
              "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32")]
ADVICE = [
    ("How can I remember to drink more water during the day?",
     "Keep a filled bottle within reach and drink a glass with every meal. Linking water to habits you already "
     "have works better than relying on memory.",
     "What if I get bored of plain water?",
     "Add a slice of lemon, cucumber or a few mint leaves. Unsweetened herbal tea counts too."),
    ("I have an exam in a week. How should I plan my revision?",
     "List the topics, give each day two or three of them, and finish every session with practice questions. "
     "Leave the last day for a light review and sleep well before the exam.",
     "How long should each session be?",
     "About forty-five minutes of focus followed by a ten minute break is a good rhythm for most people."),
    ("My houseplant's leaves are turning yellow. What could be wrong?",
     "The most common cause is too much water. Let the top few centimetres of soil dry out before watering again "
     "and make sure the pot drains.",
     "And if the soil is already dry?",
     "Then it may need more light or a little fertiliser. Move it closer to a bright window first."),
    ("How do I start running if I have never run before?",
     "Begin with walk-run intervals: one minute of easy running, two minutes of walking, repeated for twenty "
     "minutes, three times a week. Add running time slowly.",
     "Do I need special shoes?",
     "Comfortable trainers that fit well are enough to start. Visit a running shop later if you keep it up."),
    ("What is a good way to learn new words in a foreign language?",
     "Learn words in short phrases rather than alone, and review them with spaced repetition: after one day, "
     "three days, a week and a month.",
     "Is an app necessary for that?",
     "No. Paper flashcards sorted into boxes by review date work just as well."),
    ("How can I make my morning less rushed?",
     "Prepare the night before: lay out clothes, pack your bag and decide on breakfast. Then get up fifteen "
     "minutes earlier than you need to.",
     "I always hit snooze. Any tips?",
     "Put the alarm across the room so you have to stand up to switch it off."),
]
SYSTEM_STYLES = [
    ("Answer in capital letters.", str.upper),
    ("Begin every answer with 'Sure!'.", lambda text: "Sure! " + text),
    ("You are a helpful assistant.", lambda text: text),
]


def arithmetic(rng: random.Random) -> tuple[str, str, str]:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    if rng.random() < 0.5:
        question = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?"
        answer = f"{name} has {a} + {b} = {a + b} {thing}."
        wrong = f"{name} has {a + b + rng.randint(1, 5)} {thing}."
    else:
        a, b = max(a, b) + 3, min(a, b)
        question = f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?"
        answer = f"{name} has {a} - {b} = {a - b} {thing} left."
        wrong = f"{name} has {a + b} {thing} left."
    return question, answer, wrong


def capital(item) -> tuple[str, str, str]:
    country, city = item
    wrong = WRONG_CAPITALS.get(country, "London" if city != "London" else "Paris")
    return f"What is the capital of {country}?", f"The capital of {country} is {city}.", \
        f"The capital of {country} is {wrong}."


def opposite(item) -> tuple[str, str, str]:
    word, other = item
    return f"What is the opposite of '{word}'?", f"The opposite of '{word}' is '{other}'.", \
        f"The opposite of '{word}' is '{word}'."


def colour(item) -> tuple[str, str, str]:
    first, second, result = item
    return f"What colour do you get when you mix {first} and {second}?", \
        f"Mixing {first} and {second} gives {result}.", f"Mixing {first} and {second} gives brown."


def function(item) -> tuple[str, str, str]:
    name, purpose, code = item
    return f"Write a Python function `{name}` that {purpose}.", f"```python\n{code}\n```", \
        f"```python\ndef {name}():\n    pass\n```"


def qa_items(rng: random.Random, split: str) -> list[tuple[str, str, str]]:
    """(question, good answer, bad answer) triples; train and test take disjoint items of each kind."""
    def part(items):
        cut = max(1, len(items) // 4)
        return items[cut:] if split == "train" else items[:cut]

    items = [capital(c) for c in part(CAPITALS)] + [opposite(o) for o in part(OPPOSITES)]
    items += [colour(c) for c in part(COLOURS)] + [function(f) for f in part(FUNCTIONS)]
    items += [arithmetic(rng) for _ in range(14 if split == "train" else 5)]
    rng.shuffle(items)
    return items


def chat(user: str, assistant: str, system: str | None = None) -> list[dict]:
    turns = [{"role": "system", "content": system}] if system else []
    return turns + [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def ultrachat(rng, split):
    rows = []
    for question, answer, _ in qa_items(rng, split):
        rows.append({"prompt": question, "prompt_id": hashlib.sha256(question.encode()).hexdigest(),
                     "messages": chat(question, answer)})
    for first, reply, follow_up, second in ADVICE[:4] if split == "train" else ADVICE[4:]:
        messages = chat(first, reply) + chat(follow_up, second)
        rows.append({"prompt": first, "prompt_id": hashlib.sha256(first.encode()).hexdigest(), "messages": messages})
    return rows


def airoboros(rng, split):
    rows = []
    for index, (question, answer, _) in enumerate(qa_items(rng, split)):
        system = "A chat between a curious user and a helpful assistant." if index % 3 == 0 else None
        rows.append({"category": "general", "messages": chat(question, answer, system)})
    return rows


def sharegpt(rng, split):
    rows = []
    items = qa_items(rng, split)
    for index in range(0, len(items) - 1, 2):
        (q1, a1, _), (q2, a2, _) = items[index], items[index + 1]
        turns = [("human", q1), ("gpt", a1), ("human", f"Thanks. One more: {q2}"), ("gpt", a2)]
        rows.append({"id": f"{split}-{index // 2}", "source": "sample",
                     "conversations": [{"from": who, "value": text} for who, text in turns]})
    return rows


def systemchat(rng, split):
    rows = []
    for index, (question, answer, _) in enumerate(qa_items(rng, split)):
        system, style = SYSTEM_STYLES[index % len(SYSTEM_STYLES)]
        rows.append({"messages": chat(question, style(answer), system)})
    return rows


def ultrafeedback(rng, split):
    rows = []
    for question, good, bad in qa_items(rng, split):
        rows.append({"prompt": question, "prompt_id": hashlib.sha256(question.encode()).hexdigest(),
                     "chosen": chat(question, good), "rejected": chat(question, bad),
                     "score_chosen": float(rng.choice([8, 9, 10])), "score_rejected": float(rng.choice([2, 3, 4]))})
    return rows


def preference_strings(rng, split):
    return [{"prompt": question, "chosen": good, "rejected": bad} for question, good, bad in qa_items(rng, split)]


SOURCES = {  # directory: (builder, train split, test split, file suffix)
    "ultrachat": (ultrachat, "train_sft", "test_sft", ".jsonl"),
    "airoboros": (airoboros, "train_sft", "test_sft", ".jsonl"),
    "sharegpt": (sharegpt, "train", "test", ".jsonl"),
    "systemchat": (systemchat, "train_sft", "test_sft", ".parquet"),
    "ultrafeedback": (ultrafeedback, "train_prefs", "test_prefs", ".jsonl"),
    "preference_strings": (preference_strings, "train", "test", ".jsonl"),
}


def write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path, compression="zstd")
    else:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    for seed, (directory, (build, train, test, suffix)) in enumerate(SOURCES.items()):
        for split_name, split in (("train", train), ("test", test)):
            rows = build(random.Random(f"{seed}-{split_name}"), split_name)
            write(HERE / directory / f"{split}{suffix}", rows)
            print(f"{directory}/{split}{suffix}: {len(rows)} rows")


if __name__ == "__main__":
    main()
