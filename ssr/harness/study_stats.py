"""The statistics and figures of a forgetting study: methods x seeds, each evaluated beside one base model.

Inputs are run_benchmarks results ({benchmark: result}): `base`, and `runs` = {method: {seed: results}}, all
scored on the same questions. Everything is in points (accuracy x 100) and every change is run - base, so
forgetting is negative (as in evaluation.drop_table). Target tasks (`targets`, else the results' "kind") and
`exclude` are left out of the average retention change, by drop_table's rule.

The paired difference of a method against SFT is paired twice: over seeds (seed s of the method against seed
s of SFT) and over questions. Its interval is a percentile bootstrap over questions. The trap avoided:
resampling each seed's (or each method's) questions apart. Every model answered the same questions, so a
question hard for one seed tends to be hard for the others; independent draws would ignore that and give too
narrow intervals. One draw of question indices serves every seed and both methods (per benchmark).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssr.harness.evaluation import PRIMARY, markdown_table, primary_score
from ssr.harness.runfiles import read_records

AVERAGE = "average change, retention"
SOURCES = ("gold", "self", "paraphrase", "rewrite")  # methods.SOURCES: where a training target came from
SOURCE_COLORS = ("0.6", "tab:cyan", "tab:pink", "tab:olive")  # apart from the methods' C0, C1, ...
NO_MATPLOTLIB = "no figures: matplotlib is not installed (pip install matplotlib)"


@dataclass
class Stat:
    mean: float
    sd: float | None  # sample sd (ddof=1); None for one seed, where there is no spread to measure
    n: int  # seeds


@dataclass
class Diff:
    diff: float  # mean over paired seeds of (method - reference), in points
    lo: float
    hi: float  # the 95% percentile bootstrap interval
    seeds: int
    questions: int

    @property
    def significant(self) -> bool:
        return not self.lo <= 0.0 <= self.hi


def stat(values) -> Stat:
    values = np.asarray(values, dtype=float)
    return Stat(float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None, len(values))


def split(base: dict, targets=None, exclude=()) -> tuple[list[str], list[str]]:
    """(target tasks, the retention benchmarks averaged), by drop_table's rule."""
    def is_target(name):
        if targets is not None:
            return name in targets
        return base[name].get("kind", "retention" if name in PRIMARY else "target") == "target"
    return [n for n in base if is_target(n)], [n for n in base if not is_target(n) and n not in exclude]


def changes(base: dict, results: dict, averaged: list[str], where: str) -> dict[str, float]:
    """{benchmark: run - base in points} and AVERAGE, the mean change over `averaged`."""
    missing = [name for name in base if name not in results]
    if missing:
        raise ValueError(f"{where}: no result for {', '.join(missing)}")
    out = {name: 100 * (primary_score(name, results[name]) - primary_score(name, base[name])) for name in base}
    return {**out, AVERAGE: float(np.mean([out[n] for n in averaged])) if averaged else float("nan")}


@dataclass
class MethodSummary:
    scores: dict[str, Stat]  # benchmark -> score in points
    changes: dict[str, Stat]  # benchmark and AVERAGE -> run - base in points


def summarize(base: dict, runs: dict[str, dict], targets=None, exclude=()) -> dict[str, MethodSummary]:
    """Per method: mean ± sd over seeds of every score and of its change from base."""
    _, averaged = split(base, targets, exclude)
    out = {}
    for method, seeds in runs.items():
        per_seed = [changes(base, results, averaged, f"{method} seed {seed}") for seed, results in seeds.items()]
        out[method] = MethodSummary(
            {n: stat([100 * primary_score(n, results[n]) for results in seeds.values()]) for n in base},
            {key: stat([c[key] for c in per_seed]) for key in per_seed[0]})
    return out


def outcomes(name: str, results: dict, where: str) -> np.ndarray:
    """The per-question scores behind a benchmark's reported score, in question order."""
    if name not in results:
        raise ValueError(f"{where}: no result for {name}")
    result = results[name]
    metric = result.get("metric") or PRIMARY.get(name, "acc")
    if metric not in result.get("per_question", {}):
        raise ValueError(f"{where}: {name} keeps no per-question {metric} (scored before evaluation kept them); "
                         "remove it from the results file to score it again")
    return np.asarray(result["per_question"][metric], dtype=float)


