"""The four methods differ in one thing only: which response each training prompt is paired with.

- SFT:  the gold answer.
- SSR:  the base model's own answer where the judge accepts it, else gold.
- S3FT: the base model's own answer where accepted; else, only for those, its paraphrase of the gold
        answer where accepted; else gold.
- SDFT: the base model's rewrite of the gold answer (distillation prompt) where accepted, else gold.

Each method is one function `method(examples, gold, generations) -> [Target]` over examples that have an `.id`.
It asks `generations(mode, examples)` for the base model's judged outputs in the modes it needs (`NEEDS`):
"predict" (answer), "paraphrase" (restate gold), "rewrite" (SDFT's distillation prompt). `base_generations`
makes that function in memory (ssr/harness/pipeline.py one that keeps everything on disk and resumes).

`training_samples` pairs each prompt with its target. A self-generated target is trained as the very ids the
model generated, with the stop token it sampled: decoding and encoding again need not give those ids back (the
original Mistral template glues "[/INST]The" where the model said "▁The"). Gold goes through the chat template.

The trap avoided: a generation cut off at max_new_tokens can still contain a correct-looking answer; it
never ends, so training on it would teach the model not to stop. Such a generation is never a target,
whatever the judge said; nor is an empty one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ssr import lora
from ssr.sampling import complete
from ssr.trainer import Sample, encode

METHODS = ("sft", "ssr", "s3ft", "sdft")
SOURCES = ("gold", "self", "paraphrase", "rewrite")  # where a target came from
NEEDS = {"sft": (), "ssr": ("predict",), "s3ft": ("predict", "paraphrase"), "sdft": ("rewrite",)}  # modes asked for


@dataclass
class Target:
    id: str
    response: str  # the assistant turn to train on
    source: str  # one of SOURCES
    ids: list[int] | None = None  # self-generated: the generated ids + the stop token, trained as they are


@dataclass
class Generation:
    output: str  # what the base model wrote (for rewrites, after the prefill)
    rejected: str | None  # why it may not be a target ("judge: mismatch", "cut at max_new_tokens"), None if it may
    ids: list[int] | None = None  # the generated ids + the stop token sampled (None for a cut generation)


Generations = Callable[[str, list], dict[str, Generation]]  # (mode, examples) -> {id: Generation}


def accepted(generations: dict[str, Generation], id: str) -> bool:
    return id in generations and generations[id].rejected is None


def first_accepted(e, gold: dict[str, str], *candidates: tuple[dict[str, Generation], str]) -> Target:
    """The first of the (generations, source) candidates with an accepted one for e; else the gold answer."""
    for generations, source in candidates:
        if accepted(generations, e.id):
            return Target(e.id, generations[e.id].output, source, generations[e.id].ids)
    return Target(e.id, gold[e.id], "gold")


def sft(examples, gold: dict[str, str], generations: Generations) -> list[Target]:
    return [first_accepted(e, gold) for e in examples]


def ssr(examples, gold, generations: Generations) -> list[Target]:
    own = generations("predict", examples)
    return [first_accepted(e, gold, (own, "self")) for e in examples]


def s3ft(examples, gold, generations: Generations) -> list[Target]:
    own = generations("predict", examples)
    paraphrased = generations("paraphrase", [e for e in examples if not accepted(own, e.id)])  # only where it failed
    return [first_accepted(e, gold, (own, "self"), (paraphrased, "paraphrase")) for e in examples]


def sdft(examples, gold, generations: Generations) -> list[Target]:
    # SDFT's own filter first (its code's `verify`), on top of whatever judged the rewrites
    rewrites = {id: a for id, a in generations("rewrite", examples).items() if sdft_verify(a.output) is None}
    return [first_accepted(e, gold, (rewrites, "rewrite")) for e in examples]


CHOOSE = {"sft": sft, "ssr": ssr, "s3ft": s3ft, "sdft": sdft}


# SDFT's filter of its rewrites (sail-sg/sdft, eval/gen_distilled_data.py `verify`): a rewrite that talks
# about the reference or about "your response" is not the model answering in its own voice.
SDFT_BANNED = ("reference answer", "your response", "my response", "your own response", "now it's your turn")


def sdft_verify(text: str) -> str | None:
    """Why `verify()` rejects a rewrite (case-insensitive phrases; a case-sensitive "Your turn" start), or None."""
    for phrase in SDFT_BANNED:
        if phrase in text.lower():
            return f"sdft verify: mentions {phrase!r}"
    if text.startswith("Your turn"):
        return "sdft verify: starts with 'Your turn'"
    return None


# ---------------------------------------------------------------------------------------------------------
# the base model's generations, and training samples


def base_generations(model, tok, prompt: Callable, judge: Callable, *, max_new_tokens: int = 256,
                 batch_size: int = 16) -> Generations:
    """A `generations` function in memory: the base model (adapters off) answers greedily, and `judge` decides.

    prompt(example, mode) -> the chat messages of that mode; judge(example, mode, output) -> None if the answer
    may be a target, else why not. A generation cut at max_new_tokens, or empty, is rejected before the judge
    sees it. Nothing is kept on disk (ssr/harness/pipeline.py's `cached_generations` does the same into files)."""
    def generations(mode: str, examples: list) -> dict[str, Generation]:
        prompts = [tok.apply_chat_template(prompt(e, mode), add_generation_prompt=True) for e in examples]
        with lora.disabled(model):  # targets come from the base model, also once adapters exist
            done = complete(model, prompts, max_new_tokens, stop_ids=tok.stop_ids, batch_size=batch_size)
        out = {}
        for e, c in zip(examples, done):
            text = tok.decode(c.tokens)
            why = ("cut at max_new_tokens" if c.finish_reason != "stop" else "empty" if not text.strip()
                   else judge(e, mode, text))
            out[e.id] = Generation(text, why, c.tokens + [c.stop_id] if c.stop_id is not None else None)
        return out
    return generations


def training_samples(tok, prompts: list[list[dict]], targets: list[Target], max_len: int) -> tuple[list[Sample], dict]:
    """Each training prompt (chat messages) with its target as a sample: gold through the chat template; a
    self-generated target as the prompt's ids + the ids the model generated + its stop token. Returns encode's
    result (samples, and counts of what was truncated or dropped)."""
    items = [messages + [{"role": "assistant", "content": t.response}] if t.ids is None
             else (tok.apply_chat_template(messages, add_generation_prompt=True), t.ids)
             for messages, t in zip(prompts, targets)]
    return encode(tok, items, max_len, [t.source for t in targets])
