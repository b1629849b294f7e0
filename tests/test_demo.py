"""The demo's generated task and its judge, and a quick run of the whole demo on the real default model."""
import re

import pytest

import demo
import ssr.harness.records
from ssr.harness import judges
from ssr.harness.tasks import to_example


def test_word_problems_are_deterministic_distinct_and_split_cleanly():
    a = demo.word_problems(demo.one_step, 100, seed=1)
    assert a == demo.word_problems(demo.one_step, 100, seed=1)
    assert len({r["question"] for r in a}) == 100
    assert {"gets" in r["question"] for r in a} == {True, False}  # both kinds of problem
    test = demo.word_problems(demo.one_step, 50, seed=2, exclude={r["question"] for r in a})
    assert not {r["question"] for r in test} & {r["question"] for r in a}


def test_gold_answers_are_judged_correct_and_a_changed_answer_wrong():
    rows = demo.word_problems(demo.one_step, 200, seed=3)
    for row in rows:
        example = to_example(row, 0, "gsm8k")
        a, b = map(int, re.findall(r"\d+", row["question"]))
        want = a + b if "gets" in row["question"] else a - b
        assert want > 0 and row["answer"].endswith(f"#### {want}")
        assert judges.judge(example, row["answer"]).correct
        assert judges.judge(example, f"The answer is {want}.").correct
        assert not judges.judge(example, f"The answer is {want + 1}.").correct
    for row in demo.capitals():
        example = to_example(row, 0, "nq")
        assert judges.judge(example, f"The capital is {row['answer'][0]}.").correct
        assert not judges.judge(example, "I do not know.").correct


def test_quick_demo_end_to_end_then_cached(tmp_path, monkeypatch, capsys):
    assert demo.main(["--quick", "--quiet", "--out", str(tmp_path)]) == 0
    out = tmp_path / "quick"
    report = (out / "results.md").read_text()
    for row in ("word_problems (target, n=8)", "capitals (retention, n=8)", "average change, retention",
                "training targets from the model"):
        assert row in report
    for method in ("sft", "ssr"):
        assert len((out / method / "targets.jsonl").read_text().splitlines()) == 8
        assert (out / method / "adapter" / "adapter_model.safetensors").is_file()
    assert len((out / "ssr" / "predict.jsonl").read_text().splitlines()) == 8
    # A second run reuses everything: no generation at all, the same table.
    monkeypatch.setattr(ssr.harness.records, "complete", lambda *a, **k: pytest.fail("generated again"))
    capsys.readouterr()
    assert demo.main(["--quick", "--quiet", "--out", str(tmp_path)]) == 0
    assert report.strip() in capsys.readouterr().out


@pytest.mark.slow
def test_base_model_accuracy_is_in_the_intended_band():
    """Measured once (42% on 64 problems, recorded in the README): between a third and two thirds."""
    import ssr
    from ssr.harness import tasks
    from ssr.sampling import complete
    from ssr.harness.records import prompt_ids

    model, tok = ssr.load_model(ssr.DEFAULT_MODEL), ssr.load_tokenizer(ssr.DEFAULT_MODEL)
    examples = [to_example(r, i, "gsm8k") for i, r in enumerate(demo.word_problems(demo.one_step, 64, 11))]
    done = complete(model, [prompt_ids(tok, tasks.build_prompt(e, "predict")) for e in examples], 128,
                    stop_ids=tok.stop_ids, batch_size=16)
    accuracy = sum(judges.judge(e, tok.decode(c.tokens)).correct for e, c in zip(examples, done)) / len(examples)
    assert 1 / 3 <= accuracy <= 2 / 3, accuracy
