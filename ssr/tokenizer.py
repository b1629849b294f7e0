"""Tokenizer: tokenizer.json through the `tokenizers` library, special ids, and chat templates with masks.

Special ids are gathered from tokenizer_config.json, special_tokens_map.json, generation_config.json
and config.json, in that order of precedence; every eos id any of them names becomes a stop id.
The trap avoided: transformers (>= 5) does not run a Llama SentencePiece tokenizer.json as written.
It rebuilds the pre-tokenizer from `legacy` and `add_prefix_space` in tokenizer_config.json, which
changes the token after every special token ("<s>[INST]" -> "[" when legacy is false, "▁[" when
true). We rebuild it the same way, so chat-formatted ids equal the reference ids.
"""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, pre_tokenizers

from ssr import chat
from ssr.checkpoint import resolve_model_dir


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None


def _token_text(value) -> str | None:
    # tokenizer_config writes special tokens as plain strings or as {"content": ...} dicts
    if isinstance(value, dict):
        return value.get("content")
    return value


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _rebuild_sentencepiece_pipeline(tk: _HFTokenizer, cfg: dict) -> None:
    """Metaspace pre-tokenizer as transformers' LlamaTokenizer builds it (see module docstring)."""
    add_prefix_space = cfg.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else add_prefix_space
    scheme = ("always" if cfg.get("legacy", False) else "first") if add_prefix_space else "never"
    tk.normalizer = None
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    tk.decoder = decoders.Sequence(steps)


class Tokenizer:
    def __init__(self, tk: _HFTokenizer, *, bos_id=None, eos_id=None, stop_ids=(), pad_id=None, add_bos=False,
                 chat_template: str | None = None, default_system: str | None = None, source: str = "?"):
        self.tk = tk
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.add_bos = add_bos and bos_id is not None  # whether plain text (not chat) starts with BOS
        self.stop_ids = list(dict.fromkeys(i for i in [eos_id, *stop_ids] if i is not None))
        self.chat_template, self.default_system, self.source = chat_template, default_system, source

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, no BOS/EOS added (special tokens written in the text are still matched)."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token(self, text: str) -> int | None:
        return self.tk.token_to_id(text)

    def _segments(self, messages, add_generation_prompt):
        if self.chat_template is None:
            raise ValueError(f"{self.source} has no chat template this project recognises; pass "
                             f"chat_template= one of {', '.join(chat.TEMPLATES)} to load_tokenizer")
        return chat.render(self.chat_template, messages, add_generation_prompt,
                           bos=self.tk.id_to_token(self.bos_id) if self.bos_id is not None else "",
                           eos=self.tk.id_to_token(self.eos_id) if self.eos_id is not None else "",
                           default_system=self.default_system)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The conversation as text, exactly what apply_chat_template encodes."""
        return "".join(text for text, _ in self._segments(messages, add_generation_prompt))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = False,
                            return_mask: bool = False):
        """Token ids of a conversation; with return_mask, also a 0/1 list marking the supervised tokens.

        Supervised: every token of an assistant turn plus the end-of-turn token after it. A token that
        straddles a prompt/answer seam (SentencePiece "▁Hello") counts as supervised.
        """
        segments = self._segments(messages, add_generation_prompt)
        text = "".join(t for t, _ in segments)
        enc = self.tk.encode(text, add_special_tokens=False)
        if not return_mask:
            return enc.ids
        spans, pos = [], 0  # character spans of the supervised segments
        for t, supervised in segments:
            if supervised:
                spans.append((pos, pos + len(t)))
            pos += len(t)
        mask = []
        for s, e in enc.offsets:
            if s == e:  # a zero-width token sits at its position
                mask.append(int(any(a <= s < b for a, b in spans)))
            else:
                mask.append(int(any(s < b and e > a for a, b in spans)))
        return enc.ids, mask

    def show_mask(self, ids: list[int], mask: list[int]) -> str:
        """Text view of a masked sequence: supervised runs wrapped in ⟦...⟧, for teaching and debugging."""
        out, start = [], 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or mask[i] != mask[start]:
                piece = self.decode(ids[start:i], skip_special_tokens=False)
                out.append(f"⟦{piece}⟧" if mask[start] else piece)
                start = i
        return "".join(out)


def load_tokenizer(path_or_name, chat_template: str | None = None) -> Tokenizer:
    """Load tokenizer.json plus special ids and the chat template from a checkpoint folder (or the default name).

    chat_template: a template name (chatml, llama2, mistral, mistral-2024) overriding the one detected
    from tokenizer_config.json.
    """
    folder = resolve_model_dir(path_or_name)
    tok_file = folder / "tokenizer.json"
    if not tok_file.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    tk = _HFTokenizer.from_file(str(tok_file))
    cfg = _read_json(folder / "tokenizer_config.json")
    special = _read_json(folder / "special_tokens_map.json")
    gen = _read_json(folder / "generation_config.json")
    model_cfg = _read_json(folder / "config.json")

    is_llama = cfg.get("tokenizer_class") in ("LlamaTokenizer", "LlamaTokenizerFast")
    if is_llama and '"ByteLevel"' not in tok_file.read_text(encoding="utf-8"):  # a SentencePiece Llama
        _rebuild_sentencepiece_pipeline(tk, cfg)

    def special_id(name: str) -> int | None:
        key = f"{name}_token"
        if key in cfg or key in special:  # a null here means the model has no such token
            text = _token_text(cfg[key] if key in cfg else special[key])
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

    eos_id = special_id("eos")
    stop_ids = _as_list(gen.get("eos_token_id")) + _as_list(model_cfg.get("eos_token_id"))

    template = cfg.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    detected, default_system = chat.detect(template)
    if chat_template is not None and chat_template not in chat.TEMPLATES:
        raise ValueError(f"unknown chat template {chat_template!r}; choose one of {', '.join(chat.TEMPLATES)}")
    return Tokenizer(tk, bos_id=special_id("bos"), eos_id=eos_id, stop_ids=stop_ids, pad_id=special_id("pad"),
                     add_bos=cfg.get("add_bos_token", is_llama),
                     chat_template=chat_template or detected,
                     default_system=default_system if (chat_template or detected) == "chatml" else None,
                     source=str(folder))
