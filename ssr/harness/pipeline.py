"""The run-folder pipeline: generate -> judge -> targets -> LoRA training, every step kept on disk.

`cached_generations` is the methods' `generations(mode, examples)` for a run folder: it generates with the base model
(adapters off; greedy, or sampled in the sdft recipe), judges (the task's rule judge, or an LLM judge from
ssr/harness/llm_judge.py, which also judges generic chat records), and keeps both, so a rerun resumes.
`run_method` chains targets and LoRA training. In the run folder:

    predict.jsonl, predict.verdicts.jsonl         the base model's answers (SSR, S3FT)
    paraphrase.jsonl, paraphrase.verdicts.jsonl   its paraphrases of gold, where its answer failed (S3FT)
    rewrite.jsonl, rewrite.verdicts.jsonl         its rewrites of gold (SDFT)
    targets.jsonl                                 one record per example: id, messages, response, source,
                                                  response_ids (self-generated targets), rejected (why not)

The text in targets.jsonl is for reading; self-generated targets are trained as their ids.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from ssr import lora
from ssr.harness import distributed, judges, llm_judge
from ssr.harness.recipes import LoraSettings, encode_text_template, sdft_rewrite
from ssr.harness.records import generate_records
from ssr.harness.runfiles import read_records, write_records
from ssr.harness.tasks import TASKS, Example, build_prompt, gold_response
from ssr.harness.training import train
from ssr.methods import CHOOSE, METHODS, SOURCES, Generation, Generations, Target, training_samples
from ssr.trainer import TrainConfig


def check_judge(task: str, judge: str, what: str, where: str) -> None:
    """The one "this needs a judge" rule, for training on the model's own text and for judge.py: a rule judge
    exists for TASKS; anything else (chat records) needs the LLM judge. what: who needs it ("--method ssr");
    where: what holds the records ("--data FILE")."""
    if task not in TASKS and judge != "llm":
        instead = ", or --method sft" if what.startswith("--method") else ""
        raise ValueError(f"{what} needs a judge: a rule judge exists for tasks {', '.join(TASKS)}; {where} holds "
                         f"{task!r} records (use --judge llm{instead})")


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


def cached_generations(model, tok, run_dir, *, batch_size: int = 16, max_new_tokens: int = 512,
                   workers: int | None = None, quality: bool = True, judge=None, progress: bool = True,
                   recipe: str = "project", sampling: dict | None = None) -> Generations:
    """A `generations` function that generates with the base model (adapters off), judges, and keeps both in
    run_dir/{mode}.jsonl and {mode}.verdicts.jsonl; each file resumes where a previous run stopped.
    judge: None for the task's rule judge, else an LLM judge (`llm_judge.make_judge`). sampling: temperature,
    top_k, top_p, seed (default greedy). The sdft recipe filters its rewrites with `sdft_rewrite` instead of a
    judge. Why each answer was not accepted is kept in `generations.rejected[(mode, id)]`."""
    run = Path(run_dir)

    def generations(mode: str, examples: list[Example]) -> dict[str, Generation]:
        if not examples:
            return {}
        with lora.disabled(model):
            records = generate_records(model, tok, examples, mode, run / f"{mode}.jsonl", batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=progress, recipe=recipe,
                                       **(sampling or {}))
        by_id, verdicts_path = {e.id: e for e in examples}, run / f"{mode}.verdicts.jsonl"
        if recipe == "sdft":  # trained as text, as the official code does (encode_text_template)
            out = {r["id"]: sdft_rewrite(r, e) for r, e in zip(records, examples)}
        else:
            if judge is None:
                verdicts = judges.judge_records(by_id, records, verdicts_path, workers=workers, progress=progress)
            else:
                verdicts = llm_judge.judge_records(judge, by_id, records, verdicts_path, progress=progress)
            out = {r["id"]: Generation(r["output"], rejection(r, v, quality), generated_ids(r, run / f"{mode}.jsonl"))
                   for r, v in zip(records, verdicts)}
        generations.rejected.update({(mode, id): a.rejected for id, a in out.items() if a.rejected})
        return out

    generations.rejected = {}
    generations.judge = "rule" if judge is None else judge.settings["judge"]
    return generations


def generated_ids(record: dict, path) -> list[int] | None:
    """The ids to train on for a generation record: the generated ids + the stop token sampled; None if cut."""
    if record["finish_reason"] != "stop":
        return None
    if record.get("stop_id") is None:  # records of an older version, or stopped by a stop string
        raise ValueError(f"{path}: record {record['id']} has no output_ids/stop_id, so it cannot be trained as the "
                         "ids the model generated; delete the file to generate it again")
    return record["output_ids"] + [record["stop_id"]]


def build_targets(method: str, examples: list[Example], generations: Generations, run_dir,
                  recipe: str = "project") -> list[Target]:
    """The training target of every example for this method, cached in run_dir/targets.jsonl."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    path = Path(run_dir) / "targets.jsonl"
    cached = read_records(path)
    if [r["id"] for r in cached] == [e.id for e in examples]:
        return [Target(r["id"], r["response"], r["source"], r.get("response_ids")) for r in cached]
    if method != "sft":
        check_judge(examples[0].task, getattr(generations, "judge", "rule"), f"--method {method}", "the examples")
    targets = CHOOSE[method](examples, {e.id: gold_response(e) for e in examples}, generations)
    rejected = getattr(generations, "rejected", {})
    if distributed.is_main():  # every rank chose the same targets; one writes them
        write_records(path, ({"id": t.id, "messages": build_prompt(e, "train", recipe).messages,
                              "response": t.response, "source": t.source,
                              "rejected": {mode: why for (mode, id), why in rejected.items() if id == e.id},
                              **({"response_ids": t.ids} if t.ids is not None else {})}
                             for e, t in zip(examples, targets)))
    distributed.barrier()
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



