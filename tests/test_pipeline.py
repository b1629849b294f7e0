"""The four methods end to end through train.py, on a tiny random Qwen2 with the real Qwen2.5 tokenizer."""
import json
import shutil

import pytest
from safetensors import safe_open

import ssr.harness.pipeline
import ssr.harness.records
import train
from hf_oracle import make_checkpoint
from ssr.methods import METHODS, SOURCES


@pytest.fixture(scope="module")
def qwen_dir(shared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    make_checkpoint(folder, "qwen2", vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                    max_position_embeddings=2048)  # S3FT paraphrase prompts of GSM8K run past 256 tokens
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shared / "tokenizers" / "Qwen2.5-Instruct" / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def gsm8k_file(shared, tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    lines = (shared / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:6]
    path.write_text("\n".join(lines) + "\n")
    return path


def argv(method, model, data, out):
    return ["--method", method, "--task", "gsm8k", "--data", str(data), "--model", str(model), "--out", str(out),
            "--max-new-tokens", "8", "--epochs", "1", "--micro-batch", "2", "--grad-accum", "1", "--lora-r", "4"]


@pytest.mark.parametrize("method", METHODS)
def test_method_end_to_end_and_rerun_reuses_every_step(method, qwen_dir, gsm8k_file, tmp_path, monkeypatch, capsys):
    out = tmp_path / method
    assert train.main(argv(method, qwen_dir, gsm8k_file, out)) == 0
    targets = [json.loads(line) for line in (out / "targets.jsonl").read_text().splitlines()]
    assert [t["id"] for t in targets] == [str(i) for i in range(6)]
    assert all(t["source"] in SOURCES and t["response"] and t["messages"][-1]["role"] == "user" for t in targets)
    if method == "sft":
        assert {t["source"] for t in targets} == {"gold"} and targets[0]["response"].endswith("\nThe answer is 72.")
    generated = {"sft": [], "ssr": ["predict"], "s3ft": ["predict", "paraphrase"], "sdft": ["rewrite"]}[method]
    for mode in generated:  # the base model's generations and their verdicts, kept in the run folder
        assert len((out / f"{mode}.jsonl").read_text().splitlines()) == 6
        if method != "sdft":  # SDFT's recipe (the default on GSM8K) filters its rewrites without a judge
            assert len((out / f"{mode}.verdicts.jsonl").read_text().splitlines()) == 6
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    with safe_open(out / "adapter" / "adapter_model.safetensors", framework="pt") as f:
        assert all(k.startswith("base_model.model.model.layers.") for k in f.keys())

    # The same command again: nothing is generated, judged or trained a second time.
    before = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(ssr.harness.records, "complete", lambda *a, **k: pytest.fail("generated again"))
    monkeypatch.setattr(ssr.harness.pipeline, "train", lambda *a, **k: pytest.fail("trained again"))
    capsys.readouterr()
    assert train.main(argv(method, qwen_dir, gsm8k_file, out)) == 0
    assert "already trained" in capsys.readouterr().out
    assert before == {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_judge_free_data_is_refused_for_self_generating_methods(qwen_dir, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    assert train.main(argv("ssr", qwen_dir, data, tmp_path / "run")[:2] + ["--data", str(data), "--model", str(qwen_dir),
                                                                        "--out", str(tmp_path / "run")]) == 1
    assert "needs a judge" in capsys.readouterr().err


def test_s3ft_trains_on_its_own_training_prompt_and_keeps_generated_ids(qwen_dir, gsm8k_file, tmp_path, monkeypatch):
    import ssr
    from ssr.harness.tasks import build_prompt, load_task
    from ssr.methods import Target, training_samples
    out, seen = tmp_path / "s3ft", {}
    monkeypatch.setattr(ssr.harness.pipeline, "train", lambda model, samples, *a, **k: seen.update(samples=samples))
    assert train.main(argv("s3ft", qwen_dir, gsm8k_file, out) + ["--recipe", "s3ft"]) == 0
    assert json.loads((out / "run.json").read_text())["recipe"] == "s3ft"
    examples = load_task(gsm8k_file)
    predicted = sorted((json.loads(line) for line in (out / "predict.jsonl").read_text().splitlines()),
                       key=lambda r: int(r["id"]))
    targets = [json.loads(line) for line in (out / "targets.jsonl").read_text().splitlines()]
    # the base model answered the predict prompt; the targets are trained as the response to the training prompt
    assert predicted[0]["messages"] == build_prompt(examples[0], "predict").messages
    assert "The answer is N." in predicted[0]["messages"][-1]["content"]
    assert targets[0]["messages"] == [{"role": "user", "content": examples[0].question.strip()}]
    tok = ssr.load_tokenizer(qwen_dir)
    for sample, target in zip(seen["samples"], targets):
        prompt = tok.apply_chat_template(target["messages"], add_generation_prompt=True)
        assert sample.ids[:len(prompt)] == prompt and not any(sample.mask[:len(prompt)])
    # a self-generated target keeps the very ids generated after the predict prompt, after the training prompt's
    ids = predicted[0]["output_ids"] + [tok.stop_ids[0]]
    (sample,), _ = training_samples(tok, [targets[0]["messages"]], [Target("0", "x", "self", ids)], max_len=2048)
    prompt = tok.apply_chat_template(targets[0]["messages"], add_generation_prompt=True)
    assert sample.ids == prompt + ids and sample.mask == [0] * len(prompt) + [1] * len(ids)
    # the project recipe trains on the predict prompt itself, as before
    assert build_prompt(examples[0], "train").messages == build_prompt(examples[0], "predict").messages


def test_methods_under_the_same_flags_differ_only_in_target_choice(qwen_dir, gsm8k_file, tmp_path):
    """No default depends on --method: SDFT gets the project recipe like the others unless --recipe sdft is given."""
    settings = {}
    for method in METHODS:
        assert train.main(argv(method, qwen_dir, gsm8k_file, tmp_path / method)) == 0
        settings[method] = json.loads((tmp_path / method / "run.json").read_text())
        assert settings[method].pop("method") == method
    assert all(s == settings["sft"] for s in settings.values())
    assert settings["sft"]["recipe"] == "project" and settings["sft"]["sampling"]["do_sample"] is False
    assert settings["sft"]["lora"]["dropout"] == 0.05 and settings["sft"]["train"]["warmup"] == 0.03
