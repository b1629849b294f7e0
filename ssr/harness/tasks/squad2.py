"""SQuAD 2.0 (Rajpurkar et al. 2018) as document-grounded QA: a question about given passages, which may not
answer it. Data: SQuAD 2.0's official JSON (rajpurkar.github.io/SQuAD-explorer, {"version", "data": [{"title",
"paragraphs": [{"context", "qas"}]}]}, read by `squad_rows`), or JSONL records {"id", "documents" (or
"context"), "question", "answers"} with `answers: []` for an unanswerable question. Here: the loader, the
passages as the prompts show them, the prompt of each mode (the predict prompt gives the exact sentence to
reply with when the passages do not answer, `UNANSWERABLE`), the gold form and the rule judge.

The trap its judge avoids: an unanswerable question's `plausible_answers` are distractors, never gold, and an
output that declines must not pass on an answerable question because some alias happens to occur in it; an
answer is matched like NQ's "contains" only when the output does not decline. A decline is read by meaning
(ssr/harness/declines.py), not only as the prompt's exact sentence: a model that declines in its own words
("The passage does not contain the answer.") is right on an unanswerable question and wrong on an answerable one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ssr.harness import declines as decline_judge
from ssr.harness.declines import UNANSWERABLE  # noqa: F401 (the decline sentence; tasks.UNANSWERABLE names it too)
from ssr.harness.tasks import JUDGE_VERDICT, REWRITE_OTHER, STR, STRS, Example, Verdict, plain_gold
from ssr.harness.tasks.nq import normalize_answer, nq

FIELDS = {"question": STR, "answers": STRS}  # answers [] for an unanswerable question


def from_record(row: dict, index: int, where: str) -> Example:
    documents = row["documents"] if "documents" in row else [row.get("context")]
    if not isinstance(documents, list) or not documents or \
            not all(isinstance(d, str) and d.strip() for d in documents):
        raise ValueError(f"{where}: 'documents' must be a non-empty list of passages (or give one 'context')")
    answers = list(row["answers"])
    return Example(id=str(row.get("id", index)), task="squad2", question=row["question"],
                   gold=answers[0] if answers else UNANSWERABLE, aliases=answers, documents=list(documents))


def squad_rows(path: Path) -> list[dict]:
    """SQuAD 2.0's official JSON ({"version", "data": [{"title", "paragraphs": [{"context", "qas"}]}]}) as
    plain grounded-QA records {"id", "documents": [context], "question", "answers"}, in the file's order.
    An `is_impossible` question has `answers: []` (its `plausible_answers` are distractors, never gold)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"{path}: not SQuAD's official JSON layout {{\"version\", \"data\": [...]}} "
                         f"({'nested too deeply' if isinstance(e, RecursionError) else e})") from None

    def field(obj, key, kind, where):  # the official layout's fields, each named with where it is missing
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: {where}: field {key!r} must be {'a list' if kind is list else 'a string'}, "
                             f"got {json.dumps(value)[:60]}")
        return value

    rows = []
    for a, article in enumerate(field({"data": data}, "data", list, "top level")):
        for p, paragraph in enumerate(field(article, "paragraphs", list, f"data[{a}]")):
            where = f"data[{a}].paragraphs[{p}]"
            context = field(paragraph, "context", str, where)
            for q, qa in enumerate(field(paragraph, "qas", list, where)):
                at = f"{where}.qas[{q}]"
                id, question = field(qa, "id", str, at), field(qa, "question", str, at)
                impossible = qa.get("is_impossible", False)
                answers = [] if impossible else [field(x, "text", str, f"{at}.answers[{i}]")
                                                 for i, x in enumerate(field(qa, "answers", list, at))]
                if not impossible and not answers:
                    raise ValueError(f"{path}: question {id!r} (article {a}, paragraph {p}) is not "
                                     "is_impossible but has no answers")
                rows.append({"id": id, "documents": [context], "question": question, "answers": answers})
    return rows