def bootstrap(diffs: list[np.ndarray], B: int = 2000, seed: int = 0) -> np.ndarray:
    """B bootstrap replicates of the mean over benchmarks of the mean per-question difference.
    diffs: one (seeds, questions) array per benchmark; each replicate draws one set of question indices per
    benchmark, shared by all seeds (with a fresh Generator of `seed`, so a call is reproducible)."""
    rng = np.random.default_rng(seed)
    per_question = [d.mean(axis=0) for d in diffs]  # over seeds: the indices are shared, so this is exact
    out = np.empty(B)
    for b in range(B):
        out[b] = np.mean([d[rng.integers(0, len(d), len(d))].mean() for d in per_question])
    return out


def paired_differences(base: dict, runs: dict[str, dict], reference: str = "sft", targets=None, exclude=(),
                       B: int = 2000, seed: int = 0) -> dict[str, dict[str, Diff]]:
    """{method: {benchmark or AVERAGE: Diff}}: method - reference, paired over their common seeds and over
    questions (see the module's docstring)."""
    if reference not in runs:
        raise ValueError(f"paired differences: no {reference!r} runs to compare against (have {', '.join(runs)})")
    _, averaged = split(base, targets, exclude)
    out = {}
    for method, seeds in runs.items():
        if method == reference:
            continue
        common = [s for s in seeds if s in runs[reference]]
        if not common:
            raise ValueError(f"paired differences: {method} and {reference} share no seed")
        diffs = {}
        for name in base:
            ours = [outcomes(name, seeds[s], f"{method} seed {s}") for s in common]
            theirs = [outcomes(name, runs[reference][s], f"{reference} seed {s}") for s in common]
            if any(len(x) != base[name]["n"] for x in ours + theirs):
                raise ValueError(f"paired differences: {name} holds other than the base's {base[name]['n']} "
                                 f"questions in {method} or {reference}")
            diffs[name] = 100 * (np.stack(ours) - np.stack(theirs))
        out[method] = {}
        for key, names in [*((n, [n]) for n in base), *([(AVERAGE, averaged)] if averaged else [])]:
            lo, hi = np.percentile(bootstrap([diffs[n] for n in names], B, seed), [2.5, 97.5])
            value = float(np.mean([diffs[n].mean() for n in names]))
            out[method][key] = Diff(value, float(lo), float(hi), len(common), sum(diffs[n].shape[1] for n in names))
    return out


def _signed(x: float) -> str:
    return f"{round(x, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0"


def summary_table(base: dict, summary: dict[str, MethodSummary], targets=None, exclude=()) -> str:
    """Each benchmark's mean ± sd over seeds (in points) with the mean change from base in brackets, and the
    average retention change ± sd."""
    target_names, averaged = split(base, targets, exclude)
    header = ["benchmark", "base", *[f"{m} ({s.changes[AVERAGE].n} seed{'s' * (s.changes[AVERAGE].n > 1)})"
                                     for m, s in summary.items()]]
    def spread(st: Stat) -> str:
        return f" ± {st.sd:.1f}" if st.sd is not None else ""

    rows = [header]
    for name in base:
        kind = "target" if name in target_names else "retention" if name in averaged else "excluded"
        rows.append([f"{name} ({kind}, n={base[name]['n']})", f"{100 * primary_score(name, base[name]):.1f}",
                     *[f"{s.scores[name].mean:.1f}{spread(s.scores[name])} ({_signed(s.changes[name].mean)})"
                       for s in summary.values()]])
    rows.append([f"{AVERAGE} ({len(averaged)})", "",
                 *[f"{_signed(s.changes[AVERAGE].mean)}{spread(s.changes[AVERAGE])}" for s in summary.values()]])
    return markdown_table(rows) + "\n(points; mean ± sample sd over seeds, no sd for one seed; in brackets the " \
                                  "mean change from base, run - base: forgetting is negative)"


