"""Chat templates written out by hand: Mistral v0.2 [INST], Llama-2-chat <<SYS>>, ChatML (Qwen2.5, SmolLM2).

A template renders a conversation as a list of (text, supervised) segments. The tokenizer encodes the
joined text once and maps supervision back to tokens through character offsets. The trap avoided:
encoding each piece separately and concatenating ids does not give the reference ids for
SentencePiece vocabularies (a leading "▁" appears at every seam), so masks built that way drift.
"""
from __future__ import annotations

import re

Segments = list[tuple[str, bool]]  # (text, supervised); joined, they are the rendered conversation


def _check(messages: list[dict]) -> None:
    if not messages:
        raise ValueError("empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"message {i}: unsupported role {m['role']!r} (system, user, assistant)")


def _split_system(messages: list[dict]) -> tuple[str | None, list[dict]]:
    if messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def _alternating(messages: list[dict], template: str) -> None:
    for i, m in enumerate(messages):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"{template} template: after the optional system message, roles must alternate "
                             f"user/assistant/user/...; message {i} is {m['role']!r}")


def chatml(messages, add_generation_prompt, default_system=None, **_) -> Segments:
    # <|im_start|>role\ncontent<|im_end|>\n ; the model's default system prompt when none is given
    out: Segments = []
    if messages[0]["role"] != "system" and default_system is not None:
        out.append((f"<|im_start|>system\n{default_system}<|im_end|>\n", False))
    for m in messages:
        if m["role"] == "assistant":
            out += [("<|im_start|>assistant\n", False), (m["content"] + "<|im_end|>", True), ("\n", False)]
        else:
            out.append((f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n", False))
    if add_generation_prompt:
        out.append(("<|im_start|>assistant\n", False))
    return out


def llama2(messages, add_generation_prompt, bos="<s>", eos="</s>", **_) -> Segments:
    # <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
    # The template has no generation prompt: the prompt already ends with " [/INST]".
    system, turns = _split_system(messages)
    _alternating(turns, "llama2")
    out: Segments = []
    for i, m in enumerate(turns):
        content = m["content"]
        if m["role"] == "user":
            if i == 0 and system is not None:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            out.append((f"{bos}[INST] {content.strip()} [/INST]", False))
        else:
            out.append((f" {content.strip()} {eos}", True))
    return out


def mistral(messages, add_generation_prompt, bos="<s>", eos="</s>", **_) -> Segments:
    # Original Mistral-7B-Instruct-v0.2 template: <s>[INST] {user} [/INST]{assistant}</s>[INST] ...
    if messages[0]["role"] == "system":
        raise ValueError("the original mistral template has no system role; use chat_template='mistral-2024', "
                         "which folds a system message into the first user turn")
    _alternating(messages, "mistral")
    out: Segments = [(bos, False)]
    for m in messages:
        if m["role"] == "user":
            out.append((f"[INST] {m['content']} [/INST]", False))
        else:
            out.append((m["content"] + eos, True))
    return out


def mistral_2024(messages, add_generation_prompt, bos="<s>", eos="</s>", **_) -> Segments:
    # The template Mistral checkpoints carry since 2024: <s> [INST] {system}\n\n{user} [/INST] {assistant}</s> ...
    system, turns = _split_system(messages)
    _alternating(turns, "mistral-2024")
    out: Segments = [(bos, False)]
    for i, m in enumerate(turns):
        if m["role"] == "user":
            content = f"{system}\n\n{m['content']}" if i == 0 and system is not None else m["content"]
            out.append((f" [INST] {content} [/INST]", False))
        else:
            out += [(" ", False), (m["content"] + eos, True)]
    return out


RENDER = {"chatml": chatml, "llama2": llama2, "mistral": mistral, "mistral-2024": mistral_2024}
TEMPLATES = tuple(RENDER)


def render(template: str, messages: list[dict], add_generation_prompt: bool = False, **tokens) -> Segments:
    """Render a conversation with a named template; `tokens` gives bos, eos and default_system."""
    if template not in RENDER:
        raise ValueError(f"unknown chat template {template!r}; choose one of {', '.join(TEMPLATES)}")
    _check(messages)
    return RENDER[template](messages, add_generation_prompt, **tokens)


def detect(jinja: str | None) -> tuple[str | None, str | None]:
    """Name the hand-written template that a checkpoint's Jinja chat_template corresponds to.

    Returns (name, default_system_prompt); name is None when the text is not recognised.
    """
    if not jinja:
        return None, None
    if "<|im_start|>" in jinja:
        # The default system prompt is the literal between "<|im_start|>system\n" and "<|im_end|>"; the
        # newline is a "\n" escape in some templates' string literals (Qwen2.5), a real one in others (SmolLM2).
        m = re.search(r"<\|im_start\|>system(?:\\n|\n)([^'\"{}<]+?)<\|im_end\|>", jinja)
        default = m.group(1).replace("\\n", "\n").replace("\\'", "'") if m else None
        return "chatml", default
    if "<<SYS>>" in jinja:
        return "llama2", None
    if "[INST]" in jinja:
        return ("mistral-2024" if "' [INST] '" in jinja else "mistral"), None
    return None, None
