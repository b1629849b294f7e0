"""Generation records: a task's examples through the sampler into a resumable JSONL file, one record per
(example id, mode), with the exact prompt text and the generated ids (a self-generated target is trained as
those very ids). Also the one rule for prompts too long for the model's context."""
from __future__ import annotations

import time

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
    Longest prompts first, so running out of memory happens at once, not hours in; each batch is appended as
    whole lines, so a killed run loses at most the batch in flight. The model is used as given: for the base
    model of a LoRA model, call this inside `lora.disabled(model)`. Greedy by default, as the methods want.
    """
    if mode not in tasks.MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(tasks.MODES)}")
    key = lambda r: (r["id"], r.get("mode"))  # noqa: E731
    done = {key(r) for r in read_records(out_path)}
    pending = [(ex, tasks.build_prompt(ex, mode, recipe)) for ex in examples if (ex.id, mode) not in done]
    pending = sorted(((prompt_ids(tok, p), ex, p) for ex, p in pending), key=lambda item: -len(item[0]))
    check_context(model, [(ex.id, len(ids)) for ids, ex, _ in pending], max_new_tokens)
    # under torchrun: what is left after every rank's part file, the same batches as one process would make,
    # dealt round-robin to the ranks (a batch's greedy ids are then those of the one-process run)
    in_parts = {key(r) for r in distributed.part_records(out_path)}
    todo = [item for item in pending if (item[1].id, mode) not in in_parts]
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    rank, world = distributed.rank(), distributed.world()

    generator = None if seed is None else torch.Generator(model.lm_head.weight.device).manual_seed(seed + rank)
    new_tokens, start = 0, time.perf_counter()
    with tqdm(total=len(todo), desc=mode, unit="ex", disable=not (progress and rank == 0)) as bar:
        for b in range(rank, len(batches), world):
            batch = batches[b]
            completions = complete(model, [ids for ids, _, _ in batch], max_new_tokens, temperature, top_k, top_p,
                                   tok.stop_ids, generator=generator, stop_strings=stop_strings, tokenizer=tok)
            append_records(distributed.own_part(out_path), [_record(tok, mode, ids, ex, prompt, c, stop_strings)
                                                            for (ids, ex, prompt), c in zip(batch, completions)])
            new_tokens += sum(len(c.tokens) for c in completions)
            bar.update(sum(map(len, batches[b:b + world])))  # rank 0's batch and, as an estimate, the others'
            bar.set_postfix_str(f"{world * new_tokens / (time.perf_counter() - start):.1f} tok/s")
    distributed.merge_parts(out_path, [(ex.id, mode) for _, ex, _ in pending], key)

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
