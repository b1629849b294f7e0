"""Judge generated answers with the rule-based judges (ssr/judges.py).

    python judge.py --task-file data/gsm8k/test.jsonl --predictions runs/pred.jsonl --out runs/verdicts.jsonl

Reads generate.py's records ({"id", "mode", "output", ...}), joins them with the task file by id, and appends one
verdict per record to --out: {"id", "mode", "task", "correct", "kind", "reason"}. Resumable: a rerun skips the
(id, mode) pairs already in --out, so a killed run picks up where it stopped; a rerun with another task file,
predictions file, --nq-mode or --timeout is refused (NAME.settings.json beside --out keeps them). Prints
accuracy per mode and the verdicts counted by kind ("match", "mismatch", "AssertionError", "timeout", ...).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

import torch

from ssr import distributed, judges
from ssr.runfiles import check_settings, read_records
from ssr.tasks import TASKS, load_task


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-file", required=True, help="the task file the predictions were generated from")
    parser.add_argument("--task", choices=TASKS, help="its format (default: detected from the first record)")
    parser.add_argument("--predictions", required=True, help="generate.py's output (JSONL)")
    parser.add_argument("--out", required=True, help="verdicts JSONL; appended to, and skipped on a rerun")
    parser.add_argument("--workers", type=int, default=None,
                        help="MBPP programs run in parallel (default: twice the CPU count)")
    parser.add_argument("--nq-mode", choices=judges.NQ_MODES, default="contains",
                        help="NQ: an alias contained in the answer (default), or SQuAD exact match")
    parser.add_argument("--timeout", type=float, default=judges.DEFAULT_TIMEOUT, help="seconds per MBPP program")
    args = parser.parse_args(argv)

    examples = {ex.id: ex for ex in load_task(args.task_file, args.task)}
    task = next(iter(examples.values())).task
    if task not in TASKS:
        parser.error(f"{args.task_file} holds {task!r} records; rule-based judges exist for {', '.join(TASKS)}")
    distributed.init(torch.device("cpu"))  # under torchrun (gloo): the ranks share the answers to judge
    try:  # verdicts of other predictions, or judged another way, must not be mixed into --out
        with distributed.main_first():
            check_settings(Path(args.out).with_suffix(".settings.json"), {
                "task_file": str(Path(args.task_file).resolve()),
                "predictions": str(Path(args.predictions).resolve()), "nq_mode": args.nq_mode,
                "timeout": args.timeout}, args.out)
    except ValueError as e:
        parser.error(str(e))
    predictions = read_records(args.predictions)
    known = [r for r in predictions if str(r["id"]) in examples]
    if len(known) < len(predictions):
        unknown = next(r["id"] for r in predictions if str(r["id"]) not in examples)
        print(f"warning: {len(predictions) - len(known)} predictions have ids not in {args.task_file} "
              f"(e.g. {unknown!r}); skipped", file=sys.stderr)
    verdicts = judges.judge_records(examples, known, args.out, workers=args.workers, nq_mode=args.nq_mode,
                                    timeout=args.timeout)
    print(summarize(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
