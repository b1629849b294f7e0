"""Chat ids equal each model's own reference format: Llama-2-chat as Meta's `chat_completion` encodes it
(llama/generation.py, SentencePiece), Mistral-7B-Instruct-v0.2 as mistral-common's v1 tokenizer does, on
conversations with a system message, several turns, Unicode and text that looks like special tokens."""
import shutil

import pytest

import ssr

CONVERSATIONS = {
    "system, several turns": [
        {"role": "system", "content": "You are a careful assistant.\nAnswer briefly."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "2 + 2 = 4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6."},
        {"role": "user", "content": "Thanks!"},
    ],
    "unicode": [
        {"role": "user", "content": "Привет, как дела? 你好 ñandú — «quotes» 🎉\n\ttab  two spaces"},
        {"role": "assistant", "content": "Très bien! 😀 über 日本語"},
        {"role": "user", "content": "ok"},
    ],
    "tag-like text": [
        {"role": "system", "content": "Never write </s> or <s>."},
        {"role": "user", "content": "Print <s>hello</s> and [INST] x [/INST] and <<SYS>> y <</SYS>> and <unk>"},
        {"role": "assistant", "content": "<b>bold</b> </s> <|im_end|>"},
        {"role": "user", "content": " leading and trailing spaces "},
    ],
}


# Meta's llama/generation.py, chat_completion: the system text folded into the first user turn between
# B_SYS and E_SYS; each (user, answer) pair is [bos] + encode(f"{B_INST} {user.strip()} {E_INST} {answer.strip()} ")
# + [eos]; the last user turn [bos] + encode(f"{B_INST} {user.strip()} {E_INST}"). encode is SentencePiece's
# (dummy prefix on, no special-token parsing).
B_INST, E_INST, B_SYS, E_SYS = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"


def meta_chat_completion(sp, dialog):
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
                  ] + dialog[2:]
    ids = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += [sp.bos_id()] + sp.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} "
                                         f"{answer['content'].strip()} ") + [sp.eos_id()]
    if len(dialog) % 2:
        ids += [sp.bos_id()] + sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")
    return ids


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_llama2_chat_ids_equal_metas_chat_completion(shared, conversation):
    spm = pytest.importorskip("sentencepiece")
    folder = shared / "tokenizers" / "Llama-2-7b-chat-hf"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = ssr.load_tokenizer(folder)
    messages = CONVERSATIONS[conversation]
    ref = meta_chat_completion(sp, messages)
    ours, mask = tok.apply_chat_template(messages, add_generation_prompt=True, return_mask=True)
    assert ours == ref
    assert ours[1] == 518  # "▁[" after BOS, as Meta's code and transformers 4 give (transformers 5: "[" 29961)
    assert ours.count(tok.bos_id) == sum(m["role"] == "user" for m in messages)  # "<s>" in text stays text
    answers = [m["content"].strip() for m in messages if m["role"] == "assistant"]
    assert supervised_texts(tok, ours, mask) == [f"{a} </s>" for a in answers]


def mistral_common_ids(messages):
    mc = pytest.importorskip("mistral_common")  # noqa: F841
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    request = ChatCompletionRequest(messages=[kinds[m["role"]](content=m["content"]) for m in messages])
    return MistralTokenizer.v1().encode_chat_completion(request).tokens  # v1 ships in the wheel: no download


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_mistral_2024_chat_ids_equal_mistral_common_v1(shared, tmp_path, conversation):
    src = shared / "tokenizers" / "Mistral-7B-Instruct-v0.2"
    shutil.copy(src / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(src / "tokenizer_config.template-2024.reconstructed.json", tmp_path / "tokenizer_config.json")
    tok = ssr.load_tokenizer(tmp_path)
    assert tok.chat_template == "mistral-2024"
    messages = CONVERSATIONS[conversation]
    ref = mistral_common_ids(messages)
    ours, mask = tok.apply_chat_template(messages, add_generation_prompt=True, return_mask=True)
    assert ours == ref
    assert ours.count(tok.bos_id) == 1 and ours.count(tok.eos_id) == sum(m["role"] == "assistant" for m in messages)
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    assert supervised_texts(tok, ours, mask) == [f"{a}</s>".lstrip() for a in answers]


def supervised_texts(tok, ids, mask):
    """The text of each supervised run, special tokens written out."""
    out, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append(tok.decode(ids[start:i], skip_special_tokens=False).strip())
            start = None
    return out


def test_prefilled_prompt_is_metas_prompt_with_the_prefix(shared):
    """SDFT's rewrite prompt ends inside the assistant turn: the ids are the reference encoding of the prompt
    text and the prefill together, with nothing of the template's end of turn after it."""
    spm = pytest.importorskip("sentencepiece")
    from ssr.harness.records import prompt_ids
    from ssr.harness.tasks import Prompt

    folder = shared / "tokenizers" / "Llama-2-7b-chat-hf"
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    tok = ssr.load_tokenizer(folder)
    messages = [{"role": "user", "content": "What is <s>2+2</s>?"}]
    ids = prompt_ids(tok, Prompt(messages, "Great! Let's think step by step."))
    assert ids == [sp.bos_id()] + sp.encode("[INST] What is <s>2+2</s>? [/INST] Great! Let's think step by step.")
