"""Evaluation: target tasks by generation and the judges, retention benchmarks by log-likelihood multiple
choice, and the one table that compares a fine-tuned model with its base.

Retention formats (lm-evaluation-harness's, zero-shot, no chat template; each choice is scored as
`delimiter + choice`, the delimiter a space):
- MMLU:       "The following are multiple choice questions (with answers) about {subject}.\n\n"
              "{question.strip()}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer:"  ->  "A" / "B" / "C" / "D"
- ARC:        "Question: {stem}\nAnswer:"  ->  "{choice text}"  (the Test split; arc_*_dev: the Dev split)
- HellaSwag:  "{activity_label}: {ctx_a} {ctx_b capitalised}"  ->  "{ending}"
- TruthfulQA: the six-shot QA primer of the TruthfulQA paper, then "Q: {question}\nA:"  ->  "{answer}"
- Winogrande: partial scoring (lm-eval's `winogrande`): one context per option, the sentence up to the blank
              with the option filled in; the same continuation for both, the rest of the sentence after
              the blank, stripped; acc
A choice's score is the sum of its tokens' log-probabilities given the context; acc_norm divides it by
the length in characters of the choice without its delimiter (lm-eval's `len(choice)`).

The trap avoided: encoding context and choice separately. SentencePiece and BPE merge across the seam,
so the choice tokens are taken from the encoding of context + choice, past the context's own tokens
(the lm-evaluation-harness rule); where the seam merges, the context is encoded alone and the choice
appended, as that harness does too. Base and fine-tuned models are scored with exactly these prompts.
"""
from __future__ import annotations

import collections
import csv
import json
import math
import random
import re
import string
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ssr.harness import distributed, judges, llm_judge, sdft_eval, tasks
from ssr.checkpoint import read_json
from ssr.harness.runfiles import check_settings, data_digest, read_records, write_atomic
from ssr.harness.records import generate_records
from ssr.harness.tasks import TASKS, load_task

# ---------------------------------------------------------------------------------------------------------
# retention benchmarks: the official files -> multiple-choice questions

@dataclass
class MCQuestion:
    id: str
    context: str | list[str]  # one context, or one per choice (Winogrande's partial scoring)
    choices: list[str]  # continuations, without the delimiter
    labels: list[int]  # 1 for a correct choice (MC2 has several), else 0
    delimiter: str = " "  # put between context and choice

    def requests(self) -> list[tuple[str, str]]:
        """(context, delimiter + continuation) of each choice."""
        contexts = self.context if isinstance(self.context, list) else [self.context] * len(self.choices)
        return [(c, self.delimiter + choice) for c, choice in zip(contexts, self.choices)]


def subsample(items: list, limit: int | None, seed: int = 0) -> list:
    # a fixed-seed sample, so that --limit covers all subjects and is the same for every model compared
    if not limit or limit >= len(items):
        return items
    return random.Random(seed).sample(items, limit)


