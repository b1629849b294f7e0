"""Judge generated answers with the rule-based judges (ssr/judges.py).

    python judge.py --task-file data/gsm8k/test.jsonl --predictions runs/pred.jsonl --out runs/verdicts.jsonl

Reads generate.py's records ({"id", "mode", "output", ...}), joins them with the task file by id, and appends one
verdict per record to --out: {"id", "mode", "task", "correct", "kind", "reason"}. Resumable: a rerun skips the
(id, mode) pairs already in --out, so a killed run picks up where it stopped. Prints accuracy per mode and the
verdicts counted by kind ("match", "mismatch", "AssertionError", "timeout", ...).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict

from tqdm import tqdm

from ssr import judges
from ssr.jsonl import append_records, read_records
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
    predictions = read_records(args.predictions)
    done = {(v["id"], v.get("mode")) for v in read_records(args.out)}
    todo, seen, unknown = [], set(), []
    for record in predictions:
        key = (str(record["id"]), record.get("mode"))
        if key in done or key in seen:
            continue
        seen.add(key)
        if key[0] not in examples:
            unknown.append(key[0])
            continue
        todo.append(record)
    if unknown:
        print(f"warning: {len(unknown)} predictions have ids not in {args.task_file} (e.g. {unknown[0]!r}); "
              "skipped", file=sys.stderr)
    print(f"{len(done)} already judged, {len(todo)} to judge", file=sys.stderr)

    verdicts = judges.judge_iter([examples[str(r["id"])] for r in todo], [r["output"] for r in todo],
                                 workers=args.workers, nq_mode=args.nq_mode, timeout=args.timeout)
    with tqdm(total=len(todo), desc="judging", unit="answer") as bar:
        def records():
            for i, verdict in verdicts:
                bar.update()
                example = examples[str(todo[i]["id"])]
                yield {"id": example.id, "mode": todo[i].get("mode"), "task": example.task,
                       "correct": verdict.correct, "kind": verdict.kind, "reason": verdict.reason}
        append_records(args.out, records())

    wanted = {(str(r["id"]), r.get("mode")) for r in predictions}
    print(summarize([v for v in read_records(args.out) if (v["id"], v.get("mode")) in wanted]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
