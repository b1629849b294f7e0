"""Batched sampling with a preallocated KV cache: greedy, temperature, top-k, top-p, per-row stops.

Prompts of different lengths share one batch by left padding. The prefill runs rows of similar length
together, so padding costs little; then one token per step for every live row, until each has sampled a
stop id (or stop string) or the budget is spent. The cache is sized so that it can never overflow.
`generate_records` runs a task's examples through it into a resumable JSONL file.

The trap avoided: batching must not change greedy output. Each row keeps its own RoPE positions (the
cache's `next_pos`) and its padding keys are masked, so its ids equal one-prompt-at-a-time decoding;
right padding, shared positions or unmasked padding all give fluent, slightly different text.

`static=True` decodes with fixed shapes instead (see `_static_decoder`): on a GPU each step is one CUDA graph
replay rather than hundreds of kernel launches from Python. Same ids, same random draws; eager is the reference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from ssr import distributed, tasks
from ssr.model import KVCache, Transformer
from ssr.runfiles import append_records, read_records


@dataclass
class Completion:
    tokens: list[int]  # the new tokens, the stop token excluded
    finish_reason: str  # "stop" (a stop id or stop string) or "length" (max_new_tokens reached)
    stop_id: int | None = None  # the stop token sampled; None when cut by length or by a stop string


def generate(model: Transformer, prompts: list[list[int]], max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids=None, seed: int | None = None, **kwargs) -> list[list[int]]:
    """New token ids for each prompt (stop token excluded). Keyword arguments as for `complete`."""
    return [c.tokens for c in complete(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, seed,
                                       **kwargs)]


def complete(model: Transformer, prompts: list[list[int]], max_new_tokens: int = 64, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, stop_ids=None, seed: int | None = None, *,
             generator: torch.Generator | None = None, batch_size: int | None = None,
             stop_strings=(), tokenizer=None, static: bool = False) -> list[Completion]:
    """Generate a continuation of every prompt; returns one Completion per prompt, in order.

    temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature), keeping
    the top_k most likely tokens (0: all) and the smallest set whose probability reaches top_p.
    stop_ids: a row stops at the first of these it samples; None means the config's eos_token_id.
    seed makes sampling reproducible and independent of torch's global RNG (or pass a generator).
    batch_size splits a long prompt list into batches of similar lengths (longest first).
    stop_strings (with tokenizer) also stop a row once its decoded text contains one of them; the
    token that completes the string is kept, so the text may run past it: cut it with `cut_at`.
    static: decode with fixed shapes, as a replayed CUDA graph on GPUs (see `_static_decoder`); the same ids.
    """
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (a BOS token will do)")
    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer to decode the generated tokens")
    if stop_ids is None:
        eos = model.config.eos_token_id
        stop_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    stop_ids = [int(i) for i in stop_ids]
    if generator is None and seed is not None:
        generator = torch.Generator(model.lm_head.weight.device).manual_seed(seed)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths together: less padding
    batch_size = batch_size or len(prompts) or 1
    out: dict[int, Completion] = {}
    was_training = model.training
    model.eval()  # adapter dropout and the like must be off while generating
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out.update(zip(rows, _complete_batch(model, [prompts[i] for i in rows], max_new_tokens, temperature,
                                                 top_k, top_p, stop_ids, generator, stop_strings, tokenizer,
                                                 static)))
    finally:
        model.train(was_training)
    return [out[i] for i in range(len(prompts))]


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> next token ids (B,)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already reach top_p; the most likely one always stays
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(-1, idx, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> ids (B, T) padded on the left, attention mask (B, T) with 1 on the real tokens."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = torch.tensor(p)
        mask[i, T - len(p):] = 1
    return ids, mask


def cut_at(text: str, stop_strings) -> str:
    """Text up to (not including) the first stop string it contains."""
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=len(text))
    return text[:cut]


@torch.inference_mode()
def _complete_batch(model, prompts, max_new_tokens, temperature, top_k, top_p, stop_ids, generator,
                    stop_strings, tokenizer, static=False) -> list[Completion]:
    """One batch; prompts sorted longest first."""
    B, device = len(prompts), model.lm_head.weight.device
    if max_new_tokens <= 0:
        return [Completion([], "length") for _ in range(B)]
    # The last sampled token is never fed back, so T + max_new_tokens - 1 slots always suffice.
    if static:
        cache, ids, step = _static_decoder(model, B, len(prompts[0]) + max_new_tokens - 1)
    else:
        cache = model.new_cache(B, len(prompts[0]) + max_new_tokens - 1)
    logits = _prefill(model, prompts, cache)  # (B, V)
    if static:
        cache.slot.fill_(len(prompts[0]))
    stops, stops_set = torch.tensor(stop_ids, dtype=torch.long, device=device), set(stop_ids)
    tokens = torch.zeros(B, max_new_tokens, dtype=torch.long, device=device)  # (B, N); junk after a row's stop
    live = torch.arange(B, device=device)  # (b,) which prompt each cache row belongs to
    done = torch.zeros(B, dtype=torch.bool, device=device)  # (b,) the row has stopped
    string_end: dict[int, int] = {}  # prompt -> tokens kept, for rows stopped by a stop string
    window = max(map(len, stop_strings), default=0) + 8  # tokens to decode; a token is at least one character
    check_every = 1 if device.type == "cpu" else 8  # "all done?" waits for the device: not every step on GPUs
    for t in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (b,)
        tokens[live, t] = nxt
        done |= torch.isin(nxt, stops)
        if stop_strings:
            recent = tokens[live, max(0, t + 1 - window):t + 1].tolist()
            for b, finished in enumerate(done.tolist()):
                if not finished and any(s in tokenizer.decode(recent[b]) for s in stop_strings):
                    done[b] = True
                    string_end[int(live[b])] = t + 1
        if t == max_new_tokens - 1:
            break
        if stop_strings or (t + 1) % check_every == 0:
            n_done = int(done.sum())
            if n_done == len(live):
                break
            if 2 * n_done >= len(live):  # drop finished rows: later steps cost only what is still running
                keep = ~done
                if not static:  # static keeps every row in the step (fixed shapes) but samples only the live ones
                    cache.keep(keep)
                live, done, nxt = live[keep], done[keep], nxt[keep]
        if static:  # finished rows keep decoding junk, never read; sampling the same rows draws the same numbers
            ids[live, 0] = nxt
            logits = step()[live]  # (b, V)
        else:
            logits = model(nxt[:, None], cache=cache, last_only=True)[:, -1]  # (b, V)

    out = []
    for i, row in enumerate(tokens[:, :t + 1].tolist()):
        end = string_end.get(i, next((j for j, tok in enumerate(row) if tok in stops_set), None))
        if end is None:
            out.append(Completion(row, "length"))
        else:
            out.append(Completion(row[:end], "stop", None if i in string_end else row[end]))
    return out


def _static_decoder(model, B: int, S: int):
    """(cache, ids, step) for fixed-shape decoding: a cache of B rows and at least S slots with a `slot` tensor
    (see KVCache), the (B, 1) input ids and step() -> next-token logits (B, V) of every row, finished or not.

    On CUDA the step is captured once per (B, S rounded up to 256) bucket as a CUDA graph and replayed. A graph
    replays the kernels it recorded on the buffers it recorded, so it keeps its cache, is reset here, and is keyed
    on every parameter's storage and every module's `disabled` switch (LoRA), so a changed model is recaptured.
    """
    device = model.lm_head.weight.device
    cuda = device.type == "cuda"
    graphs = model.__dict__.setdefault("_static_decoders", {}) if cuda else {}
    S = -(-S // 256) * 256 if cuda else S
    key = (B, S, *(p.data_ptr() for p in model.parameters()), *(getattr(m, "disabled", 0) for m in model.modules()))
    if key not in graphs:
        cache, ids = model.new_cache(B, S), torch.zeros(B, 1, dtype=torch.long, device=device)
        cache.slot = torch.zeros(1, dtype=torch.long, device=device)
        step = lambda: model(ids, cache=cache, last_only=True)[:, -1]  # noqa: E731
        if cuda:
            stream = torch.cuda.Stream(device)  # warm up off the default stream before capture, as CUDA graphs need
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                step()
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = step()
            step = lambda: graph.replay() or out  # noqa: E731
        if len(graphs) >= 4:  # each holds a cache: keep the few buckets a sorted run goes through
            graphs.pop(next(iter(graphs)))
        graphs[key] = cache, ids, step
    cache, ids, step = graphs[key]
    for t in (cache.k, cache.v, cache.valid, cache.next_pos):  # a used cache: no stale keys, positions from 0
        t.zero_()
    return cache, ids, step


def _prefill(model, prompts, cache: KVCache) -> torch.Tensor:
    """Run the prompts (longest first) into the cache, right-aligned; returns last-token logits (B, V).

    Each group of similar length is padded only to its own longest prompt (prompts of 60 and 200 tokens
    compute 260 positions, not 400) and writes straight into its rows of the shared cache, at the slots that
    end where the longest prompt ends, so decoding then proceeds for all rows at once.
    """
    T, device = len(prompts[0]), cache.k.device
    logits = []
    for a, b in _similar_length_runs([len(p) for p in prompts]):
        ids, mask = left_pad(prompts[a:b])  # (b - a, Tg); the padding id is never attended to
        rows = cache.rows(a, b, length=T - ids.shape[1])
        logits.append(model(ids.to(device), attention_mask=mask.to(device), cache=rows, last_only=True)[:, -1])
    cache.filled(T)
    return torch.cat(logits)


def _similar_length_runs(lengths: list[int], slack: int = 32) -> list[tuple[int, int]]:
    """Split lengths (sorted longest first) into runs [a, b) that pad at most max(slack, 1/8) per row: each run
    costs one more pass over the weights, which a few dozen padding positions outweigh."""
    runs, a = [], 0
    for i, n in enumerate(lengths):
        if lengths[a] - n > max(slack, lengths[a] // 8):
            runs.append((a, i))
            a = i
    runs.append((a, len(lengths)))
    return runs


# ---------------------------------------------------------------------------------------------------------
# a task's examples -> generation records (JSONL, resumable)


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