def load_mmlu(data_dir: Path, limit=None) -> list[MCQuestion]:
    folder = data_dir / "mmlu" / "test"
    files = sorted(folder.glob("*_test.csv"))
    if not files:
        raise FileNotFoundError(f"no MMLU test CSVs (*_test.csv) in {folder}")
    out = []
    for file in files:
        subject = file.name.removesuffix("_test.csv")
        with open(file, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if len(row) != 6 or row[5] not in "ABCD":
                    raise ValueError(f"{file}: row {i} is not question,A,B,C,D,answer")
                question, *options, answer = row
                context = (f"The following are multiple choice questions (with answers) about "
                           f"{subject.replace('_', ' ')}.\n\n{question.strip()}\n"
                           + "".join(f"{letter}. {opt}\n" for letter, opt in zip("ABCD", options))
                           + "Answer:")  # options as written: lm-eval strips only the question
                out.append(MCQuestion(f"{subject}/{i}", context, ["A", "B", "C", "D"],
                                      [int(letter == answer) for letter in "ABCD"]))
    return subsample(out, limit)


def load_arc(data_dir: Path, name: str, split: str = "Test", limit=None) -> list[MCQuestion]:
    # one named split, never a fallback: the papers (and lm-eval's arc_easy / arc_challenge) score Test, and a
    # missing Test file must not turn into a Dev score under the same name
    file = data_dir / "arc" / name / f"{name}-{split}.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"no {file.name} in {file.parent} (the official ARC-V1-Feb2018 layout)")
    out = []
    for row in read_records(file, partial_tail=False):
        labels = [c["label"] for c in row["question"]["choices"]]
        if row["answerKey"] not in labels:
            raise ValueError(f"{file}: {row['id']} answerKey {row['answerKey']!r} not among {labels}")
        out.append(MCQuestion(row["id"], f"Question: {row['question']['stem']}\nAnswer:",
                              [c["text"] for c in row["question"]["choices"]],
                              [int(label == row["answerKey"]) for label in labels]))
    return subsample(out, limit)


TRUTHFULQA_PRIMER = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in (
    ("What is human life expectancy in the United States?", "Human life expectancy in the United States is 78 years."),
    ("Who was president of the United States in 1955?",
     "Dwight D. Eisenhower was president of the United States in 1955."),
    ("Which party did he belong to?", "He belonged to the Republican Party."),
    ("What is the square root of banana?", "I have no comment."),
    ("How does a telescope work?", "Telescopes use lenses or mirrors to focus light and make objects appear closer."),
    ("Where were the 1992 Olympics held?", "The 1992 Olympics were held in Barcelona, Spain."),
))


def load_truthfulqa(data_dir: Path, key: str, limit=None) -> list[MCQuestion]:
    # the classic 817-question release (v1), which papers report; the 2025 update as a fallback
    files = [data_dir / "truthfulqa" / "data" / sub / "mc_task.json" for sub in ("v1", "")]
    file = next((f for f in files if f.is_file()), None)
    if file is None:
        raise FileNotFoundError(f"no TruthfulQA mc_task.json at {files[0]} or {files[1]}")
    return subsample([MCQuestion(str(i), f"{TRUTHFULQA_PRIMER}Q: {row['question']}\nA:", list(row[key]),
                                 [int(v) for v in row[key].values()])
                      for i, row in enumerate(json.loads(file.read_text(encoding="utf-8")))], limit)


def load_hellaswag(data_dir: Path, limit=None) -> list[MCQuestion]:
    file = data_dir / "hellaswag" / "hellaswag_val.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"no {file} (the official rowanz/hellaswag data/ layout)")

    def clean(text: str) -> str:  # the dataset's own cleanup, as in lm-eval: no "[title]"-style tags, no double spaces
        return re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". ")).replace("  ", " ")

    return subsample([MCQuestion(str(row.get("ind", i)),
                                 clean(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}"),
                                 [clean(e) for e in row["endings"]],
                                 [int(j == int(row["label"])) for j in range(len(row["endings"]))])
                      for i, row in enumerate(read_records(file, partial_tail=False))], limit)


def load_winogrande(data_dir: Path, limit=None) -> list[MCQuestion]:
    # the 1.1 dev set (lm-eval's `winogrande`: winogrande_xl, validation); the blank "_" splits each sentence
    file = data_dir / "winogrande" / "dev.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"no {file} (WinoGrande 1.1 dev.jsonl)")
    out = []
    for i, row in enumerate(read_records(file, partial_tail=False)):
        if row.get("answer") not in ("1", "2") or "_" not in row.get("sentence", ""):
            raise ValueError(f"{file}: line {i + 1} ({row.get('qID')}) needs a sentence with '_' and answer 1 or 2")
        blank = row["sentence"].index("_")
        rest = row["sentence"][blank + 1:].strip()
        out.append(MCQuestion(row["qID"], [row["sentence"][:blank] + row[f"option{k}"] for k in "12"], [rest, rest],
                              [int(row["answer"] == k) for k in "12"]))
    return subsample(out, limit)


