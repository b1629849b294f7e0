"""The demo's data, generated here so the demo needs no download.

- `one_step` (the target task): one-step word problems in GSM8K format, half additions ("Maya has 4
  cookies and gets 7 more. How many cookies does Maya have now?"), half subtractions ("... and gives
  away 3."), numbers up to 9. With the GSM8K prompt, its default system prompt and 128 new tokens,
  SmolLM2-135M-Instruct (Q4_1) solved 27 of 64 on two seeds (42%; 23 and 27 of them ended on their
  own, so SSR can keep them). Additions alone were too easy for the band (56-58%), subtractions alone
  41-44%. So there is room to learn, and enough correct answers of its own for SSR to keep.
- `capitals` (a retention probe, NQ-open format): "What is the capital of France?", which the base
  model mostly knows.

Everything is a pure function of a seed. The trap avoided: train and test problems drawn from one
stream can repeat; each split is drawn from its own seed and test questions seen in train are dropped.
"""
from __future__ import annotations

import random

NAMES = ["Tom", "Anna", "Sam", "Lily", "Ben", "Mia", "Leo", "Emma", "Noah", "Zoe", "Omar", "Ava", "Ivan", "Nina",
         "Ravi", "Sara", "Kofi", "Lena", "Hugo", "Maya"]
ITEMS = ["apples", "marbles", "stickers", "books", "cookies", "pencils", "stamps", "shells", "cards", "balloons",
         "oranges", "crayons"]

# (country, capital, other accepted spellings); well-known capitals, so a small instruct model knows many
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("China", "Beijing", "Peking"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasília", "Brasilia"),
            ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("India", "New Delhi", "Delhi"),
            ("Kenya", "Nairobi"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
            ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Turkey", "Ankara"),
            ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("Peru", "Lima"), ("Chile", "Santiago"),
            ("Cuba", "Havana"), ("the United Kingdom", "London"), ("the United States", "Washington, D.C.",
                                                                   "Washington"),
            ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Switzerland", "Bern", "Berne"),
            ("Czechia", "Prague"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Nigeria", "Abuja"),
            ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"), ("Colombia", "Bogotá", "Bogota"),
            ("Ukraine", "Kyiv", "Kiev"), ("Romania", "Bucharest"), ("Philippines", "Manila"), ("Pakistan", "Islamabad")]


def one_step(rng: random.Random) -> dict:
    """An addition or a subtraction word problem with numbers up to 9; the gold shows the step."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    if rng.random() < 0.5:
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return {"question": question, "answer": f"{name} has {a} + {b} = {a + b} {item}.\n#### {a + b}"}
    a = rng.randint(3, 9)
    b = rng.randint(1, a - 1)
    question = f"{name} has {a} {item} and gives away {b}. How many {item} does {name} have now?"
    return {"question": question, "answer": f"{name} has {a} - {b} = {a - b} {item} left.\n#### {a - b}"}


def word_problems(family, n: int, seed: int, exclude: set[str] = frozenset()) -> list[dict]:
    """n distinct problems of one family (a function of rng), none of whose questions is in `exclude`."""
    rng, seen, out = random.Random(seed), set(exclude), []
    for _ in range(100 * n):
        row = family(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            out.append(row)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct problems")


def capitals() -> list[dict]:
    return [{"question": f"What is the capital of {country}?", "answer": list(answers)}
            for country, *answers in CAPITALS]
