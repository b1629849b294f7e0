"""Chat templates and special ids on the real tokenizer files, against transformers' apply_chat_template."""
import shutil

import pytest

import ssr

CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 2+2?"}],
    "multi": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": " Why did the chicken cross the road? "},
        {"role": "user", "content": "Ha."},
    ],
    "system": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ],
    "non-ascii": [
        {"role": "user", "content": "Привет, как дела? 你好 ñandú — «quotes» 🎉\n\ttab  two spaces"},
        {"role": "assistant", "content": "Très bien! 😀 über 日本語"},
        {"role": "user", "content": "ok"},
    ],
}


def tokenizer_dir(shared, tmp_path, name):
    """A checkpoint-like folder for each real tokenizer (the Mistral configs carry their variant in the name)."""
    src = shared / "tokenizers"
    if name == "llama2":
        return src / "Llama-2-7b-chat-hf"
    if name == "qwen2.5":
        return src / "Qwen2.5-Instruct"
    config = {"mistral": "tokenizer_config.reconstructed.json",
              "mistral-2024": "tokenizer_config.template-2024.reconstructed.json"}[name]
    shutil.copy(src / "Mistral-7B-Instruct-v0.2" / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(src / "Mistral-7B-Instruct-v0.2" / config, tmp_path / "tokenizer_config.json")
    return tmp_path


TOKENIZERS = {"llama2": "llama2", "mistral": "mistral", "mistral-2024": "mistral-2024", "qwen2.5": "chatml"}


@pytest.mark.parametrize("name", TOKENIZERS)
@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_ids_equal_transformers(shared, tmp_path, name, conversation, generation_prompt):
    transformers = pytest.importorskip("transformers")
    folder = tokenizer_dir(shared, tmp_path, name)
    messages = CONVERSATIONS[conversation]
    ref_tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok = ssr.load_tokenizer(folder)
    assert tok.chat_template == TOKENIZERS[name]
    if name == "mistral" and conversation == "system":  # the original v0.2 template has no system role
        with pytest.raises(Exception):
            ref_tok.apply_chat_template(messages, tokenize=False)
        with pytest.raises(ValueError, match="no system role"):
            tok.apply_chat_template(messages)
        return
    ref = ref_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt)
    ref = list(ref["input_ids"] if hasattr(ref, "keys") else ref)
    ours = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt)
    if name == "llama2":
        # The one known difference, on purpose: Meta's format (tests/test_reference_formats.py) encodes the text
        # after each BOS with SentencePiece's dummy prefix, "▁[" (518); transformers 5 gives "[" (29961) there.
        after_bos = [i + 1 for i, t in enumerate(ref) if t == tok.bos_id]
        assert after_bos and all(ref[i] == 29961 and ours[i] == 518 for i in after_bos)
        ref = [518 if i in after_bos else t for i, t in enumerate(ref)]
    assert ours == ref
    assert tok.render_chat(messages, generation_prompt) == ref_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt)
    # BOS exactly where the reference puts it (once per user turn for Llama-2, once in all for Mistral)
    if tok.bos_id is not None:
        assert [i for i, t in enumerate(ours) if t == tok.bos_id] == [i for i, t in enumerate(ref) if t == tok.bos_id]


@pytest.mark.parametrize("name", ["mistral", "mistral-2024", "qwen2.5", "llama2"])
def test_mask_covers_assistant_turns_and_eos(shared, tmp_path, name):
    folder = tokenizer_dir(shared, tmp_path, name)
    tok = ssr.load_tokenizer(folder)
    messages = CONVERSATIONS["multi"][:4]
    ids, mask = tok.apply_chat_template(messages, return_mask=True)
    assert ids == tok.apply_chat_template(messages) and len(mask) == len(ids)
    runs, start = [], None  # the supervised runs, as token slices
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        if not m and start is not None:
            runs.append(ids[start:i])
            start = None
    assert len(runs) == 2  # one per assistant turn
    for run, turn in zip(runs, [messages[1], messages[3]]):
        assert run[-1] == tok.eos_id  # the end-of-turn token is supervised
        assert tok.decode(run[:-1]).strip() == turn["content"].strip()
        assert tok.eos_id not in run[:-1]
    # nothing of the prompt: the user text never appears in a supervised run
    assert all("Hi there" not in tok.decode(r) for r in runs)
    view = tok.show_mask(ids, mask)
    assert view.count("⟦") == 2 and "⟦Hello! How can I help?" in view.replace("⟦ ", "⟦")


def test_special_ids(shared, tmp_path):
    llama = ssr.load_tokenizer(shared / "tokenizers" / "Llama-2-7b-chat-hf")
    assert (llama.bos_id, llama.eos_id, llama.stop_ids) == (1, 2, [2])
    qwen = ssr.load_tokenizer(shared / "tokenizers" / "Qwen2.5-Instruct")
    assert qwen.bos_id is None and qwen.eos_id == 151645 and qwen.pad_id == 151643
    # generation_config.json lists two eos ids: both stop generation
    src = shared / "tokenizers" / "Qwen2.5-Instruct"
    shutil.copy(src / "tokenizer.json", tmp_path)
    for f in ("tokenizer_config.json", "generation_config.json", "config.json"):
        shutil.copy(src / "Qwen2.5-0.5B-Instruct-resaved" / f, tmp_path)
    assert set(ssr.load_tokenizer(tmp_path).stop_ids) == {151645, 151643}
    assert qwen.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_encode_decode_round_trip(shared):
    tok = ssr.load_tokenizer(shared / "tokenizers" / "Llama-2-7b-chat-hf")
    text = "Hello world! Ünïcödé 日本語 🎉\n  indented"
    ids = tok.encode(text)
    assert tok.bos_id not in ids and tok.decode(ids) == text


def test_chat_template_override_by_name(shared):
    tok = ssr.load_tokenizer(shared / "tokenizers" / "Qwen2.5-Instruct", chat_template="llama2")
    assert tok.chat_template == "llama2"
    with pytest.raises(ValueError, match="chatml, llama2, mistral, mistral-2024"):
        ssr.load_tokenizer(shared / "tokenizers" / "Qwen2.5-Instruct", chat_template="vicuna")


def test_missing_template_names_the_options(shared):
    tok = ssr.load_tokenizer(shared / "models" / "stories260K" / "hf")
    with pytest.raises(ValueError, match="chatml, llama2, mistral, mistral-2024"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
