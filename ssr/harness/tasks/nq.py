"""NQ-open (Lee et al. 2019; Kwiatkowski et al. 2019): open-domain questions from Google searches, each with a
list of short answer aliases. Data: the official JSONL (google-research-datasets/natural-questions, nq_open,
{"question", "answer": [aliases]}); its lines carry no id, so the id is the line's position in its file. Here:
the loader, the prompt of each mode, the gold form (the first alias) and the rule judge (alias match, also
used by squad2.py).

The trap its judge avoids: chatty answers ("It was Paris, in 1900.") never equal an alias exactly. The default
mode, "contains", accepts an output that contains some normalised alias as whole words; "exact" is SQuAD exact
match. A contains-judge is lenient with outputs that list several candidates; report which mode a number used.
"""
from __future__ import annotations

import re
import string
import unicodedata
from typing import Sequence

from ssr.harness.tasks import JUDGE_VERDICT, REWRITE_OTHER, STR, STRS, Example, Verdict, plain_gold

FIELDS = {"question": STR, "answer": STRS}


def from_record(row: dict, index: int, where: str) -> Example:
    answers = list(row["answer"])
    if not answers:
        raise ValueError(f"{where}: field 'answer' is an empty list (an NQ-open record needs at least one alias)")
    return Example(id=str(row.get("id", index)), task="nq", question=row["question"], gold=answers[0],
                   aliases=answers)


# ---------------------------------------------------------------------------------------------------
# prompts (what each mode is for: ssr/harness/tasks/__init__.py)

PREDICT = "Answer the question with a short answer (a few words), without explanation.\n\nQuestion: {question}"
TRAIN = "{question}"  # the s3ft recipe's training prompt (tasks/__init__.py): the question as NQ states it
PARAPHRASE = ("Here is a question and its correct answer.\n\nQuestion: {question}\nCorrect answer: {gold}\n\n"
              "Answer the question in your own words, with a short answer that keeps this answer.")
REWRITE, REWRITE_PREFIX = REWRITE_OTHER, ""
JUDGE = ("You are grading an answer to a question against the reference answers.\n\nQuestion: {question}\n"
         "Reference answers (any one is right): {aliases}\n\nResponse: {response}\n\nThe response is CORRECT if "
         "it gives one of the reference answers (in any wording) and no other answer; otherwise it is INCORRECT. "
         + JUDGE_VERDICT)


def fields(example: Example) -> dict:
    return dict(question=example.question.strip(), gold=clean_gold(example), aliases="; ".join(example.aliases))


def predict_messages(example: Example) -> list[dict]:
    return [{"role": "user", "content": PREDICT.format(**fields(example))}]


clean_gold = gold_response = plain_gold  # the first alias, as written


# --------------------------------------------------------------------------------------------------------
# the judge

NQ_MODES = ("contains", "exact")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)  # ASCII, symbols like $ and + included, as in SQuAD


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (lower case, no punctuation, no articles a/an/the, single spaces), extended to
    Unicode: accents are dropped and Unicode punctuation goes too, so "Fernández" = "Fernandez" and
    "1979–80" (en dash) = "1979-80"."""
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION and not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _light(text: str) -> str:
    return " ".join(text.lower().split())


def nq(output: str, answers: Sequence[str], mode: str = "contains") -> Verdict:
    """Match the output against every alias. "contains" (default): some normalised alias occurs in the
    normalised output as whole words. "exact": the normalised output equals a normalised alias.

    An alias without a letter or digit (")", "---", "*" are in the dev set) matches nothing: "contains" would
    accept any output with a bracket or a markdown star. One whose letters are all articles ("A+", the blood
    type) normalises to nothing but is a real answer: it is compared as written, case-insensitively."""
    if mode not in NQ_MODES:
        raise ValueError(f"unknown NQ mode {mode!r}; expected one of {NQ_MODES}")
    if not answers:
        raise ValueError("no reference answers")
    usable = [alias for alias in answers if any(ch.isalnum() for ch in alias)]
    if not usable:
        return Verdict(False, f"no usable alias in {list(answers)!r}", "no usable alias")
    said = normalize_answer(output)
    for alias in usable:
        gold = normalize_answer(alias)
        if gold:
            hit = said == gold if mode == "exact" else f" {gold} " in f" {said} "
        else:
            gold = _light(alias)
            hit = _light(output) == gold if mode == "exact" else \
                re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", _light(output)) is not None
        if hit:
            return Verdict(True, f"{mode} match {alias!r}", "match")
    more = f" (+{len(answers) - 1} aliases)" if len(answers) > 1 else ""
    return Verdict(False, f"no {mode} match for {answers[0]!r}{more}", "no match")



def judge_example(example: Example, output: str, *, nq_mode: str = "contains", **options) -> Verdict:
    """The rule judge of one NQ-open example (ssr.harness.judges.judge; of its options, it takes `nq_mode`)."""
    return nq(output, example.aliases, nq_mode)


unfit = None  # no target-quality rule
