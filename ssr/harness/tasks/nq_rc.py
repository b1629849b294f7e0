"""Natural Questions as reading comprehension: an NQ question with the passage that answers it. S3FT trains and
evaluates NQ this way (question + passage); SSR's setting is content-grounded QA with unanswerable questions,
which `nq_rc_unanswerable` adds. Data: `../shared/data/nq_rc/nq-open-oracle.jsonl.gz` (lost-in-the-middle's
"oracle" set: 2,655 NQ-open dev questions whose NQ-annotated long answer is a paragraph, each with that gold
Wikipedia passage), or any JSONL (optionally gzip-compressed) of DPR-style records {"question", "answers",
"ctxs": [{"title", "text"}, ...]}. Here: the loader, the split, the unanswerable pairs; the prompts, gold form
and judge are squad2's (tasks/squad2.py), so both grounded tasks are asked and judged the same way.

- **Passages**: every ctx of a record, shown as "Title: {title}\\n{text}" (the oracle set has exactly one).
- **Split** (`SPLITS`, by question, so a question never lands in both): "test" when the first 8 hex digits of
  sha256(question, stripped and lower-cased) are 0 mod 5, else "train" (534 test and 2,121 train questions of
  the oracle set). A hash, not a shuffle: the split of a question does not depend on the file's order or on
  what else the file holds. These are NQ-open *dev* questions: "train" here is this project's split of them (NQ's
  own training questions with passages are not in ../shared), so scores are not comparable to full NQ numbers.
- **Unanswerable questions** (`nq_rc_unanswerable`, SSR's setting): every question also appears once with
  another question's passage that does not answer it, id "{i}-u{j}" (question of record i, passages of record
  j; 0-based), `answers: []`, gold `UNANSWERABLE`. j is the first record after i, in a fixed permutation of the
  question's own split (random.Random(`PAIRING_SEED`)), whose passages contain none of i's answers (`mentions`:
  as the judge matches answers, as whole words with punctuation read as spaces, and as a plain case-insensitive
  substring; stricter than the judge, so that a passage the judge would credit is never paired). Pairing stays
  inside the split, so a test question is never shown a training passage and vice versa. Answerable and
  unanswerable examples alternate (i, i-u, ...), so `--limit N` keeps them balanced. A question no passage of
  its split can be paired with keeps no pair: in the oracle set one ("... which english alphabet", answer "S", a
  substring of every passage), so 2,654 unanswerable examples. How SSR itself built its unanswerable NQ queries
  is not published; this construction is ours.
"""
from __future__ import annotations

import hashlib
import random
import unicodedata

from ssr.harness.tasks import STR, STRS, Example, _short
from ssr.harness.tasks.nq import nq
from ssr.harness.tasks.squad2 import (JUDGE, PARAPHRASE, PREDICT, REWRITE, REWRITE_PREFIX, TRAIN,  # noqa: F401
                                      UNANSWERABLE, clean_gold, fields, gold_response, judge_example,
                                      predict_messages, unfit)

FIELDS = {"question": STR, "answers": STRS}  # and "ctxs", checked by from_record

SPLITS = ("train", "test")
PAIRING_SEED = 0


def from_record(row: dict, index: int, where: str) -> Example:
    ctxs = row.get("ctxs")
    if not isinstance(ctxs, list) or not ctxs or not all(
            isinstance(c, dict) and isinstance(c.get("text"), str) and c["text"].strip()
            and isinstance(c.get("title", ""), str) for c in ctxs):
        raise ValueError(f"{where}: 'ctxs' must be a non-empty list of {{title, text}} passages, got {_short(ctxs)}")
    answers = list(row["answers"])
    if not answers:
        raise ValueError(f"{where}: field 'answers' is an empty list (an NQ record needs at least one answer)")
    documents = [f"Title: {c['title'].strip()}\n{c['text'].strip()}" if c.get("title", "").strip()
                 else c["text"].strip() for c in ctxs]
    return Example(id=str(row.get("id", index)), task="nq_rc", question=row["question"], gold=answers[0],
                   aliases=answers, documents=documents)


def split_of(question: str) -> str:
    """The split of a question: "test" for one in five questions by a hash of its text, else "train"."""
    digest = hashlib.sha256(question.strip().lower().encode("utf-8")).hexdigest()
    return "test" if int(digest[:8], 16) % 5 == 0 else "train"


def select_split(examples: list[Example], split: str) -> list[Example]:
    """The examples whose question is in `split` (load_task's `split`)."""
    if split not in SPLITS:
        raise ValueError(f"unknown NQ reading-comprehension split {split!r}; choose one of {', '.join(SPLITS)}")
    return [e for e in examples if split_of(e.question) == split]


def refuse_test_split(examples: list[Example], where: str) -> None:
    """Training on the test questions is refused by name: evaluate.py scores them."""
    test = [e.id for e in examples if e.task == "nq_rc" and split_of(e.question) == "test"]
    if test:
        raise ValueError(f"{where}: {len(test)} example(s) are NQ reading-comprehension test questions (e.g. "
                         f"{', '.join(test[:3])}); train with --split train, or pass --allow-test-split to train "
                         "on them anyway")


def _fold(text: str) -> str:
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)).lower()
    return " ".join("".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text).split())


def mentions(passage: str, answer: str) -> bool:
    """Whether a passage may contain an answer: as the judge matches it (nq.py's "contains": "the states" is found
    in "states"), as whole words with punctuation read as a space ("1979–80" holds "1979"), or as a plain
    case-insensitive substring. Errs towards "yes"."""
    folded = _fold(answer)
    return answer.strip().lower() in passage.lower() or (bool(folded) and f" {folded} " in f" {_fold(passage)} ") \
        or (any(ch.isalnum() for ch in answer) and nq(passage, [answer], "contains").correct)


def with_unanswerable(examples: list[Example]) -> list[Example]:
    """Each example followed by its question paired with passages that do not answer it (the module's
    docstring says how). An example for which no such passage exists in its split keeps no pair."""
    by_split: dict[str, list[int]] = {name: [] for name in SPLITS}
    for i, e in enumerate(examples):
        by_split[split_of(e.question)].append(i)
    partner: dict[int, int] = {}
    for name in SPLITS:
        order = by_split[name][:]
        random.Random(f"{PAIRING_SEED}-{name}").shuffle(order)
        for k, i in enumerate(order):
            for step in range(1, len(order)):
                j = order[(k + step) % len(order)]
                text = "\n".join(examples[j].documents)
                if examples[j].question != examples[i].question and \
                        not any(mentions(text, a) for a in examples[i].aliases):
                    partner[i] = j
                    break
    out = []
    for i, e in enumerate(examples):
        out.append(e)
        if i in partner:
            j = partner[i]
            out.append(Example(id=f"{e.id}-u{examples[j].id}", task="nq_rc", question=e.question,
                               gold=UNANSWERABLE, aliases=[], documents=list(examples[j].documents)))
    return out
