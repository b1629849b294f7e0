"""Scoring: log-likelihood multiple choice for retention benchmarks, and metrics over questions.

A choice's score is the sum of the log-probabilities of its tokens given the context. The trap
avoided: encoding context and choice separately. SentencePiece and BPE merge across the seam, so
the choice tokens are taken from the encoding of context + choice, past the context's own tokens
(the lm-evaluation-harness rule); where the seam merges, the context is encoded alone and the
choice appended, as that harness does too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ssr import judges
from ssr.benchmarks import MCQuestion, subsample
from ssr.inference import generate_records
from ssr.jsonl import write_atomic
from ssr.tasks import load_task


def split_tokens(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) with the continuation's tokens as they appear in the whole text."""
    bos = [tok.bos_id] if tok.add_bos else []
    ctx = bos + tok.encode(context)
    whole = bos + tok.encode(context + continuation)
    if whole[:len(ctx)] == ctx and len(whole) > len(ctx):
        return ctx, whole[len(ctx):]
    return ctx, tok.encode(continuation)


@torch.inference_mode()
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], batch_tokens: int = 8192,
                   progress: bool = True, desc: str = "scoring") -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids), batched by length."""
    device = model.lm_head.weight.device
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    scores = [0.0] * len(requests)
    bar = tqdm(total=len(requests), desc=desc, disable=not progress, unit="choice")
    start = 0
    while start < len(order):
        longest = len(requests[order[start]][0]) + len(requests[order[start]][1])
        if not requests[order[start]][0]:
            raise ValueError("a context must have at least one token (a BOS, or some text)")
        size = max(1, min(len(order) - start, batch_tokens // longest))
        batch = order[start:start + size]
        ids = torch.zeros(len(batch), longest, dtype=torch.long)
        for row, i in enumerate(batch):
            seq = requests[i][0] + requests[i][1]
            ids[row, :len(seq)] = torch.tensor(seq)
        hidden = model.hidden_states(ids.to(device))  # (B, T, C); right padding needs no mask when causal
        for row, i in enumerate(batch):
            ctx, cont = requests[i]
            # lm_head only where a continuation token is predicted: the full (B, T, vocab) would dwarf the rest
            logits = model.lm_head(hidden[row, len(ctx) - 1:len(ctx) + len(cont) - 1]).float()  # (len(cont), V)
            target = torch.tensor(cont, device=device)
            scores[i] = F.log_softmax(logits, -1).gather(-1, target[:, None]).sum().item()
        bar.update(len(batch))
        start += size
    bar.close()
    return scores


def score_questions(model, tok, questions: list[MCQuestion], **kwargs) -> dict:
    """acc (argmax log-likelihood), acc_norm (per character, as lm-eval), and mc2 (true-choice probability mass)."""
    requests, owner = [], []
    for q, question in enumerate(questions):
        for choice in question.choices:
            requests.append(split_tokens(tok, question.context, choice))
            owner.append(q)
    lls = loglikelihoods(model, requests, **kwargs)
    per_question: list[list[float]] = [[] for _ in questions]
    for q, ll in zip(owner, lls):
        per_question[q].append(ll)
    acc = acc_norm = mc2 = 0.0
    for question, ll in zip(questions, per_question):
        best = max(range(len(ll)), key=ll.__getitem__)
        best_norm = max(range(len(ll)), key=lambda j: ll[j] / max(1, len(question.choices[j])))
        acc += question.labels[best]
        acc_norm += question.labels[best_norm]
        top = max(ll)
        probs = [math.exp(x - top) for x in ll]
        mc2 += sum(p for p, label in zip(probs, question.labels) if label) / sum(probs)
    n = max(1, len(questions))
    return {"acc": acc / n, "acc_norm": acc_norm / n, "mc2": mc2 / n, "n": len(questions)}


# the score each benchmark is reported by (lm-evaluation-harness conventions); target tasks: "acc"
PRIMARY = {"mmlu": "acc", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "truthfulqa_mc1": "acc",
           "truthfulqa_mc2": "mc2", "hellaswag": "acc_norm"}


def primary_score(name: str, result: dict) -> float:
    return result[PRIMARY.get(name, "acc")]


def markdown_table(rows: list[list[str]]) -> str:
    """Rows of cells (the first is the header) as an aligned markdown table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# target tasks: generate an answer, judge it

