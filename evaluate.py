"""Evaluate a model (optionally with a LoRA adapter) on target tasks and retention benchmarks.

    python evaluate.py --model DIR [--adapter RUN/adapter] --tasks gsm8k,mmlu,arc_challenge \\
        --data-dir ../shared/data [--limit 200] --out results/base.json
    python evaluate.py --compare results/base.json results/sft.json results/ssr.json

Target tasks (gsm8k, mbpp, nq, squad2, or NAME=FILE for any task file in those formats) are answered
greedily with the task prompts of ssr/harness/tasks/ and judged by their rule judges (or an LLM judge, --judge llm):
GSM8K accuracy, MBPP pass@1, NQ-open accuracy (contains; exact match reported beside it), SQuAD 2.0 as
SSR reports it (answerable_recall: token recall of the gold answer; unanswerable_rate: how often the model
declines; answerable_acc / acc: the judge's accuracy; recall_or_declined: both together). Retention
benchmarks (mmlu, arc_easy, arc_challenge, truthfulqa_mc1, truthfulqa_mc2, hellaswag, winogrande) are scored
by log-likelihood multiple choice with the formats of ssr/harness/evaluation.py. --limit takes the same fixed-seed
sample for every model. A paper's name (ssr-paper, s3ft-paper, sdft-paper) runs that paper's benchmark set
with its own metrics and target/retention split, and prints the paper's reported numbers beside ours where
known.

--protocol sdft (the default with --tasks sdft-paper) scores SDFT's benchmarks as its official code does
(ssr/harness/sdft_eval.py): gsm8k and multiarith from SDFT's own test files in its `gsm8k_infer` template,
sampled with LLaMA-Factory's defaults and scored by the last integer; openfunctions, advbench_raw,
advbench_jailbreak and alpaca_eval in its alpaca templates; humaneval with bigcode's octocoder prompt, greedy,
pass@1 in the sandbox. alpaca_eval is judged only with --judge llm (else its outputs are written and it is
skipped, with the reason). An adapter whose run.json says it was trained in another template is refused by
name (--allow-template-mismatch overrides).

Each finished benchmark is written to --out at once; a rerun skips those already there (and target
tasks resume their generations from the files beside --out), so an interrupted run loses little.
--compare prints every benchmark's score per run, its change from the first (base) file, and the
average change over the retention benchmarks (run - base: forgetting is negative; the papers' "drop"
is its negative).
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import asdict
from pathlib import Path

import ssr
from ssr.harness import cli, distributed, evaluation, judges, llm_judge, sdft_eval
from ssr.checkpoint import read_json, resolve_model_dir
from ssr.harness.runfiles import content_digest
from ssr.harness.cli import device_and_dtype
from ssr.harness.records import check_prompts
from ssr.harness.tasks import MBPP_SPLITS
from ssr.tokenizer import TEMPLATES
from ssr.harness.evaluation import PRIMARY, TARGET_FILES, drop_table, markdown_table, primary_score, run_benchmarks, \
    target_examples


def parse_tasks(spec: str, data_dir: Path | None, protocol: str = "project") -> dict[str, tuple[str, Path | None]]:
    """{name: (kind, file)}: kind is "target", "mc" or "sdft" (a benchmark of SDFT's protocol, --protocol sdft,
    which scores gsm8k its way too); NAME=FILE names a task file directly; a paper's name (ssr-paper, s3ft-paper,
    sdft-paper) stands for its benchmark set."""
    tasks = {}
    items = [t.strip() for t in spec.split(",")]
    items = [task for item in items for task in (evaluation.PAPERS[item].tasks if item in evaluation.PAPERS else [item])]
    for item in filter(None, items):
        name, _, file = item.partition("=")
        if file:
            tasks[name] = ("target", Path(file))
        elif name in sdft_eval.BENCHMARKS and (protocol == "sdft" or name not in TARGET_FILES):
            if protocol != "sdft":
                raise ValueError(f"--tasks {name}: a benchmark of SDFT's evaluation protocol; add --protocol sdft")
            if data_dir is None:
                raise ValueError(f"--tasks {name}: --data-dir is needed to find it")
            tasks[name] = ("sdft", None)
        elif name in TARGET_FILES or name in evaluation.LOADERS:
            if data_dir is None:
                raise ValueError(f"--tasks {name}: --data-dir is needed to find it")
            kind = "target" if name in TARGET_FILES else "mc"
            tasks[name] = (kind, data_dir / TARGET_FILES[name] if kind == "target" else None)
        else:
            raise ValueError(f"--tasks: unknown task {name!r}; choose from "
                             f"{', '.join(dict.fromkeys([*TARGET_FILES, *evaluation.LOADERS, *sdft_eval.BENCHMARKS]))}, "
                             f"a paper's set "
                             f"({', '.join(evaluation.PAPERS)}), or give NAME=FILE for a task file")
    return tasks


def results_table(results: dict, paper=None) -> str:
    """Each benchmark's score; with a paper's set, the paper's reported number beside it where known."""
    rows = [["benchmark", "metric", "score", "n", *(["paper reports"] if paper else [])]]
    for name, r in results.items():
        rows.append([name, r.get("metric") or PRIMARY.get(name, "acc"), f"{100 * primary_score(name, r):.1f}",
                     str(r["n"]), *([paper.reported.get(name, "not available here")] if paper else [])])
    if paper:
        rows += [[name, "", "", "", text] for name, text in paper.reported.items() if name not in results]
    return markdown_table(rows) + (f"\n(paper's setting: {paper.source})" if paper else "")