def difference_table(diffs: dict[str, dict[str, Diff]], reference: str = "sft") -> str:
    """method - reference per benchmark with its 95% bootstrap interval and n (paired seeds x questions)."""
    rows = [["benchmark", "method", f"method - {reference}", "95% interval", "n (seeds × questions)", ""]]
    for method, by_name in diffs.items():
        for name, d in by_name.items():
            verdict = ("higher" if d.lo > 0 else "lower") if d.significant else "no significant difference"
            rows.append([name, method, _signed(d.diff), f"[{_signed(d.lo)}, {_signed(d.hi)}]",
                         f"{d.seeds} × {d.questions}", verdict])
    return markdown_table(rows) + "\n(points; paired over seeds and questions, percentile bootstrap over questions)"


# ---------------------------------------------------------------------------------------------------------
# figures, when matplotlib is installed


def _pyplot():
    """pyplot on the Agg backend (files, no display: works on a headless machine), or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a study run's folder holds it)")
    return read_records(path)


def write_figures(folder, base: dict, runs: dict[str, dict], run_dirs: dict[str, dict], targets=None,
                  exclude=()) -> list[Path] | str:
    """tradeoff.png (target gain against average retention change), loss.png (training loss over steps) and
    target_sources.png (where the training targets came from) in `folder`; NO_MATPLOTLIB without matplotlib.
    run_dirs: {method: {seed: the run's folder, holding metrics.jsonl and targets.jsonl}}."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    colors = {m: f"C{i}" for i, m in enumerate(dict.fromkeys([*runs, *run_dirs]))}  # one colour a method
    figures = [("tradeoff.png", _tradeoff, (base, runs, colors, targets, exclude)),
               ("loss.png", _loss, (run_dirs, colors)), ("target_sources.png", _sources, (run_dirs,))]
    paths = []
    for name, draw, args in figures:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        draw(ax, *args)
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        paths.append(folder / name)
    return paths


def _tradeoff(ax, base, runs, colors, targets, exclude):
    target_names, averaged = split(base, targets, exclude)
    if not target_names:
        raise ValueError("figures: no target task to plot the retention change against")
    ax.axhline(0, color="0.6", lw=0.8, ls="--")
    ax.axvline(0, color="0.6", lw=0.8, ls="--")
    ax.annotate("base", (0, 0), textcoords="offset points", xytext=(4, 4), color="0.4")
    for method, seeds in runs.items():
        per_seed = [changes(base, r, averaged, f"{method} seed {s}") for s, r in seeds.items()]
        x = np.array([np.mean([c[n] for n in target_names]) for c in per_seed])
        y = np.array([c[AVERAGE] for c in per_seed])
        ax.scatter(x, y, s=14, alpha=0.5, color=colors[method])
        ax.errorbar(x.mean(), y.mean(), xerr=stat(x).sd, yerr=stat(y).sd, fmt="o", ms=8, capsize=4,
                    color=colors[method], label=f"{method} ({len(x)} seed{'s' * (len(x) > 1)})")
    target_label = target_names[0] if len(target_names) == 1 else "mean over target tasks"
    ax.set(xlabel=f"target gain, {target_label} (points)",
           ylabel=f"average retention change, {len(averaged)} benchmarks (points)")
    ax.set_title("Learning against forgetting\n(mean ± sd over seeds; small points: single seeds)", fontsize=10)
    ax.legend(frameon=False, loc="best")


def _loss(ax, run_dirs, colors):
    for method, seeds in run_dirs.items():
        for i, run_dir in enumerate(seeds.values()):
            rows = _records(Path(run_dir) / "metrics.jsonl")
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, alpha=0.8, color=colors[method],
                    label=method if i == 0 else None)
    ax.set(xlabel="step", ylabel="training loss", title="Training loss (one line per seed)")
    ax.legend(frameon=False)


def _sources(ax, run_dirs):
    counts = {m: [np.mean([sum(t["source"] == src for t in _records(Path(d) / "targets.jsonl"))
                           for d in seeds.values()]) for src in SOURCES] for m, seeds in run_dirs.items()}
    bottom = np.zeros(len(counts))
    for j, src in enumerate(SOURCES):
        heights = np.array([c[j] for c in counts.values()])
        if heights.any():
            ax.bar(list(counts), heights, bottom=bottom, label=src, color=SOURCE_COLORS[j])
            bottom += heights
    ax.set(ylabel="training targets (mean over seeds)", title="Where the training targets came from")
    ax.legend(frameon=False, loc="upper left", bbox_to_anchor=(1, 1))