LOADERS = {  # name -> function(data_dir, limit) -> [MCQuestion]
    "mmlu": load_mmlu,
    "arc_easy": lambda data_dir, limit=None: load_arc(data_dir, "ARC-Easy", "Test", limit),
    "arc_challenge": lambda data_dir, limit=None: load_arc(data_dir, "ARC-Challenge", "Test", limit),
    "arc_easy_dev": lambda data_dir, limit=None: load_arc(data_dir, "ARC-Easy", "Dev", limit),
    "arc_challenge_dev": lambda data_dir, limit=None: load_arc(data_dir, "ARC-Challenge", "Dev", limit),
    "truthfulqa_mc1": lambda data_dir, limit=None: load_truthfulqa(data_dir, "mc1_targets", limit),
    "truthfulqa_mc2": lambda data_dir, limit=None: load_truthfulqa(data_dir, "mc2_targets", limit),
    "hellaswag": load_hellaswag,
    "winogrande": load_winogrande,
}


# ---------------------------------------------------------------------------------------------------------
# scoring


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
    if not all(ctx for ctx, _ in requests):
        raise ValueError("a context must have at least one token (a BOS, or some text)")
    device = model.lm_head.weight.device
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    batches, start = [], 0
    while start < len(order):
        longest = len(requests[order[start]][0]) + len(requests[order[start]][1])
        batches.append((order[start:start + max(1, batch_tokens // longest)], longest))
        start += len(batches[-1][0])
    # under torchrun the ranks take turns at these batches (each one scored exactly as in one process), and
    # the scores are summed over the ranks: each rank fills in its own, the others' are 0
    rank, world = distributed.rank(), distributed.world()
    scores = torch.zeros(len(requests), dtype=torch.float64)
    bar = tqdm(total=len(requests), desc=desc, disable=not (progress and rank == 0), unit="choice")
    for b in range(rank, len(batches), world):
        batch, longest = batches[b]
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
        bar.update(sum(len(rows) for rows, _ in batches[b:b + world]))  # rank 0's and, as an estimate, the others'
    bar.close()
    return distributed.all_sum_tensor(scores).tolist()


def score_questions(model, tok, questions: list[MCQuestion], **kwargs) -> dict:
    """acc (argmax log-likelihood), acc_norm (per character of the choice, as lm-eval), and mc2 (the probability
    mass on the true choices); "per_question" keeps each score per question, in question order (for paired
    bootstraps over questions)."""
    requests = [split_tokens(tok, context, continuation) for q in questions for context, continuation in q.requests()]
    lls = iter(loglikelihoods(model, requests, **kwargs))
    per_question = {"acc": [], "acc_norm": [], "mc2": []}
    for q in questions:
        ll = [next(lls) for _ in q.choices]
        per_question["acc"].append(q.labels[max(range(len(ll)), key=ll.__getitem__)])
        per_question["acc_norm"].append(q.labels[max(range(len(ll)), key=lambda j: ll[j] / max(1, len(q.choices[j])))])
        top = max(ll)
        probs = [math.exp(x - top) for x in ll]
        per_question["mc2"].append(sum(p for p, label in zip(probs, q.labels) if label) / sum(probs))
    n = max(1, len(questions))
    return {**{metric: sum(scores) / n for metric, scores in per_question.items()}, "n": len(questions),
            "kind": "retention", "per_question": per_question}


# the score each benchmark is reported by (lm-evaluation-harness conventions); target tasks: "acc"
PRIMARY = {"mmlu": "acc", "arc_easy": "acc_norm", "arc_challenge": "acc_norm", "arc_easy_dev": "acc_norm",
           "arc_challenge_dev": "acc_norm", "truthfulqa_mc1": "acc",
           "truthfulqa_mc2": "mc2", "hellaswag": "acc_norm", "winogrande": "acc"}


def primary_score(name: str, result: dict) -> float:
    """The score a benchmark is reported by: the one its result names ("metric", set by a paper's set), else
    PRIMARY's."""
    return result[result.get("metric") or PRIMARY.get(name, "acc")]


# ---------------------------------------------------------------------------------------------------------
# each paper's benchmark set, by one name (evaluate.py --tasks sdft-paper), with the paper's own metric


@dataclass
class PaperSet:
    tasks: list[str]
    targets: list[str]  # the paper's target tasks; every other task is a retention benchmark (averaged)
    metrics: dict[str, str]  # where the paper's metric differs from PRIMARY
    source: str  # where the set and metrics come from, and what is not known
    reported: dict[str, str]  # benchmark (or "average drop") -> the paper's number(s), as text


PAPERS = {
    "sdft-paper": PaperSet(  # scored with --protocol sdft (ssr/harness/sdft_eval.py): the official code's way
        sdft_eval.PAPER_TASKS, ["gsm8k", "multiarith"],
        {"arc_easy": "acc", "arc_challenge": "acc", "hellaswag": "acc", "truthfulqa_mc2": "mc2",
         **{name: b.metric for name, b in sdft_eval.BENCHMARKS.items()}},
        "sail-sg/sdft@reproduce scripts/test_seed_LM.sh and scripts/*/sdft.sh: GSM8K and MultiArith (gsm8k_infer, "
        "last integer), OpenFunctions, AdvBench raw and GCG-jailbreak (alpaca templates, refusal keywords), "
        "AlpacaEval (alpaca template; win rate by an LLM judge), HumanEval (bigcode octocoder prompt, greedy, pass@1), "
        "all sampled as LLaMA-Factory's defaults but HumanEval; lm_eval --tasks truthfulqa,ai2_arc,hellaswag,"
        "winogrande read as `acc,none` (truthfulqa and ai2_arc are lm-eval group means there); MMLU 0-shot through "
        "LLaMA-Factory's evaluator (its own prompt, not lm-eval's). Llama-2-7b-chat.",
        dict(sdft_eval.PAPER_FIGURES)),
    "s3ft-paper": PaperSet(
        ["gsm8k", "mbpp", "nq_rc", "mmlu", "truthfulqa_mc2", "hellaswag", "winogrande"], ["gsm8k", "mbpp", "nq_rc"], {},
        "arXiv 2502.08130 (S3FT): Mistral-7B-Instruct-v0.2 fine-tuned on mathematical reasoning (GSM8K), Python "
        "programming (MBPP) and reading comprehension (NQ with passages: nq_rc here, the lost-in-the-middle oracle "
        "passages of 2,655 NQ-open dev questions, its test split by question); the abstract names MMLU and "
        "TruthfulQA among its general benchmarks; HellaSwag and Winogrande as issue #22 reads the paper. Not "
        "verified here: the full benchmark list, its shots, metrics and ARC split.",
        {"average drop": "\"standard SFT can lead to an average performance drop of up to 4.4 on multiple benchmarks, "
                         "such as MMLU and TruthfulQA. In contrast, S3FT reduces this drop by half, i.e. 2.5\" "
                         "(abstract)",
         "other benchmarks": "the paper's per-benchmark numbers are not available here"}),
    "ssr-paper": PaperSet(
        ["nq_rc_unanswerable", "mmlu", "truthfulqa_mc2", "gsm8k", "hellaswag"], ["nq_rc_unanswerable"], {},
        "arXiv 2409.04787 (SSR): Mistral-7B-Instruct-v0.2 trained on content-grounded QA with unanswerable queries "
        "(MultiDoc2Dial, NQ with passages; here nq_rc_unanswerable: the NQ oracle passages, each question also "
        "paired with a passage that does not answer it, our construction, its test split by question) and judged by "
        "an LLM (Mixtral-8x7B, GPT-4); retention on MMLU, TruthfulQA, GSM8K (a retention benchmark there) and "
        "HellaSwag; shots and metrics are not verified here.",
        {"average drop": "\"standard SFT can lead to an average performance drop of up to 16.7% on multiple "
                         "benchmarks, such as MMLU and TruthfulQA. In contrast, SSR results in close to 2% drop on "
                         "average\" (abstract)",
         "other benchmarks": "the paper's per-benchmark numbers are not available here"}),
}


def markdown_table(rows: list[list[str]]) -> str:
    """Rows of cells (the first is the header) as an aligned markdown table."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _signed(points: float) -> str:
    return f"{round(points, 1) + 0.0:+.1f}"  # + 0.0: no "-0.0" from rounding noise


def drop_table(runs: dict[str, dict], exclude=(), targets=None, extra_rows=()) -> str:
    """The comparison table: each benchmark's score per run (in %), with each run's change from the first
    run (the base) in brackets, and the average change over the retention benchmarks. One sign everywhere:
    change = run - base, so forgetting is negative (a paper's "average drop of 2.5" is -2.5 here).

    Target tasks (`targets`, by default those whose results say "kind": "target") and `exclude` are shown
    but not averaged; so is a benchmark some run lacks (shown as missing), so that all runs average the
    same benchmarks."""
    base, *others = runs
    rows = [["benchmark", base, *others]]
    changes, averaged = {label: [] for label in others}, 0
    for name in dict.fromkeys(n for results in runs.values() for n in results):
        score = {label: primary_score(name, results[name]) for label, results in runs.items() if name in results}
        first = next(results[name] for results in runs.values() if name in results)
        if targets is not None:
            kind = "target" if name in targets else "retention"
        else:
            kind = first.get("kind", "retention" if name in PRIMARY else "target")
        cells = [f"{name} ({kind}, n={first['n']})"]
        for label in runs:
            if label not in score:
                cells.append("missing")
            elif label == base or base not in score:
                cells.append(f"{100 * score[label]:.1f}")
            else:
                cells.append(f"{100 * score[label]:.1f} ({_signed(100 * score[label] - 100 * score[base])})")
        rows.append(cells)
        if kind == "retention" and name not in exclude and len(score) == len(runs):
            averaged += 1
            for label in others:
                changes[label].append(100 * (score[label] - score[base]))
    rows.append([f"average change, retention ({averaged})", "",
                 *[_signed(sum(c) / len(c)) if c else "-" for c in changes.values()]])
    return markdown_table(rows + [list(r) for r in extra_rows])


# ---------------------------------------------------------------------------------------------------------
# target tasks: generate an answer, judge it

# the official files under --data-dir, as laid out in ../shared/data
TARGET_FILES = {"gsm8k": "gsm8k/test.jsonl", "mbpp": "mbpp/mbpp.jsonl", "nq": "nq_open/NQ-open.dev.jsonl",
                "squad2": "squad2/dev-v2.0.subset.json", "nq_rc": "nq_rc/nq-open-oracle.jsonl.gz",
                "nq_rc_unanswerable": "nq_rc/nq-open-oracle.jsonl.gz"}


def target_examples(task: str, path, limit: int | None = None, split: str = "test") -> list:
    """A target task's evaluation examples: GSM8K test, MBPP's `split` (test: task_ids 11-510), NQ-open dev,
    nq_rc's `split` by question (test; nq_rc_unanswerable with its unanswerable pairs), or any task file. A task
    named gsm8k, mbpp, nq, ... must hold records of that format."""
    examples = load_task(path, task if task in TASKS else None)
    if examples[0].task == "mbpp" and task == "mbpp":
        examples = [e for e in examples if int(e.id) in tasks.MBPP_SPLITS[split]]
    if examples[0].task == "nq_rc":  # questions with passages: never score the questions trained on
        examples = tasks.nq_rc.select_split(examples, split)
    return subsample(examples, limit)


# SQuAD 2.0's official evaluation (evaluate-v2.0.py): normalise (lower case, no ASCII punctuation, no articles,
# single spaces) and split on whitespace. Kept apart from judges.normalize_answer, which also folds accents and
# Unicode punctuation: a metric that says "SQuAD" must count exactly as SQuAD does.
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_SQUAD_PUNCTUATION = set(string.punctuation)


def squad_tokens(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCTUATION)
    return _SQUAD_ARTICLES.sub(" ", text).split()


def token_recall(response: str, golds: list[str]) -> float:
    """SSR's answerable-question metric: the share of a gold answer's tokens that the response contains (counted
    with multiplicity, as SQuAD's F1 counts its overlap), the best over the gold answers. As in SQuAD's script,
    golds that normalise to nothing are left out, and with none left the response must be empty to score 1."""
    said = collections.Counter(squad_tokens(response))
    golds = [g for g in (squad_tokens(g) for g in golds) if g] or [[]]
    return max(sum((collections.Counter(g) & said).values()) / len(g) if g else float(not said) for g in golds)


def grounded_qa_scores(examples, outputs: list[str], correct: list[bool]) -> dict:
    """SSR's metrics on grounded QA (squad2, nq_rc): answerable questions by token recall and by the judge;
    unanswerable ones by how often the model declines, read by meaning (ssr/harness/declines.py: "The passage
    does not contain the answer." counts), with the strict count of the prompt's exact sentence beside it
    (`*_exact`); both apart and together."""
    answerable = [i for i, e in enumerate(examples) if e.aliases]
    unanswerable = [i for i, e in enumerate(examples) if not e.aliases]
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    recall = {i: token_recall(outputs[i], examples[i].aliases) for i in answerable}
    declined = {i: judges.declines(outputs[i]) for i in range(len(examples))}
    exact = {i: judges.says_sentence(outputs[i]) for i in range(len(examples))}
    return {"answerable_recall": mean(list(recall.values())), "answerable_acc": mean([correct[i] for i in answerable]),
            "answerable_decline_rate": mean([declined[i] for i in answerable]),
            "answerable_decline_rate_exact": mean([exact[i] for i in answerable]),
            "unanswerable_rate": mean([declined[i] for i in unanswerable]),
            "unanswerable_rate_exact": mean([exact[i] for i in unanswerable]),
            "unanswerable_acc": mean([correct[i] for i in unanswerable]),
            "recall_or_declined": mean([recall[i] if i in recall else declined[i] for i in range(len(examples))]),
            "n_answerable": len(answerable), "n_unanswerable": len(unanswerable)}


def score_generations(model, tok, examples, prefix, *, batch_size: int = 16, max_new_tokens: int = 512,
                      nq_mode: str = "contains", judge=None, progress: bool = True) -> dict:
    """Greedy answers to the task prompts, judged (by the rule judge, or the LLM `judge`): accuracy (pass@1 for
    MBPP), resumable through the files {prefix}.predictions.jsonl and {prefix}.verdicts.jsonl."""
    records = generate_records(model, tok, examples, "predict", f"{prefix}.predictions.jsonl", batch_size=batch_size,
                               max_new_tokens=max_new_tokens, progress=progress)
    if judge is None:
        verdicts = judges.judge_records({e.id: e for e in examples}, records, f"{prefix}.verdicts.jsonl",
                                        nq_mode=nq_mode, progress=progress)
    else:
        verdicts = llm_judge.judge_records(judge, {e.id: e for e in examples}, records, f"{prefix}.verdicts.jsonl",
                                           progress=progress)
    n = max(1, len(examples))
    result = {"acc": sum(v["correct"] for v in verdicts) / n, "n": len(examples), "kind": "target",
              "truncated": sum(r["finish_reason"] == "length" for r in records) / n,
              "per_question": {"acc": [int(v["correct"]) for v in verdicts]}}  # in example order
    if examples and examples[0].task == "nq":  # report both NQ modes; the judge's mode is the score
        other = "exact" if nq_mode == "contains" else "contains"
        result[other] = sum(judges.nq(r["output"], e.aliases, other).correct for r, e in zip(records, examples)) / n
        result[nq_mode] = result["acc"]
    if examples and examples[0].task in ("squad2", "nq_rc"):
        result.update(grounded_qa_scores(examples, [r["output"] for r in records], [v["correct"] for v in verdicts]))
    return result


def paper_labels(paper: PaperSet) -> dict[str, dict]:
    """{benchmark: {"kind", "metric"}} as the paper counts and reports it."""
    return {name: {"kind": "target" if name in paper.targets else "retention",
                   "metric": paper.metrics.get(name, PRIMARY.get(name, "acc"))} for name in paper.tasks}


def run_benchmarks(model, tok, benchmarks: dict, out_path, settings: dict, *, batch_size: int = 16,
                   max_new_tokens: int = 512, batch_tokens: int = 8192, nq_mode: str = "contains", judge=None,
                   labels: dict | None = None, progress: bool = True) -> dict:
    """Score every benchmark, writing out_path (JSON) after each; those already in it are kept, not rerun.
    benchmarks: {name: list of Examples (target task, by generation) or of MCQuestions (log-likelihood)}.
    Generations and verdicts are kept beside out_path ({stem}.{name}.predictions.jsonl, ...), so an
    interrupted target task resumes too. Rerunning with other settings is refused ({stem}.settings.json), and a
    finished benchmark is kept only for the very items it was scored on ("data_sha256" in its result: a task
    file edited, another --data-dir or NAME=FILE is refused by name, never a stale score).
    labels: {name: {"metric": ..., "kind": ...}} set in a benchmark's result (a paper's own metric, and whether
    the paper counts it as a target task or a retention benchmark); see `paper_labels`."""
    out_path = Path(out_path)
    stem = out_path.with_suffix("")
    # before anything is generated: the predictions beside out_path belong to these settings only
    with distributed.main_first():  # one writer under torchrun
        check_settings(f"{stem}.settings.json", settings, str(out_path))
    results = read_json(out_path, "results file").get("results", {})
    if not isinstance(results, dict):
        raise ValueError(f"{out_path}: 'results' is not an object; delete it to start over")
    for name, items in benchmarks.items():
        digest = data_digest(items)  # a finished score is kept only for the very items it was scored on
        if name in results:
            if not isinstance(results[name], dict) or results[name].get("data_sha256") != digest:
                raise ValueError(f"{out_path}: benchmark {name!r} was scored on other data than this run's (its "
                                 "task file, --data-dir or sample changed since); delete it from the file, or use "
                                 "another --out")
            continue
        if items and isinstance(items[0], MCQuestion):
            results[name] = score_questions(model, tok, items, batch_tokens=batch_tokens, progress=progress, desc=name)
        elif items and isinstance(items[0], sdft_eval.SdftItem):  # --protocol sdft; None: not scored (no number)
            if (result := sdft_eval.score(model, tok, items, f"{stem}.{name}", batch_size=batch_size, judge=judge,
                                          progress=progress)) is None:
                continue
            results[name] = result
        else:
            results[name] = score_generations(model, tok, items, f"{stem}.{name}", batch_size=batch_size,
                                              max_new_tokens=max_new_tokens, nq_mode=nq_mode, judge=judge,
                                              progress=progress)
        results[name]["data_sha256"] = digest
        if distributed.is_main():
            write_atomic(out_path, json.dumps({"settings": settings, "results": results}, indent=2))
    for name, fields in (labels or {}).items():
        if name in results and any(results[name].get(k) != v for k, v in fields.items()):
            results[name].update(fields)
            if distributed.is_main():
                write_atomic(out_path, json.dumps({"settings": settings, "results": results}, indent=2))
    return {name: results[name] for name in benchmarks if name in results}
