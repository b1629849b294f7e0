"""Retention benchmarks as multiple-choice questions: MMLU, ARC, TruthfulQA MC1/MC2, HellaSwag.

Each loader reads the official file layout (as in ../shared/data) and returns `MCQuestion`s whose
context and choices are plain text in the lm-evaluation-harness formats below; `ssr.evaluation`
scores them by log-likelihood. The trap avoided: base and fine-tuned models must be scored with
exactly the same prompts, so every format lives here, in one place, and nowhere else.

Formats (zero-shot, no chat template, choices start with a space):
- MMLU:       "The following are multiple choice questions (with answers) about {subject}.\\n\\n"
              "{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:"  ->  " A" / " B" / " C" / " D"
- ARC:        "Question: {stem}\\nAnswer:"  ->  " {choice text}"
- HellaSwag:  "{activity_label}: {ctx_a} {ctx_b capitalised}"  ->  " {ending}"
- TruthfulQA: the six-shot QA primer of the TruthfulQA paper, then "Q: {question}\\nA:"  ->  " {answer}"
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

RETENTION = ("mmlu", "arc_easy", "arc_challenge", "truthfulqa_mc1", "truthfulqa_mc2", "hellaswag")


@dataclass
class MCQuestion:
    id: str
    context: str
    choices: list[str]  # continuations, each starting with a space
    labels: list[int]  # 1 for a correct choice (MC2 has several), else 0


def subsample(items: list, limit: int | None, seed: int = 0) -> list:
    # a fixed-seed sample, so that --limit covers all subjects and is the same for every model compared
    if not limit or limit >= len(items):
        return items
    return random.Random(seed).sample(items, limit)


def load_mmlu(data_dir: Path, limit=None) -> list[MCQuestion]:
    folder = data_dir / "mmlu" / "test"
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise FileNotFoundError(f"no MMLU test CSVs (*_test.csv) in {folder}")
    out = []
    for file in files:
        subject = file.name.removesuffix("_test.csv")
        with open(file, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if len(row) != 6 or row[5] not in "ABCD":
                    raise ValueError(f"{file}: row {i} is not question,A,B,C,D,answer")
                question, *options, answer = row
                context = (f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n{question.strip()}\n"
                           + "".join(f"{letter}. {opt.strip()}\n" for letter, opt in zip("ABCD", options))
                           + "Answer:")
                out.append(MCQuestion(f"{subject}/{i}", context, [" A", " B", " C", " D"],
                                      [int(letter == answer) for letter in "ABCD"]))
    return subsample(out, limit)


def _arc(data_dir: Path, name: str, limit) -> list[MCQuestion]:
    folder = data_dir / "arc" / name
    # the official test split when present; ../shared carries Dev only (its Test files are LFS pointers)
    file = next((folder / f"{name}-{split}.jsonl" for split in ("Test", "Dev")
                 if (folder / f"{name}-{split}.jsonl").is_file()), None)
    if file is None:
        raise FileNotFoundError(f"no {name}-Test.jsonl or {name}-Dev.jsonl in {folder}")
    out = []
    for line in file.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        labels = [c["label"] for c in row["question"]["choices"]]
        if row["answerKey"] not in labels:
            raise ValueError(f"{file}: {row['id']} answerKey {row['answerKey']!r} not among {labels}")
        out.append(MCQuestion(row["id"], f"Question: {row['question']['stem']}\nAnswer:",
                              [" " + c["text"] for c in row["question"]["choices"]],
                              [int(label == row["answerKey"]) for label in labels]))
    return subsample(out, limit)


def load_arc_easy(data_dir: Path, limit=None):
    return _arc(data_dir, "ARC-Easy", limit)


def load_arc_challenge(data_dir: Path, limit=None):
    return _arc(data_dir, "ARC-Challenge", limit)


TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain.\n\n"
)


def _truthfulqa(data_dir: Path, key: str, limit) -> list[MCQuestion]:
    # the classic 817-question release (v1), which papers report; the 2025 update as a fallback
    candidates = [data_dir / "truthfulqa" / "data" / "v1" / "mc_task.json", data_dir / "truthfulqa" / "data" / "mc_task.json"]
    file = next((f for f in candidates if f.is_file()), None)
    if file is None:
        raise FileNotFoundError(f"no TruthfulQA mc_task.json at {candidates[0]} or {candidates[1]}")
    out = []
    for i, row in enumerate(json.loads(file.read_text(encoding="utf-8"))):
        targets = row[key]
        out.append(MCQuestion(str(i), f"{TRUTHFULQA_PRIMER}Q: {row['question']}\nA:",
                              [" " + answer for answer in targets], [int(v) for v in targets.values()]))
    return subsample(out, limit)


def load_truthfulqa_mc1(data_dir: Path, limit=None):
    return _truthfulqa(data_dir, "mc1_targets", limit)


def load_truthfulqa_mc2(data_dir: Path, limit=None):
    return _truthfulqa(data_dir, "mc2_targets", limit)


def _hellaswag_text(text: str) -> str:
    # the dataset's own cleanup, as in lm-evaluation-harness: drop "[title]"-style tags and double spaces
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(data_dir: Path, limit=None) -> list[MCQuestion]:
    folder = data_dir / "hellaswag"
    file = folder / "hellaswag_val.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"no hellaswag_val.jsonl in {folder} (official rowanz/hellaswag data/ layout)")
    out = []
    for i, line in enumerate(file.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
        out.append(MCQuestion(str(row.get("ind", i)), context, [" " + _hellaswag_text(e) for e in row["endings"]],
                              [int(j == int(row["label"])) for j in range(len(row["endings"]))]))
    return subsample(out, limit)


LOADERS = {
    "mmlu": load_mmlu,
    "arc_easy": load_arc_easy,
    "arc_challenge": load_arc_challenge,
    "truthfulqa_mc1": load_truthfulqa_mc1,
    "truthfulqa_mc2": load_truthfulqa_mc2,
    "hellaswag": load_hellaswag,
}