# settings that name the model scored, not how: they differ between the files compared
IDENTITY = ("model", "adapter", "model_sha256", "adapter_sha256")


def compare(files: list[str], exclude: set[str]) -> str:
    """The drop table of result files (ssr.harness.evaluation.drop_table), the first file being the base. Files
    scored another way (any setting but the model's identity: --limit, --split, --max-new-tokens, --nq-mode, the
    judge, dtype, chat template, protocol...) or over another number of items of a benchmark are refused, naming
    the difference; so is a score that is not a finite number."""
    runs, settings = {}, {}
    for f in files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"--compare {f}: no such file")
        data = read_json(Path(f), "results file")
        if not isinstance(data.get("results"), dict) or not isinstance(data.get("settings", {}), dict):
            raise ValueError(f"--compare {f}: not an evaluate.py results file (no 'results' object)")
        if Path(f).stem in runs:
            raise ValueError(f"--compare {f}: another file is also named {Path(f).stem!r}; the table labels runs "
                             "by file name")
        for name, result in data["results"].items():
            score = result.get(result.get("metric") or PRIMARY.get(name, "acc")) if isinstance(result, dict) else None
            if not isinstance(result, dict) or isinstance(score, bool) or not isinstance(score, (int, float)) \
                    or not math.isfinite(score) or not isinstance(result.get("n"), int):
                raise ValueError(f"--compare {f}: benchmark {name!r} has no finite score and count n "
                                 f"(got {str(result)[:80]}); score it again")
        runs[Path(f).stem], settings[f] = data["results"], data.get("settings", {})
    for key in dict.fromkeys(k for s in settings.values() for k in s if k not in IDENTITY):
        if len({repr(s.get(key)) for s in settings.values()}) > 1:
            shown = ", ".join(f"{f}: {s.get(key)!r}" for f, s in settings.items())
            raise ValueError(f"--compare: the result files were scored with different --{key.replace('_', '-')} "
                             f"({shown}), so their scores do not compare; score them with the same settings")
    for name in dict.fromkeys(n for results in runs.values() for n in results):
        counts = {label: results[name]["n"] for label, results in runs.items() if name in results}
        if len(set(counts.values())) > 1:
            raise ValueError(f"--compare: benchmark {name!r} was scored over different numbers of items "
                             f"({', '.join(f'{label}: n={n}' for label, n in counts.items())})")
    names = {n for results in runs.values() for n in results}
    unknown = sorted(exclude - names)
    if unknown:
        raise ValueError(f"--exclude names {', '.join(unknown)}, which no result file holds "
                         f"(they hold {', '.join(sorted(names))})")
    missing = [f"{name} (not in {label})" for name in sorted(names) for label, results in runs.items()
               if name not in results]
    note = "\n(change = run - base, in points; the average counts only retention benchmarks that every file holds"
    note += f"; excluded: {', '.join(sorted(exclude))}" if exclude else ""
    note += f"; missing: {', '.join(missing)})" if missing else ")"
    return drop_table(runs, exclude) + note


