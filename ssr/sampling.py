"""Batched sampling with a preallocated KV cache: greedy, temperature, top-k, top-p, per-row stops.

Prompts of different lengths share one batch by left padding. The prefill runs rows of similar length
together, so padding costs little; then one token per step for every live row, until each has sampled a
stop id (or stop string) or the budget is spent. The cache is sized so that it can never overflow.
(ssr/harness/records.py runs a task's examples through it into resumable JSONL files.)

The trap avoided: batching must not change greedy output. Each row keeps its own RoPE positions (the
cache's `next_pos`) and its padding keys are masked, so its ids equal one-prompt-at-a-time decoding;
right padding, shared positions or unmasked padding all give fluent, slightly different text.

`static=True` decodes with fixed shapes instead (see `_static_decoder`): on a GPU each step is one CUDA graph
replay rather than hundreds of kernel launches from Python. Same ids, same random draws; eager is the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssr.model import KVCache, Transformer


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
             stop_strings=(), tokenizer=None, static: bool | None = None) -> list[Completion]:
    """Generate a continuation of every prompt; returns one Completion per prompt, in order.

    temperature 0 is greedy (argmax); otherwise sample from softmax(logits / temperature), keeping
    the top_k most likely tokens (0: all) and the smallest set whose probability reaches top_p.
    stop_ids: a row stops at the first of these it samples; None means the config's eos_token_id.
    seed makes sampling reproducible and independent of torch's global RNG (or pass a generator).
    batch_size splits a long prompt list into batches of similar lengths (longest first).
    stop_strings (with tokenizer) also stop a row once its decoded text contains one of them; the
    token that completes the string is kept, so the text may run past it (ssr/harness/records.py cuts it).
    static: decode with fixed shapes, as a replayed CUDA graph on GPUs (see `_static_decoder`); the same ids.
    None: the model's `static_decode` attribute, if set (so that one switch reaches every caller), else False.
    """
    static = getattr(model, "static_decode", False) if static is None else static
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
