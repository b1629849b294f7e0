"""Tokenizer and chat templates: tokenizer.json through the `tokenizers` library, special ids, and each
model family's chat format written out by hand, with the mask of the tokens training supervises.

Special ids are gathered from tokenizer_config.json, special_tokens_map.json, generation_config.json
and config.json, in that order of precedence; every eos id any of them names becomes a stop id.
A template renders a conversation as (text, supervised) segments, a special token (BOS, EOS,
<|im_start|>, ...) as a segment of its own (`Special`). Each run of text between special tokens is encoded
once, without matching special tokens in it, and supervision is mapped back to tokens through character
offsets. Traps avoided:
- encoding each piece separately and concatenating ids does not give the reference ids for
  SentencePiece vocabularies (a leading "▁" appears at every seam), so masks built that way drift;
- a message that contains the text "<s>" or "</s>" must not become a BOS/EOS token: the references
  (Meta's `chat_completion`, mistral-common) encode message text as plain text;
- the chat ids follow the model's own reference format, which for SentencePiece models encodes the text
  after every special token with SentencePiece's dummy prefix ("<s>[INST]" -> "▁[INST]", 518 for Llama-2).
  transformers (>= 5) rebuilds a Llama tokenizer's pre-tokenizer from `legacy`, which gives "[" (29961)
  there for Llama-2-chat (legacy false); plain `encode` keeps transformers' rule, chat ids keep Meta's.
"""
from __future__ import annotations

import re

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, pre_tokenizers

from ssr.checkpoint import read_json, resolve_model_dir

# ---------------------------------------------------------------------------------------------------------
# chat templates

Segments = list[tuple[str, bool]]  # (text, supervised); joined, they are the rendered conversation


class Special(str):
    """The text of a special token written by a template: encoded as that one token id. Message text never is."""


def _split_system(messages: list[dict], template: str) -> tuple[str | None, list[dict]]:
    """(the system prompt or None, the other turns), which must alternate user/assistant/user/..."""
    system, turns = (messages[0]["content"], messages[1:]) if messages[0]["role"] == "system" else (None, messages)
    for i, m in enumerate(turns):
        if m["role"] != ("user" if i % 2 == 0 else "assistant"):
            raise ValueError(f"{template} template: after the optional system message, roles must alternate "
                             f"user/assistant/user/...; message {i} is {m['role']!r}")
    return system, turns


def chatml(messages, add_generation_prompt, default_system=None, **_) -> Segments:
    # <|im_start|>role\ncontent<|im_end|>\n ; the model's default system prompt when none is given
    start, end = Special("<|im_start|>"), Special("<|im_end|>")
    out: Segments = []
    if messages[0]["role"] != "system" and default_system is not None:
        out += [(start, False), (f"system\n{default_system}", False), (end, False), ("\n", False)]
    for m in messages:
        if m["role"] == "assistant":
            out += [(start, False), ("assistant\n", False), (m["content"], True), (end, True), ("\n", False)]
        else:
            out += [(start, False), (f"{m['role']}\n{m['content']}", False), (end, False), ("\n", False)]
    if add_generation_prompt:
        out += [(start, False), ("assistant\n", False)]
    return out


def llama2(messages, add_generation_prompt, bos="<s>", eos="</s>", **_) -> Segments:
    # <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ...
    # The template has no generation prompt: the prompt already ends with " [/INST]".
    system, turns = _split_system(messages, "llama2")
    out: Segments = []
    for i, m in enumerate(turns):
        content = m["content"]
        if m["role"] == "user":
            if i == 0 and system is not None:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            out += [(Special(bos), False), (f"[INST] {content.strip()} [/INST]", False)]
        else:
            out += [(f" {content.strip()} ", True), (Special(eos), True)]
    return out


def mistral(messages, add_generation_prompt, bos="<s>", eos="</s>", **_) -> Segments:
    # Original Mistral-7B-Instruct-v0.2 template: <s>[INST] {user} [/INST]{assistant}</s>[INST] ...
    if messages[0]["role"] == "system":
        raise ValueError("the original mistral template has no system role; use chat_template='mistral-2024', "
                         "which folds a system message into the first user turn")
    _, turns = _split_system(messages, "mistral")
    out: Segments = [(Special(bos), False)]
    for m in turns:
        if m["role"] == "user":
            out.append((f"[INST] {m['content']} [/INST]", False))
        else:
            out += [(m["content"], True), (Special(eos), True)]
    return out