def parse_args(argv: list[str]):
    p = cli.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--compare", nargs="+", metavar="RESULT.json", help="print the drop table of result files "
                                                                      "(the first is the base)")
    p.add_argument("--exclude", default="", help="with --compare: benchmarks left out of the average drop "
                                                 "(e.g. the target task)")
    p.add_argument("--model", default=ssr.DEFAULT_MODEL, help="HF checkpoint folder, or the built-in default")
    p.add_argument("--adapter", help="a LoRA adapter folder (PEFT format) to apply")
    p.add_argument("--chat-template", choices=TEMPLATES, help="override the template detected from the tokenizer "
                                                              "(target tasks prompt through it)")
    p.add_argument("--tasks", default="gsm8k,mmlu,arc_easy,arc_challenge,truthfulqa_mc1,truthfulqa_mc2",
                   help="comma-separated: " + ", ".join(dict.fromkeys([*TARGET_FILES, *evaluation.LOADERS,
                                                                       *sdft_eval.BENCHMARKS]))
                   + ", a paper's set ("
                   + ", ".join(evaluation.PAPERS) + "), or NAME=FILE")
    p.add_argument("--protocol", choices=sdft_eval.PROTOCOLS,
                   help="project (default): the task prompts in the chat template, greedy, the rule judges; sdft "
                        "(default with --tasks sdft-paper): SDFT's official templates, decoding, scorers and test "
                        "files (ssr/harness/sdft_eval.py)")
    p.add_argument("--allow-template-mismatch", action="store_true",
                   help="evaluate an adapter in a template other than the one its run.json says it was trained in")
    p.add_argument("--data-dir", type=Path, help="folder with the official files (layout of ../shared/data)")
    p.add_argument("--limit", type=cli.positive_int,
                   help="at most this many questions per benchmark (a fixed-seed sample)")
    p.add_argument("--split", choices=tuple(MBPP_SPLITS), default="test",
                   help="MBPP: the official split scored (default test, task_ids 11-510); nq_rc: train or test "
                        "(default), by question")
    p.add_argument("--out", type=Path, help="results JSON (updated after each benchmark)")
    p.add_argument("--batch-size", type=cli.positive_int, default=16, help="prompts generated together")
    p.add_argument("--batch-tokens", type=cli.positive_int, default=8192, help="tokens per scoring forward pass")
    p.add_argument("--max-new-tokens", type=cli.positive_int, default=512)
    p.add_argument("--nq-mode", choices=judges.NQ_MODES, default="contains")
    p.add_argument("--judge", choices=llm_judge.KINDS, default="rule",
                   help="target tasks: the rule judge (default), an LLM judge, or both must accept")
    p.add_argument("--judge-model", help="the LLM judge, required with --judge llm|both: an HF folder, the default "
                                         "model's name, or self (the evaluated model with its adapter off: one "
                                         "judge for base and fine-tuned runs; named explicitly, never a default); "
                                         "with --judge-url, the served model's name")
    p.add_argument("--judge-url", help="an OpenAI-compatible endpoint serving the judge (key from "
                                       f"${llm_judge.API_KEY_ENV[0]}, else ${llm_judge.API_KEY_ENV[1]})")
    p.add_argument("--judge-max-new-tokens", type=cli.positive_int, default=256)
    p.add_argument("--judge-timeout", type=cli.positive_float, default=llm_judge.DEFAULT_TIMEOUT,
                   help="seconds per request to --judge-url (default %(default)g; not a judge setting: it changes "
                        "no verdict)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--static-decode", action="store_true",
                   help="decode with the fixed-shape path (a CUDA graph per batch bucket on GPUs; the same ids as the "
                        "default eager path, not faster on CPU)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    return p, p.parse_args(argv)


def run(argv: list[str]) -> int:
    p, args = parse_args(argv)
    if args.compare:
        print(compare(args.compare, {t.strip() for t in args.exclude.split(",") if t.strip()}))
        return 0
    if args.out is None:
        p.error("--out is required (or --compare)")
    if args.exclude:
        p.error("--exclude goes with --compare")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {args.data_dir}: no such folder")
    if args.out.is_dir():
        raise IsADirectoryError(f"--out {args.out} is a folder; give a results file name (results/base.json)")
    # every input is read and checked before anything is written
    llm_judge.require_named(args.judge, args.judge_model)
    named = [t.strip() for t in args.tasks.split(",")]
    protocol = args.protocol or ("sdft" if "sdft-paper" in named else "project")
    if "sdft-paper" in named and protocol != "sdft":
        raise ValueError("--tasks sdft-paper is scored with SDFT's protocol; drop --protocol project")
    tasks = parse_tasks(args.tasks, args.data_dir, protocol)
    if not tasks:
        raise ValueError("--tasks names no benchmark")
    stem = args.out.with_suffix("")
    cli.refuse_output_over_inputs(args.out, [args.out, f"{stem}.settings.json", f"{args.out}.lock",
                                             *(f"{stem}.{name}.{kind}" for name, (k, _) in tasks.items()
                                               if k == "target" for kind in ("predictions.jsonl", "verdicts.jsonl",
                                                                             "predictions.parts.json",
                                                                             "verdicts.parts.json"))],
                                  {"--model": args.model, "--adapter": args.adapter, "--data-dir": args.data_dir,
                                   "--judge-model": args.judge_model if args.judge != "rule" else None,
                                   **{f"--tasks {name}=": file for name, (_, file) in tasks.items()}})
    papers = [evaluation.PAPERS[t] for t in named if t in evaluation.PAPERS]
    labels = {name: fields for paper in papers for name, fields in evaluation.paper_labels(paper).items()}
    device, dtype = device_and_dtype(args.device, args.dtype)
    device = distributed.init(device)  # under torchrun: join the other ranks (docs/distributed.md)
    if distributed.world() > 1 and any(kind == "sdft" for kind, _ in tasks.values()):
        raise ValueError("--protocol sdft's generated benchmarks run in one process; run them without torchrun")
    settings = {"model": str(args.model), "adapter": args.adapter, "limit": args.limit, "split": args.split,
                "dtype": str(dtype),
                "max_new_tokens": args.max_new_tokens, "nq_mode": args.nq_mode}
    if args.chat_template:  # only when given, so that results files of earlier runs still match
        settings["chat_template"] = args.chat_template
    if protocol == "sdft":  # likewise: only for the sdft protocol
        settings["protocol"] = {"name": "sdft", **{name: asdict(sdft_eval.BENCHMARKS[name].decoding)
                                                   for name, (kind, _) in tasks.items() if kind == "sdft"}}
    # what every score depends on, by content: a model or adapter retrained in place is another model
    settings["model_sha256"] = content_digest(resolve_model_dir(args.model))
    settings["adapter_sha256"] = content_digest(args.adapter) if args.adapter else None
    if recorded := llm_judge.flag_settings(args):
        settings["judge"] = recorded
    items = {}
    for name, (kind, file) in tasks.items():
        if kind == "sdft":
            items[name] = sdft_eval.load_benchmark(name, args.data_dir, args.limit)
            continue
        items[name] = target_examples(name, file, args.limit, args.split) if kind == "target" \
            else evaluation.LOADERS[name](args.data_dir, args.limit)
        if not items[name]:
            raise ValueError(f"--tasks {name}: no items to score (e.g. an MBPP file without task_ids 11-510)")
    model = ssr.load_model(args.model, dtype=dtype, device=device)
    model.static_decode = args.static_decode  # every generation below: sampling.complete reads it
    if args.adapter:
        cli.load_adapter(model, args.adapter)
    tok = ssr.load_tokenizer(args.model, chat_template=args.chat_template)
    if args.adapter:  # the template it was trained in, from its run folder
        detected = ssr.load_tokenizer(args.model).chat_template if args.chat_template else tok.chat_template
        note = sdft_eval.check_adapter_template(args.adapter, protocol, str(args.model), tok.chat_template, detected,
                                                args.allow_template_mismatch)
        if note:
            print(f"note: {note}", file=sys.stderr)
    targets = [name for name, (kind, _) in tasks.items() if kind == "target"]
    if targets:
        cli.require_chat_template(tok, args.model)
    for name in targets:
        check_prompts(model, tok, items[name], "predict", args.max_new_tokens)
    judge = llm_judge.make_judge(args.judge, args.judge_model, args.judge_url, own=(model, tok, str(args.model)),
                                 max_new_tokens=args.judge_max_new_tokens, batch_size=args.batch_size,
                                 device=device, dtype=dtype, timeout=args.judge_timeout)

    with distributed.hold_lock(args.out):
        try:
            results = run_benchmarks(model, tok, items, args.out, settings, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, batch_tokens=args.batch_tokens,
                                     nq_mode=args.nq_mode, judge=judge, labels=labels)
        except KeyboardInterrupt:
            done = read_json(args.out, "results file").get("results", {})
            raise cli.Interrupted(f"{len(done)} finished benchmark(s) kept in {args.out} (and the generations so "
                                  "far beside it); rerun the same command to continue") from None
    if protocol == "sdft":
        figures = papers[0].reported if len(papers) == 1 else {}
        skipped = {name: "needs an LLM judge (--judge llm); outputs written beside --out"
                   for name in tasks if name == "alpaca_eval" and name not in results}
        print(sdft_eval.paper_table(results, list(tasks), skipped, figures))
    else:
        print(results_table(results, papers[0] if len(papers) == 1 else None))
    return 0


def main(argv=None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
