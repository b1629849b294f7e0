"""Generation records: a task's examples through the sampler into a resumable JSONL file, one record per
(example id, mode), with the exact prompt text and the generated ids (a self-generated target is trained as
those very ids). Also the one rule for prompts too long for the model's context."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterable

import torch
from tqdm import tqdm

from ssr.harness import distributed, tasks
from ssr.harness.runfiles import append_records, read_records
from ssr.sampling import complete


def prompt_ids(tok, prompt: tasks.Prompt) -> list[int]:
    """Token ids of the prompt, ending with the generation prompt, or with the prefill when there is one.

    A prefill is never encoded on its own and appended: SentencePiece puts a "▁" at the start of every
    separately encoded piece, and each template joins the assistant text differently, so the conversation
    is rendered with the prefill as an open assistant turn, cut right after it, and encoded once. The SDFT
    recipe's text pieces are the exception, on purpose: the official code encodes them one by one after BOS.
    """
    if prompt.pieces is not None:
        bos = [] if tok.bos_id is None else [tok.bos_id]  # LLaMA-Factory: no BOS for tokenizers without one
        return bos + [i for piece in prompt.pieces for i in tok.encode(piece)]
    if not prompt.prefix:
        return tok.apply_chat_template(prompt.messages, add_generation_prompt=True)
    return tok.apply_chat_template(prompt.messages + [{"role": "assistant", "content": prompt.prefix}],
                                   continue_final_message=True)


def prompt_text(tok, prompt: tasks.Prompt) -> str:
    """The prompt as the text its ids were encoded from, special tokens written out (for reading records).
    SDFT recipe pieces are joined here, but were encoded one by one (each with its leading "▁")."""
    if prompt.pieces is not None:
        bos = "" if tok.bos_id is None else tok.decode([tok.bos_id], skip_special_tokens=False)
        return bos + "".join(prompt.pieces)
    if not prompt.prefix:
        return tok.render_chat(prompt.messages, add_generation_prompt=True)
    text = tok.render_chat(prompt.messages + [{"role": "assistant", "content": prompt.prefix}])
    return text[:text.rindex(prompt.prefix) + len(prompt.prefix)]


def check_context(model, lengths: list[tuple[str, int]], max_new_tokens: int) -> None:
    """The one rule for prompts too long for the model: prompt + max_new_tokens must fit its context
    (config.json's max_position_embeddings), or nothing is generated and the error gives the counts.
    lengths: (example id, prompt tokens). Cutting a prompt would change the question; a cache past the context
    would compute positions the model never saw (and, for a huge prompt, ask for gigabytes)."""
    context = model.config.max_position_embeddings
    over = [(n, id) for id, n in lengths if n + max_new_tokens > context]
    if over:
        n, id = max(over)
        raise ValueError(f"{len(over)} prompt(s) do not fit the model's context of {context} tokens "
                         f"(max_position_embeddings) with --max-new-tokens {max_new_tokens}: the longest, example "
                         f"{id!r}, has {n} prompt tokens; lower --max-new-tokens or leave such examples out")


def check_prompts(model, tok, examples: list[tasks.Example], mode: str, max_new_tokens: int,
                  recipe: str = "project") -> None:
    """check_context for a task's prompts in one mode; the scripts call it before they write anything."""
    check_context(model, [(ex.id, len(prompt_ids(tok, tasks.build_prompt(ex, mode, recipe)))) for ex in examples],
                  max_new_tokens)


def record_key(record: dict) -> tuple[str, str | None]:
    """What a generation record, its verdict and every work item of `resume_records` are keyed by: (id, mode)."""
    return str(record["id"]), record.get("mode")


def resume_records(out_path, items: list[tuple[tuple, object]], work: Callable[[list], Iterable[dict]], *,
                   batch_size: int, settings: dict, stamp: Callable[[object], dict] | None = None,
                   plan: Callable[[list], list] | None = None, desc: str = "", progress: bool = True,
                   postfix: Callable[[], str] | None = None) -> None:
    """The one resumable, torchrun-shared loop of every step that writes records to an append-only JSONL file
    (generation, rule judging, LLM judging): do what `out_path` lacks, and leave it whole.

    items: (key, item) pairs, key = (id, mode) = `record_key` of the record the item makes. What `out_path`
    (or, under torchrun, an interrupted run's part files) already holds is kept and skipped; `stamp(item)` gives
    the fields its kept record must hold (a generation's prompt text, a verdict's digest of what it judged), so
    that a record made from other input (a task file edited since) is refused by name, never joined to the new
    question. `plan` turns the pending pairs into the work in one process's order (tokenized, checked, longest
    first). The work is cut into batches of `batch_size`, in that order; `work(batch)` yields a batch's records
    as they finish, each appended as one whole line, so a killed run loses at most what is in flight, and an
    error raised by `work` after some records (an item refused, Ctrl-C) keeps those before it goes on.

    Under torchrun the batches are dealt round-robin to the ranks (each batch is the one-process batch); each
    rank appends to its own part file, and rank 0 merges them in the one-process order (`distributed`). The part
    files carry `settings` (what the records are made with): an interrupted run's parts made another way are
    refused by name. The caller reads the records back by key, never by line."""
    out_path = Path(out_path)
    if out_path.is_dir():
        raise IsADirectoryError(f"{out_path} is a folder, not a JSONL file")
    kept = {record_key(r): r for r in read_records(out_path)}
    in_parts = {record_key(r): r for r in distributed.part_records(out_path, settings)}
    if stamp is not None:
        for key, item in items:
            old = kept.get(key) or in_parts.get(key)
            wanted = stamp(item) if old is not None else {}
            changed = [k for k, v in wanted.items() if k in old and old[k] != v]
            if changed:
                where = out_path if key in kept else f"{out_path}'s part files"
                raise ValueError(f"{where}: the record of {key[0]!r} ({key[1]}) was made from other input (its "
                                 f"{changed[0]} differs from what this run would use: the task, predictions or "
                                 f"data changed since); delete {out_path.name} to start over, or use another output")
    pending = [(key, item) for key, item in items if key not in kept]
    pending = plan(pending) if plan else pending
    todo = [item for key, item in pending if key not in in_parts]
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    rank, world = distributed.rank(), distributed.world()
    with tqdm(total=len(todo), desc=desc, unit="item", disable=not (progress and rank == 0)) as bar:
        for b in range(rank, len(batches), world):
            append_records(distributed.own_part(out_path), work(batches[b]))
            bar.update(sum(map(len, batches[b:b + world])))  # rank 0's batch and, as an estimate, the others'
            if postfix:
                bar.set_postfix_str(postfix())
    distributed.merge_parts(out_path, [key for key, _ in pending], record_key)


def generate_records(model, tok, examples: list[tasks.Example], mode: str, out_path, *, batch_size: int = 16,
                     max_new_tokens: int = 512, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     seed: int | None = None, stop_strings=(), progress: bool = True,
                     recipe: str = "project") -> list[dict]:
    """Generate what `out_path` lacks for these examples in this mode; returns their records in example order.

    One record per example: {"id", "mode", "messages", "prompt_text" (the exact rendered prompt, special tokens
    as text), "output", "finish_reason", "prompt_tokens", "output_tokens", "output_ids", "stop_id"}, plus
    "prefix" in rewrite mode (the prefill; "output" is only its continuation). "output_ids" are the tokens
    generated (for rewrites, after the prefill), "stop_id" the stop token sampled (None if cut): a
    self-generated target is trained as these very ids. Records
    land in order of generation and a file may hold several modes: read them back by (id, mode), never by line.
    A kept record whose prompt text is not the example's prompt now (the task file was edited) is refused.
    Longest prompts first, so running out of memory happens at once, not hours in; each batch is appended as
    whole lines, so a killed run loses at most the batch in flight (`resume_records`). The model is used as
    given: for the base model of a LoRA model, call this inside `lora.disabled(model)`. Greedy by default, as
    the methods want.
    """
    if mode not in tasks.MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(tasks.MODES)}")
    items = [((ex.id, mode), (ex, tasks.build_prompt(ex, mode, recipe))) for ex in examples]

    def plan(pending):  # tokenized, checked against the context, longest prompts first
        pending = sorted(((key, (prompt_ids(tok, p), ex, p)) for key, (ex, p) in pending),
                         key=lambda pair: -len(pair[1][0]))
        check_context(model, [(ex.id, len(ids)) for _, (ids, ex, _) in pending], max_new_tokens)
        return pending

    rank = distributed.rank()
    generator = None if seed is None else torch.Generator(model.lm_head.weight.device).manual_seed(seed + rank)
    count = {"tokens": 0, "start": time.perf_counter()}

    def work(batch):
        completions = complete(model, [ids for ids, _, _ in batch], max_new_tokens, temperature, top_k, top_p,
                               tok.stop_ids, generator=generator, stop_strings=stop_strings, tokenizer=tok)
        count["tokens"] += sum(len(c.tokens) for c in completions)
        return [_record(tok, mode, ids, ex, prompt, c, stop_strings) for (ids, ex, prompt), c in zip(batch, completions)]

    resume_records(out_path, items, work, batch_size=batch_size, plan=plan, desc=mode, progress=progress,
                   stamp=lambda item: {"prompt_text": prompt_text(tok, item[1])},
                   settings={"mode": mode, "recipe": recipe, "max_new_tokens": max_new_tokens,
                             "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed,
                             "stop": list(stop_strings)},
                   postfix=lambda: f"{distributed.world() * count['tokens'] / (time.perf_counter() - count['start']):.1f} tok/s")
    wanted = {ex.id for ex in examples}
    by_id = {r["id"]: r for r in read_records(out_path) if r.get("mode") == mode and r["id"] in wanted}
    return [by_id[ex.id] for ex in examples]


def cut_at(text: str, stop_strings) -> str:
    """Text up to (not including) the first stop string it contains."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


def _record(tok, mode, ids, ex, prompt, completion, stop_strings) -> dict:
    output = cut_at(tok.decode(completion.tokens), stop_strings)
    output_ids = completion.tokens
    if prompt.prefix:
        # the continuation of "...step by step." starts with a space or a newline: drop it from the text, and the
        # whitespace-only tokens from the ids, so that text and ids stay the same answer
        output = output.lstrip()
        while output_ids and not tok.decode(output_ids[:1]).strip():
            output_ids = output_ids[1:]
    return {"id": ex.id, "mode": mode, "messages": prompt.messages, "prompt_text": prompt_text(tok, prompt),
            "output": output,
            "finish_reason": completion.finish_reason, "prompt_tokens": len(ids),
            "output_tokens": len(completion.tokens), "output_ids": output_ids, "stop_id": completion.stop_id,
            **({"prefix": prompt.prefix} if mode == "rewrite" else {})}
