"""The four methods differ in one thing only: which response each training prompt is paired with.

- SFT:  the gold answer.
- SSR:  the base model's own answer where the judge accepts it, else gold.
- S3FT: the base model's own answer where accepted; else, only for those, its paraphrase of the gold
        answer where accepted; else gold.
- SDFT: the base model's rewrite of the gold answer (distillation prompt) where accepted, else gold.

Each method is one function `method(examples, gold, answers) -> [Target]`. It asks `answers(mode,
examples)` for the generations it needs; `cached_answers` makes that function for a run folder: it
generates with the base model (adapters off, greedy), judges, and keeps both on disk, so a rerun
resumes. `run_method` chains targets and LoRA training. In the run folder:

    predict.jsonl, predict.verdicts.jsonl         the base model's answers (SSR, S3FT)
    paraphrase.jsonl, paraphrase.verdicts.jsonl   its paraphrases of gold, where its answer failed (S3FT)
    rewrite.jsonl, rewrite.verdicts.jsonl         its rewrites of gold (SDFT)
    targets.jsonl                                 one record per example: id, messages, response, source,
                                                  response_ids (self-generated targets)

A self-generated target is trained as the very token ids the model generated, after the ids of the
predict prompt, with the stop token it sampled: decoding to text and encoding again need not give
those ids back (the original Mistral template glues "[/INST]The" where the model said "▁The"). The
text in targets.jsonl is for reading. Gold targets go through the chat template.

The trap avoided: a generation cut off at max_new_tokens can still contain a correct-looking answer;
it never ends, so training on it would teach the model not to stop. Such a generation is never a
target, whatever the judge said; nor is an empty one.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ssr import judges, lora
from ssr.runfiles import read_records, write_records
from ssr.sampling import generate_records
from ssr.tasks import TASKS, Example, gold_response, predict_messages
from ssr.trainer import TrainConfig, encode, train

METHODS = ("sft", "ssr", "s3ft", "sdft")
SOURCES = ("gold", "self", "paraphrase", "rewrite")


@dataclass
class Target:
    id: str
    response: str  # the assistant turn to train on
    source: str  # one of SOURCES
    ids: list[int] | None = None  # self-generated: the generated ids + the stop token, trained as they are


@dataclass
class Answer:
    output: str  # what the base model wrote (for rewrites, after the prefill)
    rejected: str | None  # why it may not be a target ("judge: mismatch", "cut at max_new_tokens"), None if it may
    ids: list[int] | None = None  # the generated ids + the stop token sampled (None for a cut generation)


Answers = Callable[[str, list[Example]], dict[str, Answer]]  # (mode, examples) -> {id: Answer}


def accepted(answers: dict[str, Answer], id: str) -> bool:
    return id in answers and answers[id].rejected is None


def first_accepted(e: Example, gold: dict[str, str], *candidates: tuple[dict[str, Answer], str]) -> Target:
    """The first of the (answers, source) candidates that has an accepted answer for e; else the gold answer."""
    for answers, source in candidates:
        if accepted(answers, e.id):
            return Target(e.id, answers[e.id].output, source, answers[e.id].ids)
    return Target(e.id, gold[e.id], "gold")


def sft(examples: list[Example], gold: dict[str, str], answers: Answers) -> list[Target]:
    return [first_accepted(e, gold) for e in examples]


def ssr(examples, gold, answers: Answers) -> list[Target]:
    own = answers("predict", examples)
    return [first_accepted(e, gold, (own, "self")) for e in examples]


def s3ft(examples, gold, answers: Answers) -> list[Target]:
    own = answers("predict", examples)
    paraphrased = answers("paraphrase", [e for e in examples if not accepted(own, e.id)])  # only where it failed
    return [first_accepted(e, gold, (own, "self"), (paraphrased, "paraphrase")) for e in examples]


# SDFT's own filter: a rewrite that talks about the reference it was shown is not in the model's own voice.
MENTIONS_REFERENCE = re.compile(r"reference (answer|solution)", re.IGNORECASE)


def sdft(examples, gold, answers: Answers) -> list[Target]:
    rewrites = {id: a for id, a in answers("rewrite", examples).items() if not MENTIONS_REFERENCE.search(a.output)}
    return [first_accepted(e, gold, (rewrites, "rewrite")) for e in examples]


CHOOSE = {"sft": sft, "ssr": ssr, "s3ft": s3ft, "sdft": sdft}


# ---------------------------------------------------------------------------------------------------------
# generations and verdicts, cached in the run folder


def rejection(generation: dict, verdict: dict, quality: bool = True) -> str | None:
    """Why a judged generation may not be a target, or None if it may. quality: apply the task's target
    quality rule too (`judges.unfit_target`: e.g. a GSM8K answer with no worked step), correct or not."""
    if generation["finish_reason"] != "stop":
        return "cut at max_new_tokens"
    if not generation["output"].strip():
        return "empty"
    if not verdict["correct"]:
        return f"judge: {verdict['kind']}"
    if quality:
        return verdict.get("unfit", judges.unfit_target(verdict.get("task", ""), generation["output"]))
    return None


def cached_answers(model, tok, run_dir, *, batch_size: int = 16, max_new_tokens: int = 512,
                   workers: int | None = None, quality: bool = True, progress: bool = True) -> Answers:
    """An `answers` function that generates with the base model (adapters off), judges, and keeps both in
    run_dir/{mode}.jsonl and {mode}.verdicts.jsonl; each file resumes where a previous run stopped.
    Why each answer was not accepted is kept in `answers.rejected[(mode, id)]`."""
    run = Path(run_dir)

    def answers(mode: str, examples: list[Example]) -> dict[str, Answer]:
        if not examples:
            return {}
        with lora.disabled(model):
            records = generate_records(model, tok, examples, mode, run / f"{mode}.jsonl", batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=progress)
        verdicts = judges.judge_records({e.id: e for e in examples}, records, run / f"{mode}.verdicts.jsonl",
                                        workers=workers, progress=progress)
        out = {r["id"]: Answer(r["output"], rejection(r, v, quality), generated_ids(r, run / f"{mode}.jsonl"))
               for r, v in zip(records, verdicts)}
        answers.rejected.update({(mode, id): a.rejected for id, a in out.items() if a.rejected})
        return out

    answers.rejected = {}
    return answers


def generated_ids(record: dict, path) -> list[int] | None:
    """The ids to train on for a generation record: the generated ids + the stop token sampled; None if cut."""
    if record["finish_reason"] != "stop":
        return None
    if record.get("stop_id") is None:  # records of an older version, or stopped by a stop string
        raise ValueError(f"{path}: record {record['id']} has no output_ids/stop_id, so it cannot be trained as the "
                         "ids the model generated; delete the file to generate it again")
    return record["output_ids"] + [record["stop_id"]]


def build_targets(method: str, examples: list[Example], answers: Answers, run_dir) -> list[Target]:
    """The training target of every example for this method, cached in run_dir/targets.jsonl."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    path = Path(run_dir) / "targets.jsonl"
    cached = read_records(path)
    if [r["id"] for r in cached] == [e.id for e in examples]:
        return [Target(r["id"], r["response"], r["source"], r.get("response_ids")) for r in cached]
    if method != "sft" and examples[0].task not in TASKS:
        raise ValueError(f"--method {method} needs a judge, which exists for tasks {', '.join(TASKS)}; "
                         f"these examples are {examples[0].task!r} records (use --method sft)")
    targets = CHOOSE[method](examples, {e.id: gold_response(e) for e in examples}, answers)
    rejected = getattr(answers, "rejected", {})
    write_records(path, ({"id": t.id, "messages": predict_messages(e), "response": t.response, "source": t.source,
                          "rejected": {mode: why for (mode, id), why in rejected.items() if id == e.id},
                          **({"response_ids": t.ids} if t.ids is not None else {})}
                         for e, t in zip(examples, targets)))
    return targets


