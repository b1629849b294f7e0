"""Self-generated targets are trained as the exact ids the model generated (plus the stop token it sampled),
after the ids of the predict prompt, on all four chat formats; decoding and encoding again is never used."""
import json
import shutil

import pytest

import ssr
from hf_oracle import make_checkpoint
from ssr import methods
from ssr.harness import pipeline
from ssr.sampling import complete
from ssr.harness.records import generate_records, prompt_ids
from ssr.harness.tasks import Example, build_prompt, load_task, predict_messages

TOKENIZERS = {  # format -> (tokenizer folder, tokenizer_config to use or None, vocab size)
    "chatml": ("Qwen2.5-Instruct", None, 151936),
    "llama2": ("Llama-2-7b-chat-hf", None, 32000),
    "mistral": ("Mistral-7B-Instruct-v0.2", "tokenizer_config.reconstructed.json", 32000),
    "mistral-2024": ("Mistral-7B-Instruct-v0.2", "tokenizer_config.template-2024.reconstructed.json", 32000),
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def model_and_tok(request, shared, tmp_path_factory):
    name, config, vocab = TOKENIZERS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    make_checkpoint(folder, "llama", vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2)
    src = shared / "tokenizers" / name
    shutil.copy(src / "tokenizer.json", folder / "tokenizer.json")
    shutil.copy(src / (config or "tokenizer_config.json"), folder / "tokenizer_config.json")
    tok = ssr.load_tokenizer(folder)
    assert tok.chat_template == request.param
    return ssr.load_model(folder), tok


@pytest.fixture(scope="module")
def example(shared):
    return load_task(shared / "data" / "gsm8k" / "train.jsonl", limit=1)[0]


def make_it_stop(model, tok, example, mode):
    """A random model seldom samples EOS: add, as an extra stop id, a token its greedy answer reaches a few
    tokens in, so that the generation ends by a sampled stop token, as a real model's does."""
    tokens = complete(model, [prompt_ids(tok, build_prompt(example, mode))], 12)[0].tokens
    k = next(k for k in range(3, len(tokens)) if tokens[k] not in tokens[:k])
    tok.stop_ids = [*tok.stop_ids, tokens[k]]


@pytest.mark.parametrize("mode", ["predict", "rewrite"])
def test_supervised_ids_are_the_generated_ids_and_stop_token(model_and_tok, example, mode, tmp_path):
    model, tok = model_and_tok
    stop_ids = tok.stop_ids
    try:
        make_it_stop(model, tok, example, mode)
        (record,) = generate_records(model, tok, [example], mode, tmp_path / f"{mode}.jsonl", max_new_tokens=12,
                                     progress=False)
        assert record["finish_reason"] == "stop" and record["stop_id"] in tok.stop_ids
    finally:
        tok.stop_ids = stop_ids
    # the record's ids are what the sampler produced (for a rewrite: the continuation after the prefill)
    generated = complete(model, [prompt_ids(tok, build_prompt(example, mode))], 12, stop_ids=[record["stop_id"]])[0]
    assert generated.stop_id == record["stop_id"]
    assert record["output_ids"] == generated.tokens[len(generated.tokens) - len(record["output_ids"]):]
    assert tok.decode(record["output_ids"]).strip() == record["output"].strip()

    answer = methods.Generation(record["output"], None, pipeline.generated_ids(record, tmp_path / f"{mode}.jsonl"))
    source = {"predict": "self", "rewrite": "rewrite"}[mode]
    target = methods.first_accepted(example, {example.id: "gold"}, ({example.id: answer}, source))
    (sample,), cut = methods.training_samples(tok, [predict_messages(example)], [target], max_len=4096)
    prompt = tok.apply_chat_template(predict_messages(example), add_generation_prompt=True)
    assert sample.ids[:len(prompt)] == prompt and not any(sample.mask[:len(prompt)])  # trained on the task prompt
    supervised = [t for t, m in zip(sample.ids, sample.mask) if m]
    assert supervised == record["output_ids"] + [record["stop_id"]] == sample.ids[len(prompt):]
    assert sample.source == source and cut == {"truncated": 0, "dropped": 0}

    # targets.jsonl keeps the text for reading and the ids for training; a rerun reads both back
    pipeline.build_targets("ssr", [example], lambda m, exs: {example.id: answer} if m == "predict" else {}, tmp_path)
    row = json.loads((tmp_path / "targets.jsonl").read_text())
    assert row["response"] == record["output"] and row["response_ids"] == supervised
    assert pipeline.build_targets("ssr", [example], None, tmp_path)[0].ids == supervised


def test_reencoding_would_not_give_the_generated_ids_back(shared, tmp_path):
    """The original Mistral template glues the answer to "[/INST]": re-encoded, "▁The" the model generated
    becomes "The". Trained from ids, the sample keeps "▁The"."""
    src = shared / "tokenizers" / "Mistral-7B-Instruct-v0.2"
    shutil.copy(src / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(src / "tokenizer_config.reconstructed.json", tmp_path / "tokenizer_config.json")
    tok = ssr.load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "What is 2+2?"}]
    generated = tok.encode("The answer is 4.") + [tok.eos_id]  # "▁The ..." as a model says it after "[/INST]"
    assert tok.tk.id_to_token(generated[0]) == "▁The"
    ids, mask = tok.apply_chat_template(messages + [{"role": "assistant", "content": "The answer is 4."}],
                                        return_mask=True)
    reencoded = [t for t, m in zip(ids, mask) if m]
    assert tok.tk.id_to_token(reencoded[0]) == "The" and reencoded != generated
    target = methods.Target("0", "The answer is 4.", "self", generated)
    example = Example("0", "chat", "What is 2+2?", "The answer is 4.", messages=messages)
    (sample,), _ = methods.training_samples(tok, [predict_messages(example)], [target], max_len=256)
    assert [t for t, m in zip(sample.ids, sample.mask) if m] == generated
