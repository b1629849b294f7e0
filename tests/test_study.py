"""The study (study.py, ssr/harness/study.py): the demo's generated task and judge, a quick study end to end on the
real default model, targets shared across seeds, adding a seed trains only that seed, a finished study prints its
tables without a model, and a study killed from outside (SIGKILL) resumes to the same results."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ssr
import ssr.harness.pipeline
import ssr.harness.records
import ssr.harness.study
import study
from ssr.harness import demo_data, judges
from ssr.harness.tasks import to_example

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--preset", "quick", "--quiet"]


def test_word_problems_are_deterministic_distinct_and_split_cleanly():
    a = demo_data.word_problems(demo_data.one_step, 100, seed=1)
    assert a == demo_data.word_problems(demo_data.one_step, 100, seed=1)
    assert len({r["question"] for r in a}) == 100
    assert {"gets" in r["question"] for r in a} == {True, False}  # both kinds of problem
    test = demo_data.word_problems(demo_data.one_step, 50, seed=2, exclude={r["question"] for r in a})
    assert not {r["question"] for r in test} & {r["question"] for r in a}


def test_gold_answers_are_judged_correct_and_a_changed_answer_wrong():
    for row in demo_data.word_problems(demo_data.one_step, 200, seed=3):
        example = to_example(row, 0, "gsm8k")
        a, b = map(int, re.findall(r"\d+", row["question"]))
        want = a + b if "gets" in row["question"] else a - b
        assert want > 0 and row["answer"].endswith(f"#### {want}")
        assert judges.judge(example, row["answer"]).correct
        assert judges.judge(example, f"The answer is {want}.").correct
        assert not judges.judge(example, f"The answer is {want + 1}.").correct
    for row in demo_data.capitals():
        example = to_example(row, 0, "nq")
        assert judges.judge(example, f"The capital is {row['answer'][0]}.").correct
        assert not judges.judge(example, "I do not know.").correct


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick study with seed 0: its folder and a copy of its results.json."""
    out = tmp_path_factory.mktemp("study") / "quick"
    assert study.main([*QUICK, "--seeds", "0", "--out", str(out)]) == 0
    return out, (out / "results.json").read_bytes()


def test_quick_study_end_to_end(quick, capsys):
    out, first = quick
    results = json.loads(first)
    assert (results["methods"], results["seeds"]) == (["sft", "ssr"], [0])
    for method in ("sft", "ssr"):
        run = results["runs"][method]["0"]  # every benchmark's number and its per-question scores
        assert set(run) == {"word_problems", "capitals"}
        assert len(run["capitals"]["per_question"]["acc"]) == run["capitals"]["n"] == 8
        settings = json.loads((out / "runs" / method / "seed0" / "run.json").read_text())
        assert settings["train"]["seed"] == 0  # the training seed is the study seed
    assert results["base"]["word_problems"]["n"] == 8
    diff = results["differences"]["ssr"]["average change, retention"]
    assert diff["lo"] <= diff["diff"] <= diff["hi"] and (diff["seeds"], diff["questions"]) == (1, 8)
    assert set(results["summary"]["ssr"]["changes"]) == {"word_problems", "capitals", "average change, retention"}
    report = (out / "results.md").read_text()
    assert "| word_problems (target, n=8)" in report and "method - sft" in report and "95% interval" in report
    if _has_matplotlib():
        assert all((out / name).read_bytes().startswith(b"\x89PNG")
                   for name in ("tradeoff.png", "loss.png", "target_sources.png"))

    # A finished study prints its tables at once: no model loaded, nothing generated or trained.
    def fail(*a, **k):
        pytest.fail("loaded, generated or trained again")
    with pytest.MonkeyPatch.context() as m:
        for module, name in ((ssr, "load_model"), (ssr.harness.records, "complete"),
                             (ssr.harness.pipeline, "train")):
            m.setattr(module, name, fail)
        capsys.readouterr()
        assert study.main([*QUICK, "--seeds", "0", "--out", str(out)]) == 0
    assert report.strip() in capsys.readouterr().out
    assert (out / "results.json").read_bytes() == first


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
        return True
    except ImportError:
        return False


def test_adding_a_seed_trains_only_that_seed_on_the_same_targets(quick, tmp_path, monkeypatch):
    out = tmp_path / "quick"
    shutil.copytree(quick[0], out)
    before = tree(out)
    trained = []
    real_train = ssr.harness.pipeline.train
    monkeypatch.setattr(ssr.harness.pipeline, "train",
                        lambda model, samples, cfg, run_dir, **k: trained.append((Path(run_dir), cfg.seed))
                        or real_train(model, samples, cfg, run_dir, **k))
    assert study.main([*QUICK, "--seeds", "0", "1", "--out", str(out)]) == 0
    assert trained == [(out / "runs" / "sft" / "seed1", 1), (out / "runs" / "ssr" / "seed1", 1)]
    after = tree(out)
    # seed 0's runs, the base evaluation and the shared generations are untouched
    for name, data in before.items():
        if not name.startswith("results") and not name.endswith(".png"):
            assert after[name] == data, name
    # the base model's generations are shared: made once, the same targets for every seed
    assert not list(out.glob("runs/*/seed*/predict.jsonl"))
    for method in ("sft", "ssr"):
        assert after[f"runs/{method}/seed0/targets.jsonl"] == after[f"runs/{method}/seed1/targets.jsonl"]
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [0, 1] and set(results["runs"]["ssr"]) == {"0", "1"}
    assert results["differences"]["ssr"]["capitals"]["seeds"] == 2


def test_study_killed_from_outside_resumes_to_the_same_results(quick, tmp_path):
    """SIGKILL once the first training run has logged a step (a point on disk, not a time), then the same
    command again: the same results.json as the study that was never interrupted."""
    out = tmp_path / "quick"
    cmd = [sys.executable, str(ROOT / "study.py"), *QUICK, "--seeds", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mark = out / "runs" / "sft" / "seed0" / "metrics.jsonl"
    while not (mark.is_file() and mark.stat().st_size) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the study ended before the kill point"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "cached" in done.stdout  # the base evaluation was not redone
    assert (out / "results.json").read_bytes() == quick[1]


def test_study_flags_refused_in_one_line(tmp_path, capsys):
    assert study.main([*QUICK, "--methods", "s3ft", "--recipe", "sdft", "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --method s3ft --recipe sdft: ") and err.count("\n") == 1
    assert study.main([*QUICK, "--methods", "sft", "--recipe", "sdft", "--out", str(tmp_path / "a")]) == 1
    assert "Llama-2-chat's format" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert study.main([*QUICK, "--preset", "gsm8k", "--out", str(tmp_path / "b")]) == 1
    assert "give --data-dir" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        study.main([*QUICK, "--seeds", "-1"])
    assert e.value.code == 2 and "--seeds" in capsys.readouterr().err