def target_stats(run_dir) -> str:
    """One line: where the targets came from, and why the model's answers were not used where they were not."""
    records = read_records(Path(run_dir) / "targets.jsonl")
    sources = Counter(r["source"] for r in records)
    why = Counter(reason for r in records for reason in r.get("rejected", {}).values())
    line = ", ".join(f"{s} {sources[s]}" for s in SOURCES if sources[s])
    line += f" ({100 * (len(records) - sources['gold']) / max(1, len(records)):.0f}% generated by the model)"
    if why:
        line += "; answers not used: " + ", ".join(f"{reason} {n}" for reason, n in why.most_common())
    return line


def training_samples(tok, examples: list[Example], targets: list[Target], max_len: int):
    """Every example as a training sample on its predict prompt: gold through the chat template; a self-generated
    target as the predict prompt's ids + the ids the model generated + its stop token. Returns encode's result."""
    items = [predict_messages(e) + [{"role": "assistant", "content": t.response}] if t.ids is None
             else (tok.apply_chat_template(predict_messages(e), add_generation_prompt=True), t.ids)
             for e, t in zip(examples, targets)]
    return encode(tok, items, max_len, [t.source for t in targets])


def run_method(method: str, model, tok, examples: list[Example], run_dir, *, lora_settings: lora.LoraSettings,
               train_config: TrainConfig, batch_size: int = 16, max_new_tokens: int = 512, max_len: int = 2048,
               workers: int | None = None, quality: bool = True, progress: bool = True) -> Path:
    """Targets, then LoRA training; returns the adapter folder. Whatever run_dir already holds is reused."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    answers = cached_answers(model, tok, run, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             workers=workers, quality=quality, progress=progress)
    targets = build_targets(method, examples, answers, run)
    print(f"{method} targets: {target_stats(run)}")
    adapter = run / "adapter"
    if (adapter / "adapter_config.json").is_file():
        print(f"{adapter} is already trained")
        return adapter
    samples, cut = training_samples(tok, examples, targets, max_len)
    if cut["truncated"] or cut["dropped"]:
        print(f"{cut['truncated']} conversation(s) longer than {max_len} tokens were truncated; "
              f"{cut['dropped']} left without any target token were dropped")
    if not samples:
        raise ValueError("no training conversation left")
    torch.manual_seed(train_config.seed)  # LoRA's A matrices are drawn from it
    lora.apply_lora(model, lora_settings.r, lora_settings.alpha, lora_settings.dropout, targets=lora_settings.modules)
    train(model, samples, train_config, run, resume=True, progress=progress)
    return adapter
