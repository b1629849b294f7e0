"""Rule-based judging of any task: `judge` hands an output to the rule judge of its task's file, and
`judge_records` judges generation records into a resumable verdict file (the LLM judge is
ssr/harness/llm_judge.py). The judges themselves live with their tasks: ssr/harness/tasks/gsm8k.py (final-answer
match), mbpp.py (execution of the program against its asserts, in ssr/harness/sandbox.py), nq.py (alias match)
squad2.py (answer-or-decline, a decline read by meaning in ssr/harness/declines.py) and nq_rc.py (squad2's
judge over NQ questions with passages); this file names them too. The judge decides which of the model's own answers
become training targets, so each verdict carries a short reason ("extracted 72 = 72", "hedged: '18 or 19'",
"AssertionError in test 2").

`unfit_target` is the separate rule for what may become a training target whatever its correctness (a GSM8K
output that states only its final answer may not).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from ssr.harness.records import record_key, resume_records
from ssr.harness.runfiles import read_records
from ssr.harness.tasks import TASK_FILES, Example, Verdict
from ssr.harness.tasks.gsm8k import extract_number, gsm8k  # noqa: F401
from ssr.harness.tasks.mbpp import DEFAULT_TIMEOUT, extract_code, mbpp, mbpp_batch  # noqa: F401
from ssr.harness.tasks.nq import NQ_MODES, normalize_answer, nq  # noqa: F401
from ssr.harness.tasks.squad2 import declines, says_sentence, squad2  # noqa: F401


def judge(example: Example, output: str, *, nq_mode: str = "contains",
          timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Judge one output for an `ssr.harness.tasks.Example` with the judge of its task."""
    rule = TASK_FILES[example.task].judge_example if example.task in TASK_FILES else None
    if rule is None:
        raise ValueError(f"no rule-based judge for task {example.task!r} (example {example.id})")
    return rule(example, output, nq_mode=nq_mode, timeout=timeout)


def unfit_target(task: str, output: str) -> str | None:
    """Why an output is not fit to be a training target whatever its correctness, or None when it is fit.
    The one place this rule lives, per task (its file's `unfit`: GSM8K's needs a worked step); tasks without a
    rule return None."""
    rule = TASK_FILES[task].unfit if task in TASK_FILES else None
    return rule(output) if rule else None


def judge_iter(examples: Sequence[Example], outputs: Sequence[str], *, workers: int | None = None,
               nq_mode: str = "contains", timeout: float = DEFAULT_TIMEOUT) -> Iterator[tuple[int, Verdict]]:
    """Judge outputs[i] against examples[i] in parallel, yielding (i, verdict) as each finishes. Stopping the
    iteration early cancels what has not started; programs already running end within their timeout."""
    if len(examples) != len(outputs):
        raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
    pairs = list(zip(examples, outputs))
    return _parallel(lambda pair: judge(*pair, nq_mode=nq_mode, timeout=timeout), pairs, workers)


def judge_batch(examples: Sequence[Example], outputs: Sequence[str], **options) -> list[Verdict]:
    """`judge_iter` collected in input order (the pipeline uses judge_records, which also resumes)."""
    return _in_order(judge_iter(examples, outputs, **options), len(examples))


def judge_records(examples: dict[str, Example], records: Sequence[dict], out_path, *, progress: bool = True,
                  nq_mode: str = "contains", timeout: float = DEFAULT_TIMEOUT, workers: int | None = None,
                  batch_size: int = 32) -> list[dict]:
    """Judge generate.py records ({"id", "mode", "output", ...}) into a resumable verdicts JSONL file.

    Appends {"id", "mode", "task", "correct", "kind", "reason", "unfit", "judged"} for each (id, mode) that
    `out_path` lacks, as verdicts finish ("unfit": `unfit_target`'s reason, or null; "judged": `judged_digest`
    of the example and the output, so that a kept verdict of another question or answer is refused on a rerun);
    returns the verdict records of `records`, in their order. Records whose id is not in `examples` are an
    error. Resumable and shared under torchrun by `ssr.harness.records.resume_records`.
    """
    def work(batch):
        for i, verdict in judge_iter([examples[str(r["id"])] for r in batch], [r["output"] for r in batch],
                                     workers=workers, nq_mode=nq_mode, timeout=timeout):
            example = examples[str(batch[i]["id"])]
            yield {"id": example.id, "mode": batch[i].get("mode"), "task": example.task,
                   "correct": verdict.correct, "kind": verdict.kind, "reason": verdict.reason,
                   "unfit": unfit_target(example.task, batch[i]["output"]),
                   "judged": judged_digest(example, batch[i]["output"])}

    resume_records(out_path, pending_records(examples, records), work, batch_size=batch_size, desc="judging",
                   progress=progress, settings={"judge": "rule", "nq_mode": nq_mode, "timeout": timeout},
                   stamp=lambda r: {"judged": judged_digest(examples[str(r["id"])], r["output"])})
    return verdicts_in_order(out_path, records)


def judged_digest(example: Example, output: str) -> str:
    """A short digest of what a verdict judged: the example (question, gold, tests, passages) and the output.
    A verdict is kept for a rerun only if its digest is the same: a task file or predictions file changed in
    place must not keep verdicts of other questions or answers (ids are line positions)."""
    text = json.dumps([asdict(example), output], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def pending_records(examples: dict[str, Example], records: Sequence[dict]) -> list[tuple[tuple, dict]]:
    """(key, record) of each (id, mode) once, in the records' order; a record whose id is not in `examples` is
    an error. Shared by this module's judge_records and ssr.harness.llm_judge's."""
    unknown = [r["id"] for r in records if str(r["id"]) not in examples]
    if unknown:
        raise KeyError(f"{len(unknown)} record(s) have ids that are not in the task (e.g. {unknown[0]!r})")
    return list({record_key(r): r for r in records}.items())


def verdicts_in_order(out_path, records: Sequence[dict]) -> list[dict]:
    """The verdicts of `records` read back from out_path, in the records' order."""
    by_key = {record_key(v): v for v in read_records(out_path)}
    return [by_key[record_key(r)] for r in records]


def _parallel(fn: Callable, items: list, workers: int | None) -> Iterator[tuple[int, Verdict]]:
    # Threads, not processes: each MBPP job is a subprocess anyway, and the other judges take microseconds.
    # Twice as many as cores by default: a sandbox run is mostly process start-up latency, not CPU.
    pool = ThreadPoolExecutor(max_workers=workers or 2 * (os.cpu_count() or 1))
    try:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(done: Iterator[tuple[int, Verdict]], n: int) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * n
    for i, verdict in done:
        verdicts[i] = verdict
    return verdicts