def mistral_2024(messages, add_generation_prompt, bos="<s>", eos="</s>", **_) -> Segments:
    # The template Mistral checkpoints carry since 2024: <s> [INST] {system}\n\n{user} [/INST] {assistant}</s> ...
    system, turns = _split_system(messages, "mistral-2024")
    out: Segments = [(Special(bos), False)]
    for i, m in enumerate(turns):
        if m["role"] == "user":
            content = f"{system}\n\n{m['content']}" if i == 0 and system is not None else m["content"]
            out.append((f" [INST] {content} [/INST]", False))
        else:
            out += [(" ", False), (m["content"], True), (Special(eos), True)]
    return out


TEMPLATES = {"chatml": chatml, "llama2": llama2, "mistral": mistral, "mistral-2024": mistral_2024}


def detect_template(jinja: str | None) -> tuple[str | None, str | None]:
    """(name, default system prompt) of the template a checkpoint's Jinja chat_template corresponds to;
    name is None when the text is not recognised."""
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


# ---------------------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
    def __init__(self, tk: _HFTokenizer, *, bos_id=None, eos_id=None, stop_ids=(), pad_id=None, add_bos=False,
                 chat_template: str | None = None, default_system: str | None = None, source: str = "?",
                 chat_tk: _HFTokenizer | None = None):
        if chat_template is not None and chat_template not in TEMPLATES:
            raise ValueError(f"unknown chat template {chat_template!r}; choose one of {', '.join(TEMPLATES)}")
        self.tk = tk
        # chat text runs: special tokens in message text stay text (as in the reference formats)
        self.chat_tk = chat_tk or _HFTokenizer.from_str(tk.to_str())
        self.chat_tk.encode_special_tokens = True
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.add_bos = add_bos and bos_id is not None  # whether plain text (not chat) starts with BOS
        self.stop_ids = list(dict.fromkeys(i for i in [eos_id, *stop_ids] if i is not None))
        self.chat_template, self.default_system, self.source = chat_template, default_system, source

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS added (special tokens written in the text are still matched)."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def _segments(self, messages: list[dict], add_generation_prompt: bool) -> Segments:
        if self.chat_template is None:
            raise ValueError(f"{self.source} has no chat template this project recognises; pass "
                             f"chat_template= one of {', '.join(TEMPLATES)} to load_tokenizer")
        if not messages:
            raise ValueError("empty conversation")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise ValueError(f"message {i} must be a dict with 'role' and 'content', got {m!r}")
            if m["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"message {i}: unsupported role {m['role']!r} (system, user, assistant)")
        return TEMPLATES[self.chat_template](
            messages, add_generation_prompt, default_system=self.default_system,
            bos=self.tk.id_to_token(self.bos_id) if self.bos_id is not None else "",
            eos=self.tk.id_to_token(self.eos_id) if self.eos_id is not None else "")

    def _open_segments(self, messages: list[dict], add_generation_prompt: bool, continue_final_message: bool):
        segments = self._segments(messages, add_generation_prompt)
        if not continue_final_message:
            return segments
        # the final (assistant) message left open: cut right after its text, before the template's end of turn
        content = messages[-1]["content"].strip()
        i = max(i for i, (t, _) in enumerate(segments) if not isinstance(t, Special) and content in t)
        text, supervised = segments[i]
        return segments[:i] + [(text[:text.rindex(content) + len(content)], supervised)]

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False,
                    continue_final_message: bool = False) -> str:
        """The conversation as text, exactly what apply_chat_template encodes."""
        return "".join(t for t, _ in self._open_segments(messages, add_generation_prompt, continue_final_message))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            return_mask: bool = False, continue_final_message: bool = False):
        """Token ids of a conversation; with return_mask, also a 0/1 list marking the supervised tokens.

        Supervised: every token of an assistant turn plus the end-of-turn token after it. A token that
        straddles a prompt/answer seam (SentencePiece "▁Hello") counts as supervised. continue_final_message:
        the last message is an assistant turn's start (a prefill) that generation continues; nothing follows it.
        """
        ids, mask, run = [], [], []  # run: the text segments since the last special token
        segments = self._open_segments(messages, add_generation_prompt, continue_final_message)
        for text, supervised in [*segments, (Special(""), False)]:
            token_id = self.tk.token_to_id(text) if isinstance(text, Special) and text else None
            if text and token_id is None:  # text, or a template token this vocabulary lacks: plain text, as in HF
                run.append((text, supervised))
                continue
            self._encode_run(run, ids, mask)
            run = []
            if token_id is not None:
                ids.append(token_id)
                mask.append(int(supervised))
        return (ids, mask) if return_mask else ids

    def _encode_run(self, segments: Segments, ids: list[int], mask: list[int]) -> None:
        """Encode the text between two special tokens once; a token is supervised if it overlaps a supervised
        segment (a zero-width one, if it sits inside one)."""
        text = "".join(t for t, _ in segments)
        if not text:
            return
        enc = self.chat_tk.encode(text, add_special_tokens=False)
        spans, pos = [], 0  # character spans of the supervised segments
        for t, supervised in segments:
            if supervised:
                spans.append((pos, pos + len(t)))
            pos += len(t)
        ids += enc.ids
        mask += [int(any(a <= s < b if s == e else s < b and e > a for a, b in spans)) for s, e in enc.offsets]

    def show_mask(self, ids: list[int], mask: list[int]) -> str:
        """Text view of a masked sequence: supervised runs wrapped in ⟦...⟧, for teaching and debugging."""
        out, start = [], 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or mask[i] != mask[start]:
                piece = self.decode(ids[start:i], skip_special_tokens=False)
                out.append(f"⟦{piece}⟧" if mask[start] else piece)
                start = i
        return "".join(out)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_tokenizer(path_or_name, chat_template: str | None = None) -> Tokenizer:
    """Load tokenizer.json plus special ids and the chat template from a checkpoint folder (or the default name).

    chat_template: a template name (chatml, llama2, mistral, mistral-2024) overriding the one detected
    from tokenizer_config.json.
    """
    folder = resolve_model_dir(path_or_name)
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    try:
        tk = _HFTokenizer.from_file(str(tok_file))
    except Exception as e:  # the tokenizers library's message does not name the file
        raise ValueError(f"{tok_file}: not a readable tokenizer.json ({e})") from None
    cfg, special, gen, model_cfg = (read_json(folder / name) for name in (
        "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "config.json"))

    is_llama = cfg.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast")
    chat_tk = None
    if is_llama and '"ByteLevel"' not in tok_file.read_text(encoding="utf-8"):
        # a SentencePiece Llama: the Metaspace pre-tokenizer as transformers' LlamaTokenizer builds it
        add_prefix_space = cfg.get("add_prefix_space")
        add_prefix_space = True if add_prefix_space is None else add_prefix_space
        scheme = ("always" if cfg.get("legacy", False) else "first") if add_prefix_space else "never"
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        if add_prefix_space:
            steps.append(decoders.Strip(content=" ", left=1))
        # chat ids follow the model's reference (Meta's chat_completion, mistral-common): SentencePiece's dummy
        # prefix on every run of text after a special token, whatever `legacy` says
        chat_tk = _HFTokenizer.from_str(tk.to_str())
        for t, prepend in ((tk, scheme), (chat_tk, "always" if add_prefix_space else "never")):
            t.normalizer = None
            t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=False)
            t.decoder = decoders.Sequence(steps)

    def special_id(name: str) -> int | None:
        key = f"{name}_token"
        if key in cfg or key in special:  # a null here means the model has no such token
            text = cfg[key] if key in cfg else special[key]
            if isinstance(text, dict):  # written as a plain string or as {"content": ...}
                text = text.get("content")
            if text is None:
                return None
            token_id = tk.token_to_id(text)
            if token_id is None:
                raise ValueError(f"{folder}: {key} {text!r} is not in the vocabulary")
            return token_id
        for source in (gen, model_cfg):
            ids = _as_list(source.get(f"{name}_token_id"))
            if ids:
                return ids[0]
        return None

    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    detected, default_system = detect_template(template)
    chat_template = chat_template or detected
    return Tokenizer(tk, bos_id=special_id("bos"), eos_id=special_id("eos"), pad_id=special_id("pad"),
                     stop_ids=_as_list(gen.get("eos_token_id")) + _as_list(model_cfg.get("eos_token_id")),
                     add_bos=cfg.get("add_bos_token", is_llama), chat_template=chat_template,
                     default_system=default_system if chat_template == "chatml" else None, source=str(folder),
                     chat_tk=chat_tk)
