"""The decline judge (ssr/declines.py) against a hand-labelled table of real answers: SmolLM2-135M-Instruct's greedy
answers to squad2 predict prompts (SQuAD 2.0 dev questions, unanswerable, answerable, and answerable ones with the
passage swapped for another article's), each output once, plus a few rows marked "constructed" for phrasings the
model did not produce (tests/data/declines.jsonl; how it was made: docs/ssr_setting.md, "The decline judge")."""
import json
from pathlib import Path

import pytest

from ssr.harness import judges
from ssr.harness.declines import DECLINE, Decline, declines
from ssr.harness.tasks import UNANSWERABLE, load_task

TABLE = Path(__file__).parent / "data" / "declines.jsonl"
ROWS = [json.loads(line) for line in TABLE.read_text(encoding="utf-8").splitlines()]
REAL = [r for r in ROWS if r["source"].startswith("smollm2-135m squad2 ")]


def confusion(rows) -> dict:
    """Counts of (judge, label): tp = both decline, fp = a false decline, fn = a missed decline, tn = neither."""
    said = [(bool(declines(r["output"])), r["label"]) for r in rows]
    return {"tp": said.count((True, True)), "fp": said.count((True, False)),
            "fn": said.count((False, True)), "tn": said.count((False, False))}


def test_the_table_is_real_and_varied():
    assert all(set(r) == {"output", "question", "answers", "label", "source", "note"} for r in ROWS)
    assert {r["source"] for r in ROWS if r not in REAL} == {"constructed"}
    assert len(REAL) >= 60 and len({r["output"] for r in ROWS}) == len(ROWS)  # each output once
    declined = [r for r in REAL if r["label"]]
    assert len(declined) >= 10 and len(REAL) - len(declined) >= 40
    assert sum(r["output"].strip() != UNANSWERABLE for r in declined) >= 10  # declines in the model's own words


def test_agreement_with_the_labels():
    """Measured (docs/ssr_setting.md): real outputs tp 18, fp 0, fn 4, tn 164 (97.8%); all rows, the constructed
    ones too, tp 27, fp 1 (the known miss, "... it only mentions X"), fn 4, tn 171 (96.6%). The floor: 95% on
    each, and no false decline on a real output."""
    for rows in (REAL, ROWS):
        c = confusion(rows)
        accuracy = (c["tp"] + c["tn"]) / len(rows)
        assert accuracy >= 0.95, f"agreement {accuracy:.1%} with the labels, {c}"
    assert confusion(REAL)["fp"] == 0, [r["output"] for r in REAL if declines(r["output"]) and not r["label"]]


def test_no_false_decline_on_a_real_answer_that_contains_a_gold():
    hits = [r for r in REAL if r["answers"] and not r["label"] and judges.nq(r["output"], r["answers"]).correct]
    assert len(hits) >= 10
    assert [r["output"] for r in hits if declines(r["output"])] == []


@pytest.mark.parametrize("output", [UNANSWERABLE, UNANSWERABLE.upper(), UNANSWERABLE.rstrip("."),
                                    f'"{UNANSWERABLE}"', f"  {UNANSWERABLE}\n"])
def test_the_exact_sentence_declines(output):
    assert declines(output) == Decline(True, "exact sentence")


def test_the_prompts_sentence_in_a_longer_answer():
    assert declines(f"{UNANSWERABLE} It only mentions the Normans.").rule == "passage + negated verb"
    assert not declines(f"The answer is 1974. {UNANSWERABLE}")  # an answer first: not a decline


def test_every_gold_answer_of_the_shared_sample_is_not_a_decline(shared):
    examples = load_task(shared / "data" / "squad2" / "dev-v2.0.subset.json")
    golds = {a for e in examples for a in e.aliases}
    assert len(golds) == 4922
    assert sorted(g for g in golds if declines(g)) == []


def test_the_verdict_names_its_rule():
    verdict = declines("The passage doesn't provide enough information to answer the question.")
    assert verdict and verdict.rule == "passage + negated verb" and verdict.rule in DECLINE
    assert not declines("") and declines("").rule == "empty"
    verdict = declines("The passage doesn't say exactly, but it was around 1850.")
    assert not verdict and "but" in verdict.rule
