"""From a task file to training targets: generate -> judge -> choose, each step cached in the run folder.

    RUN/predict.jsonl, predict.verdicts.jsonl         the base model's answers (SSR, S3FT)
    RUN/paraphrase.jsonl, paraphrase.verdicts.jsonl   its paraphrases of gold, where its answer failed (S3FT)
    RUN/rewrite.jsonl, rewrite.verdicts.jsonl         its rewrites of gold (SDFT)
    RUN/targets.jsonl                                 one record per example: id, messages, response, source

Every file is appended to as work finishes and read back on a rerun, so an interrupted run continues
where it stopped. The trap avoided: targets must come from the base model. They are generated
greedily with the adapters switched off (`lora.disabled`), never from a model halfway through training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ssr import judges, lora, methods
from ssr import prompts as P
from ssr.data import encode
from ssr.inference import generate_records
from ssr.jsonl import read_records, write_records
from ssr.methods import Target
from ssr.tasks import TASKS, Example
from ssr.trainer import TrainConfig, seed_everything, train


def build_targets(method: str, model, tok, examples: list[Example], run_dir, *, batch_size: int = 16,
                  max_new_tokens: int = 512, workers: int | None = None, progress: bool = True) -> list[Target]:
    """The training target of every example for this method, cached in run_dir/targets.jsonl."""
    if method not in methods.METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(methods.METHODS)}")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    cached = read_records(run / "targets.jsonl")
    if [r["id"] for r in cached] == [e.id for e in examples]:
        return [Target(r["id"], r["response"], r["source"]) for r in cached]
    if method != "sft" and examples[0].task not in TASKS:
        raise ValueError(f"--method {method} needs a judge, which exists for tasks {', '.join(TASKS)}; "
                         f"these examples are {examples[0].task!r} records (use --method sft)")

    def generated(mode: str, subset: list[Example]) -> tuple[dict, dict]:
        """(records, verdicts) by id for one mode; both files resume where a previous run stopped."""
        if not subset:
            return {}, {}
        with lora.disabled(model):
            records = generate_records(model, tok, subset, mode, run / f"{mode}.jsonl", batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=progress)
        verdicts = judges.judge_records({e.id: e for e in subset}, records, run / f"{mode}.verdicts.jsonl",
                                        workers=workers, progress=progress)
        return {r["id"]: r for r in records}, {v["id"]: v for v in verdicts}

    gold = {e.id: P.gold_response(e) for e in examples}
    if method == "sft":
        targets = methods.sft(examples, gold)
    elif method == "ssr":
        targets = methods.ssr(examples, gold, *generated("predict", examples))
    elif method == "s3ft":
        predictions, verdicts = generated("predict", examples)
        failed = [e for e in examples if not methods.usable(predictions.get(e.id), verdicts.get(e.id))]
        targets = methods.s3ft(examples, gold, predictions, verdicts, *generated("paraphrase", failed))
    else:
        targets = methods.sdft(examples, gold, *generated("rewrite", examples))

    by_id = {e.id: e for e in examples}
    write_records(run / "targets.jsonl", ({"id": t.id, "messages": P.predict_messages(by_id[t.id]),
                                          "response": t.response, "source": t.source} for t in targets))
    return targets


def conversations(examples: list[Example], targets: list[Target]) -> list[list[dict]]:
    """Training conversations: the task prompt, then the chosen response as the assistant turn."""
    by_id = {e.id: e for e in examples}
    return [P.predict_messages(by_id[t.id]) + [{"role": "assistant", "content": t.response}] for t in targets]


@dataclass
class LoraSettings:
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q_proj", "v_proj")


def run_method(method: str, model, tok, examples: list[Example], run_dir, *, lora_settings: LoraSettings,
               train_config: TrainConfig, batch_size: int = 16, max_new_tokens: int = 512, max_len: int = 2048,
               workers: int | None = None, progress: bool = True) -> Path:
    """Targets, then LoRA training; returns the adapter folder. Whatever run_dir already holds is reused."""
    run = Path(run_dir)
    adapter = run / "adapter"
    targets = build_targets(method, model, tok, examples, run, batch_size=batch_size,
                            max_new_tokens=max_new_tokens, workers=workers, progress=progress)
    counts = methods.source_counts(targets)
    own = len(targets) - counts["gold"]
    print(f"{method} targets: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v) +
          f" ({100 * own / max(1, len(targets)):.0f}% generated by the model)")
    if (adapter / "adapter_config.json").is_file():
        print(f"{adapter} is already trained")
        return adapter
    samples, cut = encode(tok, conversations(examples, targets), max_len)
    if cut["truncated"] or cut["dropped"]:
        print(f"{cut['truncated']} conversation(s) longer than {max_len} tokens were truncated; "
              f"{cut['dropped']} left without any target token were dropped")
    if not samples:
        raise ValueError("no training conversation left")
    seed_everything(train_config.seed)  # LoRA's A matrices are drawn from it
    lora.apply_lora(model, r=lora_settings.r, alpha=lora_settings.alpha, dropout=lora_settings.dropout,
                    targets=lora_settings.targets)
    train(model, samples, train_config, run, resume=True, progress=progress)
    return adapter