def run_method(method: str, model, tok, examples: list[Example], run_dir, *, lora_settings: LoraSettings,
               train_config: TrainConfig, batch_size: int = 16, max_new_tokens: int = 512, max_len: int = 2048,
               workers: int | None = None, quality: bool = True, judge=None, progress: bool = True,
               recipe: str = "project", sampling: dict | None = None, generations_dir=None) -> Path:
    """Targets, then LoRA training; returns the adapter folder. Whatever run_dir already holds is reused.
    judge: None for the task's rule judge, else an LLM judge (`llm_judge.make_judge`). generations_dir: the folder
    that keeps the base model's generations and verdicts (default run_dir); a study points every run at one
    folder, so that runs with the same generation settings share them (ssr/harness/study.py)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    generations = cached_generations(model, tok, Path(generations_dir or run), batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, workers=workers, quality=quality, judge=judge,
                                     progress=progress, recipe=recipe, sampling=sampling)
    targets = build_targets(method, examples, generations, run, recipe)
    print(f"{method} targets: {target_stats(run)}")
    adapter = run / "adapter"
    if (adapter / "adapter_config.json").is_file():
        print(f"{adapter} is already trained")
        return adapter
    if recipe == "sdft":
        samples, cut = encode_text_template(tok, [build_prompt(e, "train", "sdft") for e in examples], targets, max_len)
    else:  # the project recipe trains on the predict prompt; s3ft on its own training prompt (tasks.train_messages)
        samples, cut = training_samples(tok, [build_prompt(e, "train", recipe).messages for e in examples], targets,
                                        max_len)
    if cut["truncated"] or cut["dropped"]:
        print(f"{cut['truncated']} conversation(s) longer than {max_len} tokens were truncated; "
              f"{cut['dropped']} left without any target token were dropped")
    if not samples:
        raise ValueError("no training conversation left")
    torch.manual_seed(train_config.seed)  # LoRA's A matrices are drawn from it
    lora.apply_lora(model, lora_settings.r, lora_settings.alpha, lora_settings.dropout, targets=lora_settings.modules)
    train(model, samples, train_config, run, resume=True, progress=progress)
    return adapter
