"""The four methods differ in one thing only: which response each training prompt is paired with.

- SFT:  the gold answer.
- SSR:  the base model's own answer where the judge accepts it, else gold.
- S3FT: the base model's own answer where accepted; else its paraphrase of the gold answer where
        accepted; else gold.
- SDFT: the base model's rewrite of the gold answer (distillation prompt) where accepted, else gold.

Every function takes the task's examples plus the generations and verdicts read back from the
run folder (dicts keyed by example id) and returns one `Target` per example, with its `source`.
The trap avoided: a generation cut off at max_new_tokens can still contain a correct-looking
answer; it never ends, so training on it would teach the model not to stop. Such generations are
never targets, whatever the judge said.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ssr.tasks import Example

METHODS = ("sft", "ssr", "s3ft", "sdft")
SOURCES = ("gold", "self", "paraphrase", "rewrite")


@dataclass
class Target:
    id: str
    response: str  # the assistant turn to train on
    source: str  # one of SOURCES


def usable(generation: dict | None, verdict: dict | None) -> bool:
    """A generation may become a target: it finished by itself, is not empty, and the judge accepted it."""
    return (generation is not None and verdict is not None and bool(verdict["correct"])
            and generation["finish_reason"] == "stop" and bool(generation["output"].strip()))


# SDFT's own filter: a rewrite that talks about the reference it was shown is not in the model's own voice.
MENTIONS_REFERENCE = re.compile(r"reference (answer|solution)", re.IGNORECASE)


def sft(examples: list[Example], gold: dict[str, str]) -> list[Target]:
    return [Target(e.id, gold[e.id], "gold") for e in examples]


def ssr(examples, gold, predictions: dict, verdicts: dict) -> list[Target]:
    out = []
    for e in examples:
        p = predictions.get(e.id)
        if usable(p, verdicts.get(e.id)):
            out.append(Target(e.id, p["output"], "self"))
        else:
            out.append(Target(e.id, gold[e.id], "gold"))
    return out


def s3ft(examples, gold, predictions: dict, verdicts: dict, paraphrases: dict,
         paraphrase_verdicts: dict) -> list[Target]:
    out = []
    for e in examples:
        p, q = predictions.get(e.id), paraphrases.get(e.id)
        if usable(p, verdicts.get(e.id)):
            out.append(Target(e.id, p["output"], "self"))
        elif usable(q, paraphrase_verdicts.get(e.id)):
            out.append(Target(e.id, q["output"], "paraphrase"))
        else:
            out.append(Target(e.id, gold[e.id], "gold"))
    return out


def sdft(examples, gold, rewrites: dict, rewrite_verdicts: dict) -> list[Target]:
    out = []
    for e in examples:
        r = rewrites.get(e.id)
        if usable(r, rewrite_verdicts.get(e.id)) and not MENTIONS_REFERENCE.search(r["output"]):
            out.append(Target(e.id, r["output"], "rewrite"))
        else:
            out.append(Target(e.id, gold[e.id], "gold"))
    return out


def source_counts(targets: list[Target]) -> dict[str, int]:
    counts = Counter(t.source for t in targets)
    return {s: counts.get(s, 0) for s in SOURCES}
