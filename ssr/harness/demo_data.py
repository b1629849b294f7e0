"""The demo study's generated data: one-step word problems in GSM8K format and a capital-cities quiz.

The demo needs no download: the problems ("Maya has 4 cookies and gets 7 more. How many cookies does Maya have
now?", or "... and gives away 3."), numbers up to 9, are judged like GSM8K; the base SmolLM2-135M-Instruct
solves about two fifths of them, so SSR finds answers of its own to keep and there is room to learn. The quiz
(judged like NQ-open) holds capitals the base model mostly knows: the retention probe.

The trap avoided: train and test problems drawn from one stream can repeat; each split is drawn from its own
seed and test questions seen in train are dropped.
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
