"""Judge generated answers with the rule-based judges (ssr/harness/tasks/) or an LLM judge
(ssr/harness/llm_judge.py).

    python judge.py --task-file data/gsm8k/test.jsonl --predictions runs/pred.jsonl --out runs/verdicts.jsonl
    python judge.py --task-file chat.jsonl --predictions runs/pred.jsonl --out runs/llm.verdicts.jsonl \\
        --judge llm --judge-model smollm2-135m-instruct      # or --judge-url http://host:8000/v1 --judge-model NAME

Reads generate.py's records ({"id", "mode", "output", ...}), joins them with the task file by id, and appends one
verdict per record to --out: {"id", "mode", "task", "correct", "kind", "reason", "unfit"} (the LLM judge adds
its raw text and settings, "judge_output", "judge", "judge_prompt", and judges any task file, chat records too).
Resumable: a rerun skips the (id, mode) pairs already in --out, so a killed run picks up where it stopped; a
rerun with another task file, predictions file, --nq-mode, --timeout or judge is refused (NAME.settings.json
beside --out keeps them), and so is a kept verdict of another question or answer (each verdict keeps a digest
of what it judged: a task or predictions file edited in place), an --out that is one of the inputs, and a
second copy on the same --out (NAME.lock). Prints accuracy per mode and
the verdicts counted by kind ("match", "mismatch", "AssertionError", "timeout", ...).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

from ssr.harness import cli, distributed, judges, llm_judge
from ssr.harness.cli import device_and_dtype
from ssr.harness.runfiles import check_settings, numbered_records, read_records
from ssr.harness.pipeline import check_judge
from ssr.harness.tasks import TASKS, load_task


def summarize(verdicts: list[dict]) -> str:
    """Accuracy per mode, then the count of each kind of verdict per mode."""
    by_mode = defaultdict(list)
    for v in verdicts:
        by_mode[v.get("mode")].append(v)
    lines = []
    for mode, group in sorted(by_mode.items(), key=lambda item: str(item[0])):
        right = sum(v["correct"] for v in group)
        lines.append(f"{mode or 'all'}: {right}/{len(group)} correct ({100 * right / len(group):.1f}%)")
        kinds = Counter(v["kind"] for v in group).most_common()
        lines.append("  " + ", ".join(f"{kind} {n}" for kind, n in kinds))
    return "\n".join(lines)


def parse_args(argv: list[str]):
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-file", required=True, help="the task file the predictions were generated from")
    parser.add_argument("--task", choices=TASKS + ("chat",), help="its format (default: detected from the first "
                                                                  "record)")
    parser.add_argument("--predictions", required=True, help="generate.py's output (JSONL)")
    parser.add_argument("--out", required=True, help="verdicts JSONL; appended to, and skipped on a rerun")
    parser.add_argument("--workers", type=cli.positive_int, default=None,
                        help="MBPP programs run in parallel (default: twice the CPU count)")
    parser.add_argument("--nq-mode", choices=judges.NQ_MODES, default="contains",
                        help="NQ: an alias contained in the answer (default), or SQuAD exact match")
    parser.add_argument("--timeout", type=cli.positive_float, default=judges.DEFAULT_TIMEOUT,
                        help="seconds per MBPP program")
    g = parser.add_argument_group("LLM judge")
    g.add_argument("--judge", choices=llm_judge.KINDS, default="rule",
                   help="the task's rule judge (default), an LLM judge, or both must accept")
    g.add_argument("--judge-model", help="required with --judge llm|both: an HF folder or the default model's name "
                                         "(a 135M model cannot judge: docs/ssr_setting.md); with --judge-url, the "
                                         "served model's name")
    g.add_argument("--judge-url", help="an OpenAI-compatible endpoint (http://host:8000/v1) serving the judge; the "
                                       f"key is read from ${llm_judge.API_KEY_ENV[0]} (else ${llm_judge.API_KEY_ENV[1]})")
    g.add_argument("--judge-max-new-tokens", type=cli.positive_int, default=256, help="the judge's reply, at most")
    g.add_argument("--judge-timeout", type=cli.positive_float, default=llm_judge.DEFAULT_TIMEOUT,
                   help="seconds per request to --judge-url (default %(default)g; not a judge setting: it changes "
                        "no verdict)")
    g.add_argument("--batch-size", type=cli.positive_int, default=8, help="judge prompts generated together (local judge)")
    g.add_argument("--device", default="auto", help="the local judge's device: auto, cpu, cuda, ...")
    return parser.parse_args(argv)


def read_predictions(path: Path) -> list[dict]:
    """generate.py's records, each checked for the fields judging reads."""
    if not path.is_file():
        raise FileNotFoundError(f"--predictions {path}: no such file" + (" (it is a folder)" if path.is_dir() else ""))
    records = numbered_records(path)
    if not records:
        raise ValueError(f"--predictions {path}: no records")
    for line, r in records:
        for key, kind, what in (("id", (str, int), "a string or an integer"), ("output", str, "a string")):
            if not isinstance(r.get(key), kind) or isinstance(r.get(key), bool):
                raise ValueError(f"{path}:{line}: field {key!r} must be {what} (a generate.py record), "
                                 f"got {r.get(key)!r}")
    return [r for _, r in records]


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    # every input is read and checked before anything is written
    llm_judge.require_named(args.judge, args.judge_model)
    examples = {ex.id: ex for ex in load_task(args.task_file, args.task)}
    task = next(iter(examples.values())).task
    check_judge(task, args.judge, "judging", f"--task-file {args.task_file}")
    predictions = read_predictions(Path(args.predictions))
    known = [r for r in predictions if str(r["id"]) in examples]
    if not known:
        raise ValueError(f"--predictions {args.predictions}: none of its ids is in --task-file {args.task_file} "
                         f"(e.g. {predictions[0]['id']!r}); were they generated from another file?")
    if len(known) < len(predictions):
        unknown = next(r["id"] for r in predictions if str(r["id"]) not in examples)
        print(f"warning: {len(predictions) - len(known)} predictions have ids not in {args.task_file} "
              f"(e.g. {unknown!r}); skipped", file=sys.stderr)
    out = Path(args.out)
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a JSONL file name")
    cli.refuse_output_over_inputs(out, [out, out.with_suffix(".settings.json"), f"{out}.lock",
                                        out.with_name(f"{out.stem}.parts.json")],
                                  {"--task-file": args.task_file, "--predictions": args.predictions,
                                   "--judge-model": args.judge_model if args.judge != "rule" else None})
    settings = {"task_file": str(Path(args.task_file).resolve()), "predictions": str(Path(args.predictions).resolve()),
                "nq_mode": args.nq_mode, "timeout": args.timeout}
    if recorded := llm_judge.flag_settings(args):
        settings["judge"] = recorded
    device, dtype = device_and_dtype(args.device)
    device = distributed.init(device)  # under torchrun: the ranks share the answers to judge
    judge = llm_judge.make_judge(args.judge, args.judge_model, args.judge_url,
                                 max_new_tokens=args.judge_max_new_tokens, batch_size=args.batch_size,
                                 device=device, dtype=dtype, timeout=args.judge_timeout)

    with distributed.hold_lock(out):
        with distributed.main_first():  # verdicts of other predictions, or judged another way, are never mixed in
            check_settings(out.with_suffix(".settings.json"), settings, str(out))
        try:
            if judge is None:
                verdicts = judges.judge_records(examples, known, out, workers=args.workers, nq_mode=args.nq_mode,
                                                timeout=args.timeout)
            else:
                verdicts = llm_judge.judge_records(judge, examples, known, out)
        except KeyboardInterrupt:
            raise cli.Interrupted(f"{len(read_records(out))} verdicts kept in {out}; rerun the same command to "
                                  "continue") from None
    print(summarize(verdicts))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
