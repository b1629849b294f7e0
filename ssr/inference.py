"""Generate the model's outputs for a task's examples in one mode, into a resumable JSONL file.

One record per example: {"id", "mode", "messages", "output", "finish_reason", "prompt_tokens",
"output_tokens"}, plus "prefix" in rewrite mode (the prefill; "output" is only its continuation).
Prompts come from ssr.prompts. The work is sorted by prompt length, longest first, so each batch
holds prompts of similar length (little padding) and running out of memory happens at once, not
hours in; each finished batch is appended as whole lines, so a killed run loses at most the batch
in flight, and a rerun skips the (id, mode) pairs the file already holds.

The trap avoided: records land in the order of generation, not of the task file, and a file may
hold several modes. Read them back by (id, mode), never by line number.
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from ssr import prompts as P
from ssr.jsonl import append_records, read_records
from ssr.sampling import complete, cut_at
from ssr.tasks import Example


def generate_records(model, tok, examples: list[Example], mode: str, out_path, *, batch_size: int = 16,
                     max_new_tokens: int = 512, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     seed: int | None = None, stop_strings=(), progress: bool = True) -> list[dict]:
    """Generate what `out_path` lacks for these examples in this mode; returns their records in example order.

    The model is used as given: to generate with the base model of a LoRA model, call this inside
    `lora.disabled(model)`. Greedy by default, as the methods want for their targets.
    """
    if mode not in P.MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(P.MODES)}")
    done = {(r["id"], r.get("mode")) for r in read_records(out_path)}
    todo = []  # (prompt ids, example, prompt)
    for ex in examples:
        if (ex.id, mode) not in done:
            prompt = P.build(ex, mode)
            todo.append((P.prompt_ids(tok, prompt), ex, prompt))
    todo.sort(key=lambda item: -len(item[0]))

    device = model.lm_head.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    new_tokens, start = 0, time.perf_counter()
    with tqdm(total=len(todo), desc=mode, unit="ex", disable=not progress) as bar:
        for i in range(0, len(todo), batch_size):
            batch = todo[i:i + batch_size]
            completions = complete(model, [ids for ids, _, _ in batch], max_new_tokens, temperature, top_k, top_p,
                                   tok.stop_ids, generator=generator, stop_strings=stop_strings, tokenizer=tok)
            append_records(out_path, [_record(tok, mode, ids, ex, prompt, c, stop_strings)
                                      for (ids, ex, prompt), c in zip(batch, completions)])
            new_tokens += sum(len(c.tokens) for c in completions)
            bar.update(len(batch))
            bar.set_postfix_str(f"{new_tokens / (time.perf_counter() - start):.1f} tok/s")

    wanted = {ex.id for ex in examples}
    by_id = {r["id"]: r for r in read_records(out_path) if r.get("mode") == mode and r["id"] in wanted}
    return [by_id[ex.id] for ex in examples]


def _record(tok, mode, ids, ex, prompt, completion, stop_strings) -> dict:
    output = tok.decode(completion.tokens)
    if stop_strings:
        output = cut_at(output, stop_strings)
    if prompt.prefix:
        output = output.lstrip()  # the continuation of "...step by step." starts with a space or a newline
    record = {"id": ex.id, "mode": mode, "messages": prompt.messages, "output": output,
              "finish_reason": completion.finish_reason, "prompt_tokens": len(ids),
              "output_tokens": len(completion.tokens)}
    if mode == "rewrite":
        record["prefix"] = prompt.prefix
    return record
