"""Retention metrics as lm-evaluation-harness defines them, on real items of ../shared/data.

lm-eval's multiple_choice tasks score `target_delimiter + choice` (the delimiter a space) and compute acc_norm as
argmax(loglikelihood / len(choice)), the choice's length WITHOUT the delimiter (api/task.py, process_results).
Its MMLU template (mmlu/default/_default_template_yaml) is the description "The following are multiple choice
questions (with answers) about {subject with spaces}.\\n\\n" then
"{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:",
the options as written (not stripped), choices "A".."D".
"""
import csv

import pytest

import ssr
from ssr.harness import evaluation
from ssr.harness.evaluation import MCQuestion, loglikelihoods, score_questions, split_tokens


def lm_eval_mmlu(subject: str, row: list[str]) -> str:
    question, a, b, c, d, _ = row
    description = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
    return description + f"{question.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"


def test_mmlu_prompts_are_lm_evals_on_every_question(shared):
    folder = shared / "data" / "mmlu" / "test"
    expected, spaced = {}, 0
    for file in sorted(folder.glob("*_test.csv")):
        subject = file.name.removesuffix("_test.csv")
        with open(file, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                expected[f"{subject}/{i}"] = lm_eval_mmlu(subject, row)
                spaced += any(option != option.strip() for option in row[1:5])
    questions = evaluation.load_mmlu(shared / "data")
    assert len(questions) == len(expected) == 14042 and spaced == 41  # 41 options carry outer whitespace
    assert all(q.context == expected[q.id] for q in questions)
    assert all(q.choices == ["A", "B", "C", "D"] and q.delimiter == " " for q in questions)
    college = {q.id: q for q in questions}["college_mathematics/9"]
    assert "\nD.  Both (a) and (b).\nAnswer:" in college.context  # the option's own leading space is kept


def test_acc_norm_divides_by_the_choice_without_its_delimiter(monkeypatch):
    # log-likelihoods -2.1 for "ab" and -6.0 for "abcdef": per character of the choice -1.05 < -1.0, so lm-eval
    # picks "abcdef"; divided by len(" " + choice) the pick would flip (-0.70 > -0.86).
    monkeypatch.setattr(evaluation, "loglikelihoods", lambda model, requests, **kw: [-2.1, -6.0])
    q = MCQuestion("q", "context", ["ab", "abcdef"], [0, 1])
    result = score_questions(None, FakeTok(), [q], progress=False)
    assert result["acc"] == 0.0 and result["acc_norm"] == 1.0


class FakeTok:
    bos_id, add_bos = None, False

    def encode(self, text):
        return [ord(ch) for ch in text]


def test_acc_and_acc_norm_equal_lm_evals_definitions_on_real_arc_items(shared):
    folder = shared / "models" / "stories260K" / "hf"
    model, tok = ssr.load_model(folder), ssr.load_tokenizer(folder)
    questions = evaluation.LOADERS["arc_challenge"](shared / "data", limit=40)
    result = score_questions(model, tok, questions, progress=False)
    acc = acc_norm = 0
    for q in questions:  # lm-eval: requests (context, " " + choice); acc_norm over len(choice)
        lls = loglikelihoods(model, [split_tokens(tok, q.context, " " + c) for c in q.choices], progress=False)
        acc += q.labels[max(range(len(lls)), key=lambda j: lls[j])]
        acc_norm += q.labels[max(range(len(lls)), key=lambda j: lls[j] / len(q.choices[j]))]
    assert result["acc"] == pytest.approx(acc / len(questions))
    assert result["acc_norm"] == pytest.approx(acc_norm / len(questions))