# the official files under --data-dir, as laid out in ../shared/data
TARGET_FILES = {"gsm8k": "gsm8k/test.jsonl", "mbpp": "mbpp/mbpp.jsonl", "nq": "nq_open/NQ-open.dev.jsonl"}
MBPP_TEST_IDS = range(11, 511)  # the MBPP paper's test split: task_ids 11-510


def target_examples(task: str, path, limit: int | None = None) -> list:
    """A target task's evaluation examples: GSM8K test, MBPP 11-510, NQ-open dev (or any task file)."""
    examples = load_task(path)
    if examples[0].task == "mbpp" and task == "mbpp":
        examples = [e for e in examples if int(e.id) in MBPP_TEST_IDS]
    return subsample(examples, limit)


def score_generations(model, tok, examples, predictions_path, verdicts_path, *, batch_size: int = 16,
                      max_new_tokens: int = 512, nq_mode: str = "contains", progress: bool = True) -> dict:
    """Greedy answers to the task prompts, judged: accuracy (pass@1 for MBPP), resumable through both files."""
    records = generate_records(model, tok, examples, "predict", predictions_path, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, progress=progress)
    verdicts = judges.judge_records({e.id: e for e in examples}, records, verdicts_path, nq_mode=nq_mode,
                                    progress=progress)
    n = max(1, len(examples))
    result = {"acc": sum(v["correct"] for v in verdicts) / n, "n": len(examples),
              "truncated": sum(r["finish_reason"] == "length" for r in records) / n}
    if examples and examples[0].task == "nq":  # report both NQ modes; the judge's mode is the score
        other = "exact" if nq_mode == "contains" else "contains"
        result[other] = sum(judges.nq(r["output"], e.answers, other).correct for r, e in zip(records, examples)) / n
        result[nq_mode] = result["acc"]
    return result


def run_benchmarks(model, tok, benchmarks: dict, out_path, settings: dict, *, batch_size: int = 16,
                   max_new_tokens: int = 512, batch_tokens: int = 8192, nq_mode: str = "contains",
                   progress: bool = True) -> dict:
    """Score every benchmark, writing out_path (JSON) after each; those already in it are kept, not rerun.

    benchmarks: {name: list of Examples (target task, by generation) or of MCQuestions (log-likelihood)}.
    Generations and verdicts are kept beside out_path ({stem}.{name}.predictions.jsonl, ...), so an
    interrupted target task resumes too. A file written with other settings is refused.
    """
    out_path = Path(out_path)
    settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
    saved = json.loads(out_path.read_text()) if out_path.is_file() else {}
    if saved and saved.get("settings") != settings:
        raise ValueError(f"{out_path} holds results made with other settings ({saved.get('settings')}); "
                         "use another output file")
    results = saved.get("results", {})
    stem = out_path.with_suffix("")
    for name, items in benchmarks.items():
        if name in results:
            continue
        if items and isinstance(items[0], MCQuestion):
            results[name] = score_questions(model, tok, items, batch_tokens=batch_tokens, progress=progress,
                                            desc=name)
        else:
            results[name] = score_generations(model, tok, items, f"{stem}.{name}.predictions.jsonl",
                                              f"{stem}.{name}.verdicts.jsonl", batch_size=batch_size,
                                              max_new_tokens=max_new_tokens, nq_mode=nq_mode, progress=progress)
        write_atomic(out_path, json.dumps({"settings": settings, "results": results}, indent=2))
    return {name: results[name] for name in benchmarks}