def passages(example: Example) -> str:
    """squad2's documents as the prompt shows them: "Passage:" or "Passage 1:", "Passage 2:", ..."""
    if len(example.documents) == 1:
        return f"Passage:\n{example.documents[0].strip()}"
    return "\n\n".join(f"Passage {i}:\n{d.strip()}" for i, d in enumerate(example.documents, 1))


# ---------------------------------------------------------------------------------------------------
# prompts (what each mode is for: ssr/harness/tasks/__init__.py)

# the passages before the question, and the exact sentence to give when they do not answer it
PREDICT = ("Answer the question using only the passages below. If the passages do not contain the answer, "
           "reply with exactly this sentence: \"{decline}\"\n\n{passages}\n\nQuestion: {question}")
TRAIN = "{passages}\n\nQuestion: {question}"  # the s3ft recipe's training prompt (tasks/__init__.py)
PARAPHRASE = ("Here are passages, a question about them and its correct answer.\n\n{passages}\n\n"
              "Question: {question}\nCorrect answer: {gold}\n\nAnswer the question in your own words, in a "
              "sentence, keeping this answer. If the correct answer is \"{decline}\", reply with exactly that "
              "sentence.")
REWRITE, REWRITE_PREFIX = REWRITE_OTHER, ""
JUDGE = ("You are grading an answer to a question about some passages.\n\n{passages}\n\nQuestion: "
         "{question}\n\nReference answer: {reference}\n\nResponse: {response}\n\nIf the reference answer is "
         "\"{decline}\", the response is CORRECT only if it says that the passages do not answer the "
         "question. Otherwise it is CORRECT if it gives the reference answer (in any wording) and is supported "
         "by the passages, and INCORRECT if it gives another answer or says the passages do not answer. "
         + JUDGE_VERDICT)


def fields(example: Example) -> dict:
    return dict(question=example.question.strip(), passages=passages(example), decline=UNANSWERABLE,
                gold=clean_gold(example), reference=clean_gold(example))


def predict_messages(example: Example) -> list[dict]:
    return [{"role": "user", "content": PREDICT.format(**fields(example))}]


clean_gold = gold_response = plain_gold  # the first answer, or UNANSWERABLE


# --------------------------------------------------------------------------------------------------------
# the judge: a decline by meaning answers an unanswerable question

def says_sentence(output: str) -> bool:
    """The output contains the prompt's exact decline sentence, normalised like an answer (the strict count,
    evaluation's `unanswerable_rate_exact`)."""
    return f" {normalize_answer(UNANSWERABLE)} " in f" {normalize_answer(output)} "


def declines(output: str) -> bool:
    """The output declines to answer, in any wording the decline judge reads (ssr/harness/declines.py)."""
    return bool(decline_judge.declines(output))


def squad2(output: str, answers: Sequence[str]) -> Verdict:
    """An unanswerable question (no answers): correct when the output declines by meaning (an answer before or
    beside the decline makes it no decline). An answerable one: correct when it contains some gold answer (NQ's
    "contains" match) and neither declines nor holds the exact decline sentence anywhere: an output that both
    answers and declines is wrong either way. SSR's own judge is an LLM."""
    verdict = decline_judge.declines(output)
    if not answers:
        if verdict:
            return Verdict(True, f"declined ({verdict.rule})", "declined")
        return Verdict(False, f"answered an unanswerable question ({verdict.rule})", "answered")
    if verdict or says_sentence(output):
        why = verdict.rule if verdict else "the exact sentence, beside other text"
        return Verdict(False, f"declined an answerable question ({why})", "declined")
    return nq(output, answers, "contains")


def judge_example(example: Example, output: str, **options) -> Verdict:
    """The rule judge of one SQuAD 2.0 example (ssr.harness.judges.judge; it takes no options)."""
    return squad2(output, example.aliases)


unfit = None  # no target-quality rule
