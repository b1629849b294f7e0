"""The CPU demo: SFT against SSR on the real SmolLM2-135M-Instruct, from nothing to a results table.

    python train.py                                # the same as python -m ssr.demo
    python -m ssr.demo --data-dir ../shared/data   # also samples of ARC, MMLU and TruthfulQA as probes
    python -m ssr.demo --quick                     # a smoke run of a minute or two (CI runs it)

The task (ssr/demo_data.py) is generated here: one-step word problems in GSM8K format ("Maya has 4
cookies and gets 7 more...", "... and gives away 3..."), judged like GSM8K; the base model solves
about two fifths of them, so SSR finds self-generated answers to keep and there is room to learn.
Retention is probed with a capital-cities quiz (NQ-open style) the base model mostly knows, plus any
benchmark found under --data-dir. Both methods start from the same base model with the same
examples, prompts, LoRA settings, steps and seed: only the targets differ, which is the comparison
the papers make.

Every step is cached under --out (default runs/demo): data, base evaluation, each method's targets,
training and evaluation. An interrupted demo continues; a finished one prints its table at once.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import ssr
from ssr import benchmarks, demo_data, lora
from ssr.evaluation import markdown_table, primary_score, run_benchmarks
from ssr.jsonl import check_settings, read_records, write_records
from ssr.pipeline import LoraSettings, run_method
from ssr.tasks import load_task
from ssr.trainer import TrainConfig

PROBE_BENCHMARKS = ("arc_easy", "arc_challenge", "mmlu", "truthfulqa_mc1")  # when found under --data-dir


@dataclass
class DemoSize:
    train: int = 128
    test: int = 64
    capitals: int = 48
    benchmark_limit: int = 100
    epochs: int = 3
    max_new_tokens: int = 128


QUICK = DemoSize(train=8, test=8, capitals=8, benchmark_limit=8, epochs=1, max_new_tokens=96)
LORA = LoraSettings(r=8, alpha=16, dropout=0.05, targets=("q_proj", "k_proj", "v_proj", "o_proj"))
LR = 5e-4  # higher than the papers' 1e-4: a 135M model and a few dozen steps


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    if not path.is_file():  # the data are a pure function of the seeds: written once, never changed
        write_records(path, rows)
    return path


def make_data(folder: Path, size: DemoSize) -> dict[str, Path]:
    train = demo_data.word_problems(demo_data.one_step, size.train, seed=1)
    test = demo_data.word_problems(demo_data.one_step, size.test, seed=2, exclude={r["question"] for r in train})
    return {"train": write_jsonl(folder / "train.jsonl", train),
            "test": write_jsonl(folder / "test.jsonl", test),
            "capitals": write_jsonl(folder / "capitals.jsonl", demo_data.capitals()[:size.capitals])}


def probes(data: dict[str, Path], data_dir: Path | None, size: DemoSize) -> dict[str, list]:
    """{benchmark: items} evaluated for every model: the target task first, then the retention probes."""
    items = {"word_problems": load_task(data["test"]), "capitals": load_task(data["capitals"])}
    for name in PROBE_BENCHMARKS if data_dir else ():
        try:
            items[name] = benchmarks.LOADERS[name](data_dir, size.benchmark_limit)
        except FileNotFoundError:
            pass  # a benchmark that is not there is simply not probed
    return items


def table(results: dict[str, dict], self_share: dict[str, float]) -> str:
    labels = list(results)
    names = list(results[labels[0]])
    rows = [["", *labels]]
    drops = {label: [] for label in labels[1:]}
    for name in names:
        scores = [100 * primary_score(name, results[label][name]) for label in labels]
        kind = "target" if name == "word_problems" else "retention"
        rows.append([f"{name} ({kind}, n={results[labels[0]][name]['n']})",
                     *[f"{s:.1f}" if i == 0 else f"{s:.1f} ({s - scores[0]:+.1f})" for i, s in enumerate(scores)]])
        if kind == "retention":
            for label, s in zip(labels[1:], scores[1:]):
                drops[label].append(scores[0] - s)
    rows.append(["average retention drop", "", *[f"{sum(d) / len(d):+.1f}" for d in drops.values()]])
    rows.append(["training targets from the model", "", *[f"{100 * self_share[label]:.0f}%" for label in labels[1:]]])
    return markdown_table(rows)


def run(out: Path, size: DemoSize, data_dir: Path | None = None, progress: bool = True) -> str:
    start = time.perf_counter()
    data = make_data(out / "data", size)
    items = probes(data, data_dir, size)
    train_examples = load_task(data["train"])
    tok = ssr.load_tokenizer(ssr.DEFAULT_MODEL)
    settings = {"size": size.__dict__, "lr": LR, "lora": LORA.__dict__}
    evaluate = dict(batch_size=16, max_new_tokens=size.max_new_tokens, progress=progress)

    results, self_share = {}, {}
    print("== base model", flush=True)
    results["base"] = run_benchmarks(ssr.load_model(ssr.DEFAULT_MODEL), tok, items, out / "eval" / "base.json",
                                     settings, **evaluate)
    for method in ("sft", "ssr"):
        print(f"== {method}", flush=True)
        run_dir = out / method
        check_settings(run_dir / "run.json", {"method": method, **settings}, str(run_dir))
        cfg = TrainConfig(epochs=size.epochs, lr=LR, warmup=0.1, micro_batch=4, grad_accum=2, save_every=20,
                          seed=0)
        adapter = run_method(method, ssr.load_model(ssr.DEFAULT_MODEL), tok, train_examples, run_dir,
                             lora_settings=LORA, train_config=cfg, batch_size=16,
                             max_new_tokens=size.max_new_tokens, progress=progress)
        targets = read_records(run_dir / "targets.jsonl")
        self_share[method] = sum(t["source"] != "gold" for t in targets) / len(targets)
        model = lora.load_adapter(ssr.load_model(ssr.DEFAULT_MODEL), adapter)
        results[method] = run_benchmarks(model, tok, items, out / "eval" / f"{method}.json", settings, **evaluate)
    report = table(results, self_share)
    (out / "results.md").write_text(report + "\n")
    print(f"\n{report}\n\n(accuracy in %; in brackets the change from the base model; "
          f"{time.perf_counter() - start:.0f} s; everything is cached under {out})")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where every step is cached")
    p.add_argument("--data-dir", type=Path, help="official benchmark files (layout of ../shared/data) to probe too")
    p.add_argument("--quick", action="store_true", help="a few examples and one epoch: checks that it runs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    out = args.out / "quick" if args.quick else args.out
    run(out, QUICK if args.quick else DemoSize(), args.data_dir, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
