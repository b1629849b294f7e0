"""The study's statistics: mean ± sd over seeds, the retention average's exclusions, the paired bootstrap
against SFT, the tables, and the figures."""
import json
import sys

import numpy as np
import pytest

import ssr
from ssr.harness import study_stats
from ssr.harness.evaluation import MCQuestion, drop_table, score_questions
from ssr.harness.study_stats import AVERAGE, paired_differences, summarize


def result(per_question, kind=None, metric="acc"):
    """A run_benchmarks result of these per-question scores."""
    out = {metric: sum(per_question) / len(per_question), "n": len(per_question),
           "per_question": {metric: list(per_question)}}
    return {**out, "kind": kind} if kind else out


def correct(k, n=10):
    return [1] * k + [0] * (n - k)


def cells(table: str) -> list[list[str]]:
    """A markdown table's rows as stripped cells (row 1 is the |---| line)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("|")]


def study():
    """Accuracies in tenths: base word_problems 5, capitals 8, arc 6; three SFT seeds, one SSR seed."""
    # arc_easy: no "kind", a known retention benchmark by drop_table's rule, reported by acc_norm
    base = {"word_problems": result(correct(5), "target"), "capitals": result(correct(8), "retention"),
            "arc_easy": result(correct(6), metric="acc_norm")}
    runs = {"sft": {seed: {"word_problems": result(correct(w), "target"), "capitals": result(correct(c), "retention"),
                           "arc_easy": result(correct(a), metric="acc_norm")}
                    for seed, (w, c, a) in enumerate([(9, 6, 6), (10, 7, 5), (8, 5, 7)])},
            "ssr": {0: {"word_problems": result(correct(9), "target"), "capitals": result(correct(8), "retention"),
                        "arc_easy": result(correct(5), metric="acc_norm")}}}
    return base, runs


def test_mean_and_sample_sd_over_seeds_and_change_from_base():
    base, runs = study()
    summary = summarize(base, runs)
    sft = summary["sft"]
    # word_problems 90, 100, 80: mean 90, sample sd sqrt((100 + 0 + 100) / 2) = 10; change from 50
    assert (sft.scores["word_problems"].mean, sft.scores["word_problems"].sd) == pytest.approx((90.0, 10.0))
    assert sft.changes["word_problems"].mean == pytest.approx(40.0)
    assert (sft.changes["capitals"].mean, sft.changes["capitals"].sd) == pytest.approx((-20.0, 10.0))
    assert sft.scores["arc_easy"].n == 3
    # the average change over capitals and arc_easy per seed: (-20 + 0) / 2, (-10 - 10) / 2, (-30 + 10) / 2
    assert (sft.changes[AVERAGE].mean, sft.changes[AVERAGE].sd) == pytest.approx((-10.0, 0.0))
    ssr_ = summary["ssr"]
    assert ssr_.scores["word_problems"].sd is None and ssr_.changes[AVERAGE].sd is None  # one seed: no sd
    assert ssr_.changes[AVERAGE].mean == pytest.approx((0.0 - 10.0) / 2)
    rows = cells(study_stats.summary_table(base, summary))
    assert rows[0] == ["benchmark", "base", "sft (3 seeds)", "ssr (1 seed)"]
    assert rows[2] == ["word_problems (target, n=10)", "50.0", "90.0 ± 10.0 (+40.0)", "90.0 (+40.0)"]
    assert rows[-1] == [f"{AVERAGE} (2)", "", "-10.0 ± 0.0", "-5.0"]


def test_target_tasks_and_excluded_benchmarks_are_not_averaged():
    base, runs = study()
    one_seed = {"base": base, "sft": runs["sft"][0], "ssr": runs["ssr"][0]}
    # kinds from the results: word_problems is a target; the same average as evaluate.py --compare's table
    assert summarize(base, runs)["ssr"].changes[AVERAGE].mean == pytest.approx(-5.0)
    assert "| -5.0 " in drop_table(one_seed).splitlines()[-1]
    # explicit targets and exclude, as drop_table takes them
    excluded = summarize(base, runs, exclude={"arc_easy"})
    assert excluded["ssr"].changes[AVERAGE].mean == pytest.approx(0.0)
    assert "| +0.0 " in drop_table(one_seed, exclude={"arc_easy"}).splitlines()[-1]
    as_target = summarize(base, runs, targets={"word_problems", "capitals"})
    assert as_target["sft"].changes[AVERAGE].mean == pytest.approx(np.mean([0.0, -10.0, 10.0]))
    table = study_stats.summary_table(base, excluded, exclude={"arc_easy"})
    assert "arc_easy (excluded, n=10)" in table and f"{AVERAGE} (1)" in table


def test_identical_methods_differ_by_exactly_zero():
    base, runs = study()
    runs["same"] = runs["sft"]
    diff = paired_differences(base, runs, B=200)["same"]
    for d in diff.values():
        assert (d.diff, d.lo, d.hi, d.seeds) == (0.0, 0.0, 0.0, 3) and not d.significant
    assert "no significant difference" in study_stats.difference_table({"same": diff})


def test_bootstrap_interval_of_a_case_computable_by_hand():
    # one question right for the method and wrong for SFT, one wrong for both: per-question differences 100 and
    # 0. The bootstrap mean is 0 (p 1/4), 50 (1/2) or 100 (1/4), so the 2.5% and 97.5% points are 0 and 100.
    base = {"q": result([0, 0], "target")}
    runs = {"sft": {0: {"q": result([0, 0], "target")}}, "m": {0: {"q": result([1, 0], "target")}}}
    d = paired_differences(base, runs)["m"]["q"]
    assert (d.diff, d.lo, d.hi, d.seeds, d.questions) == (50.0, 0.0, 100.0, 1, 2)
    assert cells(study_stats.difference_table({"m": {"q": d}}))[2] == \
        ["q", "m", "+50.0", "[+0.0, +100.0]", "1 × 2", "no significant difference"]


def draws(seed, shape, p):
    return (np.random.default_rng(seed).random(shape) < p).astype(int)


def test_paired_bootstrap_equals_a_direct_reimplementation():
    # two seeds, two retention benchmarks of 30 and 50 questions; SFT has a third seed that SSR lacks
    n = {"a": 30, "b": 50}
    sft = {s: {k: draws(10 + s, n[k], 0.5) for k in n} for s in range(3)}
    ssr_ = {s: {k: draws(20 + s, n[k], 0.7) for k in n} for s in range(2)}
    base = {k: result(draws(0, n[k], 0.6), "retention") for k in n}
    runs = {"sft": {s: {k: result(v, "retention") for k, v in r.items()} for s, r in sft.items()},
            "ssr": {s: {k: result(v, "retention") for k, v in r.items()} for s, r in ssr_.items()}}
    got = paired_differences(base, runs, B=500, seed=7)["ssr"]

    # the statistic as the brief states it: per replicate, per benchmark one draw of question indices (the same
    # for both methods and every seed), the mean over seeds of (method accuracy - SFT accuracy)
    rng, reps = np.random.default_rng(7), []
    for _ in range(500):
        per_benchmark = []
        for k in n:
            idx = rng.integers(0, n[k], n[k])
            per_benchmark.append(np.mean([100 * (ssr_[s][k][idx].mean() - sft[s][k][idx].mean()) for s in range(2)]))
        reps.append(np.mean(per_benchmark))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    average = got[AVERAGE]
    assert (average.lo, average.hi) == pytest.approx((lo, hi), abs=1e-9)
    assert average.diff == pytest.approx(np.mean([100 * np.mean([ssr_[s][k].mean() - sft[s][k].mean()
                                                                 for s in range(2)]) for k in n]))
    assert (average.seeds, average.questions, got["a"].questions) == (2, 80, 30)


def test_bootstrap_interval_matches_the_normal_approximation():
    # many questions: the percentile interval is close to mean ± 1.96 standard errors
    m, f = draws(1, 2000, 0.6), draws(2, 2000, 0.5)
    base = {"q": result(f, "target")}
    d = paired_differences(base, {"sft": {0: {"q": result(f, "target")}}, "m": {0: {"q": result(m, "target")}}},
                           B=2000)["m"]["q"]
    se = 100 * np.std(m - f, ddof=1) / np.sqrt(len(m))
    assert d.significant and d.lo == pytest.approx(d.diff - 1.96 * se, abs=0.15 * se)
    assert d.hi == pytest.approx(d.diff + 1.96 * se, abs=0.15 * se)


def test_the_reported_metric_is_bootstrapped_and_old_results_are_refused():
    base, runs = study()
    decoy = runs["ssr"][0]["arc_easy"]  # an acc beside the acc_norm that ARC is reported by must not count
    decoy.update(acc=1.0, per_question={**decoy["per_question"], "acc": [1] * 10})
    # arc_easy acc_norm: ssr 50 against sft 60 on seed 0 (the one seed they share)
    assert paired_differences(base, runs, B=50)["ssr"]["arc_easy"].diff == pytest.approx(-10.0)
    del runs["ssr"][0]["capitals"]["per_question"]
    with pytest.raises(ValueError, match="ssr seed 0: capitals keeps no per-question acc"):
        paired_differences(base, runs, B=50)
    del runs["ssr"][0]["capitals"]
    with pytest.raises(ValueError, match="ssr seed 0: no result for capitals"):
        paired_differences(base, runs, B=50)


def test_score_questions_keeps_per_question_scores_in_order(shared):
    folder = shared / "models" / "stories260K" / "hf"
    model, tok = ssr.load_model(folder), ssr.load_tokenizer(folder)
    q = MCQuestion("q", "Once upon a time, there was a little", ["girl", "xylophone zebra"], [1, 0])
    wrong = MCQuestion("w", "Once upon a time, there was a little", ["girl", "xylophone zebra"], [0, 1])
    scored = score_questions(model, tok, [q, wrong, q], progress=False)
    assert scored["per_question"]["acc"] == [1, 0, 1]
    for metric in ("acc", "acc_norm", "mc2"):
        assert scored[metric] == pytest.approx(np.mean(scored["per_question"][metric]))


def write_runs(tmp_path):
    run_dirs = {}
    for method, sources in {"sft": ["gold"] * 8, "ssr": ["self"] * 5 + ["gold"] * 3}.items():
        run_dirs[method] = {}
        for seed in range(2):
            folder = tmp_path / method / str(seed)
            folder.mkdir(parents=True)
            (folder / "metrics.jsonl").write_text("".join(
                json.dumps({"step": s, "loss": 2.0 / s + 0.1 * seed}) + "\n" for s in range(1, 21)))
            (folder / "targets.jsonl").write_text("".join(json.dumps({"id": str(i), "source": src}) + "\n"
                                                          for i, src in enumerate(sources)))
            run_dirs[method][seed] = folder
    return run_dirs


def test_figures_are_written(tmp_path):
    pytest.importorskip("matplotlib", reason="figures need matplotlib (pip install matplotlib)")
    base, runs = study()
    runs["ssr"][1] = runs["sft"][1]
    paths = study_stats.write_figures(tmp_path / "figures", base, runs, write_runs(tmp_path))
    assert [p.name for p in paths] == ["tradeoff.png", "loss.png", "target_sources.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_without_matplotlib_the_figures_say_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    base, runs = study()
    message = study_stats.write_figures(tmp_path, base, runs, write_runs(tmp_path))
    assert message == study_stats.NO_MATPLOTLIB and "pip install matplotlib" in message
    assert not list(tmp_path.glob("*.png"))
