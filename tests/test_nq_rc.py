"""NQ as reading comprehension (tasks/nq_rc.py) on the real oracle file of ../shared/data/nq_rc: the loader, the
prompt, the split by question, the judge on every gold answer, and the unanswerable pairs."""
import gzip
import json

import pytest

from ssr.harness import judges
from ssr.harness.tasks import UNANSWERABLE, build_prompt, detect_task, gold_response, load_task, refuse_test_split
from ssr.harness.tasks.nq_rc import mentions, split_of

ORACLE = "data/nq_rc/nq-open-oracle.jsonl.gz"


@pytest.fixture(scope="module")
def oracle(shared):
    return shared / ORACLE


@pytest.fixture(scope="module")
def grounded(oracle):
    return load_task(oracle, "nq_rc_unanswerable")


def test_loads_the_oracle_file(oracle):
    examples = load_task(oracle)
    assert len(examples) == 2655 and len({e.id for e in examples}) == 2655
    first = examples[0]
    assert (first.id, first.task, first.question, first.gold, first.aliases) == (
        "0", "nq_rc", "who got the first nobel prize in physics", "Wilhelm Conrad Röntgen",
        ["Wilhelm Conrad Röntgen"])
    assert first.documents[0].startswith("Title: List of Nobel laureates in Physics\nThe first Nobel Prize in Physics")
    rows = [json.loads(line) for line in gzip.open(oracle, "rt", encoding="utf-8")]
    assert detect_task(rows[0]) == "nq_rc"
    assert all(e.aliases == r["answers"] and e.documents == [f"Title: {c['title'].strip()}\n{c['text'].strip()}"
                                                             for c in r["ctxs"]] for e, r in zip(examples, rows))
    # the oracle passage holds an answer of its question (as `mentions` reads it) for every question
    assert all(any(mentions(e.documents[0], a) for a in e.aliases) for e in examples)
    assert [e.id for e in load_task(oracle, limit=3)] == ["0", "1", "2"]


def test_the_prompt_is_squad2s_grounded_prompt(oracle):
    e = load_task(oracle, limit=1)[0]
    text = build_prompt(e, "predict").messages[-1]["content"]
    assert text.index("Passage:\nTitle: List of Nobel laureates in Physics") < text.index(
        "Question: who got the first nobel prize in physics")
    assert f'"{UNANSWERABLE}"' in text and gold_response(e) == "Wilhelm Conrad Röntgen"


def test_the_split_is_by_question_disjoint_and_deterministic(oracle, grounded):
    train, test = load_task(oracle, split="train"), load_task(oracle, split="test")
    assert (len(train), len(test)) == (2121, 534)
    assert not {e.question for e in train} & {e.question for e in test}
    assert sorted(e.id for e in train + test) == sorted(e.id for e in load_task(oracle))
    assert [e.id for e in load_task(oracle, split="test")] == [e.id for e in test]  # the same on every load
    assert split_of("Who got the first Nobel prize in physics ") == split_of("who got the first nobel prize in physics")
    # with the unanswerable pairs: a question and every passage it is shown stay in one split
    by_id = {e.id: e for e in grounded}
    for name in ("train", "test"):
        chosen = load_task(oracle, "nq_rc_unanswerable", split=name)
        assert all(split_of(e.question) == name for e in chosen)
        partners = [by_id[e.id.split("-u")[1]] for e in chosen if "-u" in e.id]
        assert all(split_of(p.question) == name for p in partners)
    with pytest.raises(ValueError, match="unknown NQ reading-comprehension split 'validation'"):
        load_task(oracle, split="validation")


def test_every_gold_answer_is_judged_correct_and_a_decline_is_not(grounded):
    answerable = [e for e in grounded if e.aliases]
    assert len(answerable) == 2655
    for e in answerable:
        # an alias without a letter or digit matches nothing (nq.py; the oracle set has one: "*")
        assert all(judges.judge(e, alias).correct for alias in e.aliases if any(c.isalnum() for c in alias)), e.id
        assert not judges.judge(e, UNANSWERABLE).correct
        assert not judges.judge(e, "The passage does not contain the answer to the question.").correct
    for e in grounded:
        if not e.aliases:
            assert judges.judge(e, gold_response(e)).correct and gold_response(e) == UNANSWERABLE
            assert judges.judge(e, "The passage does not say who won it.").correct  # a decline in other words


def test_an_unanswerable_pair_never_shows_a_passage_holding_an_answer(grounded):
    by_id = {e.id: e for e in grounded}
    pairs = [e for e in grounded if not e.aliases]
    assert len(pairs) == 2654  # every question but one ("... which english alphabet": "S" is in every passage)
    for u in pairs:
        own, other = u.id.split("-u")
        question, passage_of = by_id[own], by_id[other]
        assert u.question == question.question and u.documents == passage_of.documents and own != other
        text = u.documents[0]
        assert not judges.nq(text, question.aliases, "contains").correct, u.id  # the judge's own match
        assert not any(a.lower() in text.lower() for a in question.aliases), u.id  # nor as a plain substring
    # answerable and unanswerable alternate, so a --limit keeps both
    assert [bool(e.aliases) for e in grounded[:6]] == [True, False] * 3


def test_training_on_the_test_questions_is_refused(oracle, tmp_path):
    refuse_test_split(load_task(oracle, "nq_rc_unanswerable", split="train"), "train.jsonl")
    with pytest.raises(ValueError, match=r"NQ reading-comprehension test questions .*--split train"):
        refuse_test_split(load_task(oracle, limit=50), "all.jsonl")


def test_dpr_style_records_and_bad_ctxs(tmp_path):
    path = tmp_path / "nq.jsonl"
    rows = [{"question": "what colour is the sky", "answers": ["blue"],
             "ctxs": [{"title": "Sky", "text": "The sky is blue."}, {"title": "", "text": "Grass is green."}]},
            {"question": "what colour is grass", "answers": ["green"], "ctxs": [{"title": "Sun", "text": "Hot."}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one, two = load_task(path)
    assert one.documents == ["Title: Sky\nThe sky is blue.", "Grass is green."]
    assert "Passage 1:\nTitle: Sky" in build_prompt(one, "predict").messages[-1]["content"]
    path.write_text(json.dumps({"question": "q", "answers": ["a"], "ctxs": []}) + "\n")
    with pytest.raises(ValueError, match=r"nq.jsonl:1: 'ctxs' must be a non-empty list"):
        load_task(path)
