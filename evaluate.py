"""Evaluate a model (optionally with a LoRA adapter) on target tasks and retention benchmarks.

    python evaluate.py --model DIR [--adapter RUN/adapter] --tasks gsm8k,mmlu,arc_challenge \\
        --data-dir ../shared/data [--limit 200] --out results/base.json
    python evaluate.py --compare results/base.json results/sft.json results/ssr.json

Target tasks (gsm8k, mbpp, nq, or NAME=FILE for any task file in those formats) are answered greedily
with the task prompts of ssr/prompts.py and judged by ssr/judges.py: GSM8K accuracy, MBPP pass@1,
NQ-open accuracy (contains; exact match reported beside it). Retention benchmarks (mmlu, arc_easy,
arc_challenge, truthfulqa_mc1, truthfulqa_mc2, hellaswag) are scored by log-likelihood multiple
choice with the formats of ssr/benchmarks.py. --limit takes the same fixed-seed sample for every model.

Each finished benchmark is written to --out at once; a rerun skips those already there (and target
tasks resume their generations from the files beside --out), so an interrupted run loses little.
--compare prints every benchmark's score per run, its drop from the first (base) file, and the
average drop: the papers' headline number.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import ssr
from ssr import benchmarks, judges, lora
from ssr.checkpoint import default_dtype
from ssr.evaluation import PRIMARY, TARGET_FILES, markdown_table, primary_score, run_benchmarks, target_examples


def parse_tasks(spec: str, data_dir: Path | None) -> dict[str, tuple[str, Path | None]]:
    """{name: (kind, file)}: kind is "target" or "mc"; NAME=FILE names a task file directly."""
    tasks = {}
    for item in filter(None, (t.strip() for t in spec.split(","))):
        name, _, file = item.partition("=")
        if file:
            tasks[name] = ("target", Path(file))
        elif name in TARGET_FILES or name in benchmarks.LOADERS:
            if data_dir is None:
                raise SystemExit(f"error: --data-dir is needed to find {name!r}")
            kind = "target" if name in TARGET_FILES else "mc"
            tasks[name] = (kind, data_dir / TARGET_FILES[name] if kind == "target" else None)
        else:
            raise SystemExit(f"error: unknown task {name!r}; choose from {', '.join([*TARGET_FILES, *benchmarks.LOADERS])}"
                             ", or give NAME=FILE for a task file")
    return tasks


def results_table(results: dict) -> str:
    rows = [["benchmark", "metric", "score", "n"]]
    for name, r in results.items():
        rows.append([name, PRIMARY.get(name, "acc"), f"{100 * primary_score(name, r):.1f}", str(r["n"])])
    return markdown_table(rows)


def compare(files: list[str], exclude: set[str]) -> str:
    """Scores per run (in points), each run's drop from the first file, and the average drop."""
    runs = [json.loads(Path(f).read_text()) for f in files]
    names = [n for n in runs[0]["results"] if all(n in r["results"] for r in runs)]
    if not names:
        raise SystemExit("error: the result files share no benchmark")
    labels = [Path(f).stem for f in files]
    rows = [["benchmark", labels[0]] + [f"{label} (drop)" for label in labels[1:]]]
    drops = {label: [] for label in labels[1:]}
    for name in names:
        base = 100 * primary_score(name, runs[0]["results"][name])
        row = [name, f"{base:.1f}"]
        for label, run in zip(labels[1:], runs[1:]):
            value = 100 * primary_score(name, run["results"][name])
            row.append(f"{value:.1f} ({base - value:+.1f})")
            if name not in exclude:
                drops[label].append(base - value)
        rows.append(row)
    counted = [n for n in names if n not in exclude]
    rows.append([f"average drop ({len(counted)})", ""] +
                [f"{sum(d) / len(d):+.1f}" if d else "-" for d in drops.values()])
    note = f"\n(drop = first file minus run, in points; average over all but {', '.join(sorted(exclude))})" \
        if exclude else "\n(drop = first file minus run, in points)"
    return markdown_table(rows) + note


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--compare", nargs="+", metavar="RESULT.json", help="print the drop table of result files "
                                                                      "(the first is the base)")
    p.add_argument("--exclude", default="", help="with --compare: benchmarks left out of the average drop "
                                                 "(e.g. the target task)")
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the built-in default")
    p.add_argument("--adapter", help="a LoRA adapter folder (PEFT format) to apply")
    p.add_argument("--tasks", default="gsm8k,mmlu,arc_easy,arc_challenge,truthfulqa_mc1,truthfulqa_mc2",
                   help="comma-separated: " + ", ".join([*TARGET_FILES, *benchmarks.LOADERS]) + ", or NAME=FILE")
    p.add_argument("--data-dir", type=Path, help="folder with the official files (layout of ../shared/data)")
    p.add_argument("--limit", type=int, help="at most this many questions per benchmark (a fixed-seed sample)")
    p.add_argument("--out", type=Path, help="results JSON (updated after each benchmark)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts generated together")
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per scoring forward pass")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--nq-mode", choices=judges.NQ_MODES, default="contains")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: bfloat16 on CUDA, float32 on CPU")
    args = p.parse_args(argv)

    if args.compare:
        print(compare(args.compare, {t.strip() for t in args.exclude.split(",") if t.strip()}))
        return 0
    if args.out is None:
        p.error("--out is required (or --compare)")
    tasks = parse_tasks(args.tasks, args.data_dir)
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype(args.device)
    settings = {"model": str(args.model), "adapter": args.adapter, "limit": args.limit, "dtype": str(dtype),
                "max_new_tokens": args.max_new_tokens, "nq_mode": args.nq_mode}
    items = {}
    for name, (kind, file) in tasks.items():
        items[name] = target_examples(name, file, args.limit) if kind == "target" \
            else benchmarks.LOADERS[name](args.data_dir, args.limit)
    model = ssr.load_model(args.model, dtype=dtype, device=args.device)
    if args.adapter:
        lora.load_adapter(model, args.adapter)
    tok = ssr.load_tokenizer(args.model)
    try:
        results = run_benchmarks(model, tok, items, args.out, settings, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, batch_tokens=args.batch_tokens,
                                 nq_mode=args.nq_mode)
    except ValueError as e:
        p.error(str(e))
    print(results_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
