"""generate.py: one well-formed record per example and mode, prompts with a prefill encoded as in the whole
conversation, adapters, and a run that survives SIGKILL without duplicate or missing ids."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import generate
import ssr
from conftest import ROOT
from hf_oracle import rewrite_config
from ssr.harness import tasks as prompts
from ssr.harness.runfiles import read_records
from ssr.harness.records import generate_records, prompt_ids
from ssr.harness.tasks import load_task

TASK_FILES = {"gsm8k": "data/gsm8k/train.jsonl", "mbpp": "data/mbpp/mbpp.jsonl", "nq": "data/nq_open/NQ-open.dev.jsonl"}
KEYS = {"prompt_text", "id", "mode", "messages", "output", "finish_reason", "prompt_tokens", "output_tokens",
        "output_ids", "stop_id"}


@pytest.fixture(scope="module")
def stories(shared, tmp_path_factory):
    """A real tiny model. It has no chat template, so the tests give it ChatML. Its context is 512 tokens and its
    byte-level tokenizer makes an MBPP paraphrase prompt 783 tokens long, which generation refuses; these tests
    check records, not text quality, so the copy used here declares a longer context (RoPE computes any position)."""
    folder = tmp_path_factory.mktemp("stories260K")
    for f in (shared / "models" / "stories260K" / "hf").iterdir():
        shutil.copy(f, folder / f.name)
    rewrite_config(folder, max_position_embeddings=2048)
    return folder


def chat_file(path, n: int) -> None:
    words = "the cat sat on a mat and then it ran to see a big red ball in the park".split()
    with open(path, "w") as f:
        for i in range(n):
            question = " ".join(words[:3 + (7 * i) % len(words)])
            f.write(json.dumps({"id": f"r{i}", "messages": [{"role": "user", "content": question},
                                                             {"role": "assistant", "content": "A story."}]}) + "\n")


@pytest.mark.parametrize("task", TASK_FILES)
def test_records_of_every_mode(shared, stories, tmp_path, task, capsys):
    task_file, out = shared / TASK_FILES[task], tmp_path / "out.jsonl"
    common = ["--model", str(stories), "--chat-template", "chatml", "--task-file", str(task_file), "--limit", "3",
              "--out", str(out), "--max-new-tokens", "6", "--batch-size", "2", "--quiet"]
    for mode in prompts.MODES:
        assert generate.main(common + ["--mode", mode]) == 0
    records = read_records(out)
    tok = ssr.load_tokenizer(stories, chat_template="chatml")
    examples = {ex.id: ex for ex in load_task(task_file, limit=3)}
    assert sorted((r["id"], r["mode"]) for r in records) == sorted((i, m) for i in examples for m in prompts.MODES)
    for r in records:
        prompt = prompts.build_prompt(examples[r["id"]], r["mode"])
        assert set(r) == KEYS | ({"prefix"} if r["mode"] == "rewrite" else set())
        assert r["messages"] == prompt.messages and r.get("prefix", "") == prompt.prefix
        assert r["prompt_tokens"] == len(prompt_ids(tok, prompt))
        assert tok.encode(r["prompt_text"]) == prompt_ids(tok, prompt)  # the exact text the prompt's ids encode
        assert r["finish_reason"] in ("stop", "length") and 0 <= r["output_tokens"] <= 6
        assert isinstance(r["output"], str)
        assert (r["stop_id"] in tok.stop_ids) == (r["finish_reason"] == "stop")  # the ids a self target trains on
        assert r["mode"] == "rewrite" or len(r["output_ids"]) == r["output_tokens"]
    rewrites = [r for r in records if r["mode"] == "rewrite"]
    assert all(r["prefix"] == ("Great! Let's think step by step." if task == "gsm8k" else "") for r in rewrites)

    before = out.read_bytes()
    assert generate.main(common + ["--mode", "predict"]) == 0  # everything is there: a rerun writes nothing
    assert out.read_bytes() == before
    # records made another way are never mixed into --out
    assert generate.main(common + ["--mode", "predict", "--temperature", "0.7"]) == 1
    assert "other settings (temperature: 0.0 -> 0.7)" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("name,template", [("Llama-2-7b-chat-hf", None), ("Mistral-7B-Instruct-v0.2", "mistral"),
                                           ("Mistral-7B-Instruct-v0.2", "mistral-2024"), ("Qwen2.5-Instruct", None)])
def test_prefill_ids_are_those_of_the_whole_conversation(shared, name, template):
    tok = ssr.load_tokenizer(shared / "tokenizers" / name, chat_template=template)
    example = load_task(shared / TASK_FILES["gsm8k"], limit=1)[0]
    prompt = prompts.build_prompt(example, "rewrite")
    ids = prompt_ids(tok, prompt)
    whole = tok.apply_chat_template(prompt.messages + [
        {"role": "assistant", "content": prompt.prefix + " Natalia sold 48 / 2 = 24 clips in May."}])
    assert whole[:len(ids)] == ids and len(whole) > len(ids) + 5
    assert tok.decode(ids).endswith(prompt.prefix)


def test_adapter(stories, tmp_path):
    lora = pytest.importorskip("ssr.lora")
    task_file = tmp_path / "chat.jsonl"
    chat_file(task_file, 4)
    model = ssr.load_model(stories)
    lora.apply_lora(model, r=4, targets=("q_proj", "v_proj"))
    torch.manual_seed(0)
    for m in lora.lora_modules(model).values():
        torch.nn.init.normal_(m.lora_B.weight, std=0.5)
    lora.save_adapter(model, tmp_path / "adapter")

    common = ["--model", str(stories), "--chat-template", "chatml", "--task-file", str(task_file), "--quiet",
              "--max-new-tokens", "12"]
    generate.main(common + ["--out", str(tmp_path / "base.jsonl")])
    generate.main(common + ["--out", str(tmp_path / "tuned.jsonl"), "--adapter", str(tmp_path / "adapter")])
    base, tuned = ({r["id"]: r["output"] for r in read_records(tmp_path / f)} for f in ("base.jsonl", "tuned.jsonl"))
    assert base != tuned

    tok = ssr.load_tokenizer(stories, chat_template="chatml")
    examples = load_task(task_file)
    with lora.disabled(model):  # the methods generate their targets with the base model
        off = generate_records(model, tok, examples, "predict", tmp_path / "off.jsonl", max_new_tokens=12,
                               progress=False)
    on = generate_records(model, tok, examples, "predict", tmp_path / "on.jsonl", max_new_tokens=12, progress=False)
    assert {r["id"]: r["output"] for r in off} == base
    assert {r["id"]: r["output"] for r in on} == tuned


def test_killed_run_resumes_without_duplicates_or_gaps(stories, tmp_path):
    task_file, out, n = tmp_path / "chat.jsonl", tmp_path / "out.jsonl", 40
    chat_file(task_file, n)
    cmd = [sys.executable, str(ROOT / "generate.py"), "--model", str(stories), "--chat-template", "chatml",
           "--task-file", str(task_file), "--out", str(out), "--batch-size", "2", "--max-new-tokens", "32",
           "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") >= 2):  # the first batch is written
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no record written in time"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    finished = proc.wait() == 0  # on a fast machine the run may end before the kill lands: then it is whole
    proc.stderr.close()
    killed = read_records(out)
    assert 2 <= len(killed) <= n and (len(killed) == n or not finished)

    subprocess.run(cmd, check=True, env=env, timeout=300, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in out.read_text().splitlines()]  # every line is a whole record
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == n
    assert set(ids) == {f"r{i}" for i in range(n)}
    assert records[:len(killed)] == killed  # what was written before the kill was kept as it was


def test_static_decode_flag_writes_the_same_records(shared, stories, tmp_path):
    """generate.py --static-decode (the fixed-shape path, reached through the model's `static_decode` switch)
    writes the very records of the default eager path, and records nothing about it (outputs are the same)."""
    task_file = shared / TASK_FILES["gsm8k"]
    common = ["--model", str(stories), "--chat-template", "chatml", "--task-file", str(task_file), "--limit", "5",
              "--max-new-tokens", "12", "--batch-size", "3", "--quiet", "--mode", "predict"]
    calls = []
    real = ssr.sampling._static_decoder
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssr.sampling, "_static_decoder", lambda *a: calls.append(1) or real(*a))
        assert generate.main(common + ["--out", str(tmp_path / "eager.jsonl")]) == 0
        assert calls == []
        assert generate.main(common + ["--out", str(tmp_path / "static.jsonl"), "--static-decode"]) == 0
        assert calls  # the fixed-shape path did run
    eager, static = read_records(tmp_path / "eager.jsonl"), read_records(tmp_path / "static.jsonl")
    assert len(eager) == 5 and eager == static
