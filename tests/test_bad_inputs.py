"""Bad inputs to the four scripts: each is refused with one `error:` line that names the flag, file, line or field,
with exit code 2 (a bad flag value) or 1 (a bad input), and before anything is written. Then the cases where a
rerun must never return an old number: results made with other settings, a finished run retrained with other
hyperparameters, NQ aliases from a string; one writer per output; Ctrl-C."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file, save_file

import evaluate
import generate
import judge
import ssr
import study
import train
from conftest import ROOT
from hf_oracle import make_checkpoint
from ssr import lora
from ssr.harness.runfiles import hold_lock, read_records
from ssr.harness.tasks import load_task
from test_trainer import RECORDS, tiny_run_folder

SCRIPTS = {"generate": generate.main, "judge": judge.main, "train": train.main, "evaluate": evaluate.main,
           "study": study.main}
GSM8K = [{"question": f"what is {a} plus {b}", "answer": f"{a} plus {b} is {a + b}\n#### {a + b}"}
         for a in range(3) for b in range(2)]


def jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input a case reads: a tiny model (context 256) and broken copies of it, adapters, task files."""
    d = tmp_path_factory.mktemp("inputs")
    model = tiny_run_folder(d / "model")
    for name in ("no_template", "corrupt", "no_config"):
        shutil.copytree(model, d / name)
    (d / "no_template" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>"}))
    weights = (d / "corrupt" / "model.safetensors").read_bytes()
    (d / "corrupt" / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    (d / "no_config" / "config.json").unlink()
    m = lora.apply_lora(ssr.load_model(model), r=4)
    lora.save_adapter(m, d / "adapter")
    shutil.copytree(d / "adapter", d / "bad_adapter")
    (d / "bad_adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 20)

    f = SimpleNamespace(dir=d, model=model, no_template=d / "no_template", corrupt=d / "corrupt",
                        no_config=d / "no_config", adapter=d / "adapter", bad_adapter=d / "bad_adapter")
    f.gsm8k = jsonl(d / "gsm8k.jsonl", GSM8K)
    f.chat = jsonl(d / "chat.jsonl", RECORDS)
    f.mbpp_str = jsonl(d / "mbpp.jsonl", [{"task_id": 11, "text": "add", "code": "def f(a, b): return a + b",
                                           "test_list": "assert f(1, 2) == 3"}])
    f.question_int = jsonl(d / "q5.jsonl", [GSM8K[0], {"question": 5, "answer": "#### 5"}])
    f.not_utf8 = d / "latin1.jsonl"
    f.not_utf8.write_bytes(json.dumps(GSM8K[0]).encode() + b'\n{"question": "caf\xe9", "answer": "#### 1"}\n')
    f.not_json = jsonl(d / "broken.jsonl", [GSM8K[0], '{"question": "x", "answer": '])
    f.not_object = jsonl(d / "list.jsonl", [GSM8K[0], '["question", "answer"]'])
    f.blank_lines = jsonl(d / "blank.jsonl", [GSM8K[0], "", "", {"question": "x"}])
    f.no_content = jsonl(d / "nocontent.jsonl", [{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}])
    f.messages_str = jsonl(d / "msgstr.jsonl", [{"messages": "hi there"}])
    f.no_assistant = jsonl(d / "noassistant.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    f.duplicate = jsonl(d / "dup.jsonl", [{"id": "a", **GSM8K[0]}, {"id": "b", **GSM8K[1]}, {"id": "a", **GSM8K[2]}])
    f.long = jsonl(d / "long.jsonl", [GSM8K[0], {"question": "plus " * 300, "answer": "#### 1"}])
    f.pred = jsonl(d / "pred.jsonl", [{"id": str(i), "mode": "predict", "output": "The answer is 1.",
                                       "finish_reason": "stop"} for i in range(len(GSM8K))])
    f.pred_no_output = jsonl(d / "pred_no_output.jsonl", [{"id": "0", "mode": "predict"}])
    f.pred_other_ids = jsonl(d / "pred_other.jsonl", [{"id": "x7", "mode": "predict", "output": "1"}])
    result = {"mmlu": {"acc": 0.5, "n": 4, "kind": "retention"}}
    f.base_json = d / "base.json"
    f.base_json.write_text(json.dumps({"settings": {"limit": 4}, "results": result}))
    f.other_limit = d / "other.json"
    f.other_limit.write_text(json.dumps({"settings": {"limit": 8}, "results": result}))
    f.same_limit = d / "same.json"
    f.same_limit.write_text(json.dumps({"settings": {"limit": 4}, "results": result}))
    f.bad_json = d / "bad.json"
    f.bad_json.write_text('{"results": ')
    f.nan_score = d / "nan.json"
    f.nan_score.write_text('{"settings": {"limit": 4}, "results": {"mmlu": {"acc": NaN, "n": 4}}}')
    for name, settings, n in (("other_tokens", {"limit": 4, "max_new_tokens": 20}, 4), ("other_n", {"limit": 4}, 8),
                              ("other_judge", {"limit": 4, "judge": {"judge": "llm", "model": "m"}}, 4)):
        setattr(f, name, d / f"{name}.json")
        getattr(f, name).write_text(json.dumps({"settings": settings, "results": {"mmlu": dict(result["mmlu"], n=n)}}))
    f.mbpp_no_tests = jsonl(d / "mbpp_empty.jsonl", [{"task_id": 11, "text": "add", "code": "def f(a, b): return a + b",
                                                      "test_list": []}])
    f.mbpp_humaneval = jsonl(d / "humaneval.jsonl", [{"task_id": "HumanEval/1", "text": "add", "code": "x = 1",
                                                      "test_list": ["assert x == 1"]}])
    f.no_number = jsonl(d / "nonum.jsonl", [GSM8K[0], {"question": "what is it", "answer": "It is unknown.\n####"}])
    f.surrogate = jsonl(d / "surrogate.jsonl", [GSM8K[0], '{"question": "caf\\ud800", "answer": "#### 1"}'])
    f.nested = jsonl(d / "deep.jsonl", [GSM8K[0], "[" * 100_000])
    squad = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [
        {"id": "q1", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}],
         "is_impossible": False}]}]}]}
    f.squad = d / "squad.json"
    f.squad.write_text(json.dumps(squad))
    for name, edit in (("squad_no_id", lambda q, p: q.pop("id")), ("squad_no_text", lambda q, p: q["answers"][0].pop("text")),
                       ("squad_no_paragraphs", lambda q, p: p.clear())):
        broken = json.loads(json.dumps(squad))
        edit(broken["data"][0]["paragraphs"][0]["qas"][0], broken["data"][0])
        setattr(f, name, d / f"{name}.json")
        getattr(f, name).write_text(json.dumps(broken))
    shutil.copytree(d / "adapter", d / "null_adapter")
    config = json.loads((d / "adapter" / "adapter_config.json").read_text())
    (d / "null_adapter" / "adapter_config.json").write_text(json.dumps(dict(config, r=None)))
    weights = load_file(d / "adapter" / "adapter_model.safetensors")
    first = sorted(weights)[0]
    weights[first][0, 0] = float("nan")
    (d / "nan_adapter").mkdir()
    shutil.copy(d / "adapter" / "adapter_config.json", d / "nan_adapter")
    save_file(weights, d / "nan_adapter" / "adapter_model.safetensors")
    f.null_adapter, f.nan_adapter, f.nan_tensor = d / "null_adapter", d / "nan_adapter", first
    return f


def G(f, *extra):  # generate.py
    return ["--model", str(f.model), "--task-file", str(f.gsm8k), "--out", str(f.out / "pred.jsonl"),
            "--max-new-tokens", "4", "--quiet", *extra]


def J(f, *extra):  # judge.py
    return ["--task-file", str(f.gsm8k), "--predictions", str(f.pred), "--out", str(f.out / "verdicts.jsonl"), *extra]


def T(f, *extra):  # train.py
    return ["--method", "sft", "--data", str(f.chat), "--model", str(f.model), "--out", str(f.out / "run"),
            "--epochs", "1", *extra]


def E(f, *extra):  # evaluate.py
    return ["--model", str(f.model), "--tasks", f"gsm8k={f.gsm8k}", "--out", str(f.out / "r.json"),
            "--max-new-tokens", "4", *extra]


def swap(args, flag, value):
    """args with flag's value replaced."""
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


# (id, script, argv from the inputs, exit code, what the message must say)
CASES = [
    # flag values, checked where parsed: exit 2, the flag named
    ("gen-limit-0", "generate", lambda f: G(f, "--limit", "0"), 2, ["--limit", ">= 1", "'0'"]),
    ("gen-limit-negative", "generate", lambda f: G(f, "--limit", "-3"), 2, ["--limit", ">= 1"]),
    ("gen-batch-size-0", "generate", lambda f: G(f, "--batch-size", "0"), 2, ["--batch-size", ">= 1"]),
    ("gen-max-new-tokens-negative", "generate", lambda f: swap(G(f), "--max-new-tokens", "-1"), 2,
     ["--max-new-tokens", ">= 1"]),
    ("gen-top-k-negative", "generate", lambda f: G(f, "--top-k", "-1"), 2, ["--top-k", ">= 0"]),
    ("gen-top-p-0", "generate", lambda f: G(f, "--top-p", "0"), 2, ["--top-p", "(0, 1]"]),
    ("gen-top-p-above-1", "generate", lambda f: G(f, "--top-p", "1.5"), 2, ["--top-p", "(0, 1]"]),
    ("gen-temperature-nan", "generate", lambda f: G(f, "--temperature", "nan"), 2, ["--temperature", "finite"]),
    ("gen-temperature-negative", "generate", lambda f: G(f, "--temperature", "-0.5"), 2, ["--temperature", "[0, inf)"]),
    ("gen-limit-not-a-number", "generate", lambda f: G(f, "--limit", "ten"), 2, ["--limit", "an integer"]),
    ("gen-empty-stop", "generate", lambda f: G(f, "--stop", ""), 2, ["--stop"]),
    ("judge-workers-0", "judge", lambda f: J(f, "--workers", "0"), 2, ["--workers", ">= 1"]),
    ("judge-timeout-0", "judge", lambda f: J(f, "--timeout", "0"), 2, ["--timeout", "(0, inf)"]),
    ("judge-timeout-inf", "judge", lambda f: J(f, "--timeout", "inf"), 2, ["--timeout", "finite"]),
    ("train-epochs-0", "train", lambda f: swap(T(f), "--epochs", "0"), 2, ["--epochs", ">= 1"]),
    ("train-micro-batch-0", "train", lambda f: T(f, "--micro-batch", "0"), 2, ["--micro-batch", ">= 1"]),
    ("train-grad-accum-0", "train", lambda f: T(f, "--grad-accum", "0"), 2, ["--grad-accum", ">= 1"]),
    ("train-batch-size-0", "train", lambda f: T(f, "--batch-size", "0"), 2, ["--batch-size", ">= 1"]),
    ("train-limit-negative", "train", lambda f: T(f, "--limit", "-2"), 2, ["--limit", ">= 1"]),
    ("train-lr-0", "train", lambda f: T(f, "--lr", "0"), 2, ["--lr", "(0, inf)"]),
    ("train-lr-nan", "train", lambda f: T(f, "--lr", "nan"), 2, ["--lr", "finite"]),
    ("train-lora-module-typo", "train", lambda f: T(f, "--lora-modules", "q_prj,v_proj"), 2,
     ["--lora-modules", "q_prj", "q_proj"]),
    ("train-lora-dropout-1", "train", lambda f: T(f, "--lora-dropout", "1"), 2, ["--lora-dropout", "[0, 1)"]),
    ("train-lora-r-0", "train", lambda f: T(f, "--lora-r", "0"), 2, ["--lora-r", ">= 1"]),
    ("eval-limit-0", "evaluate", lambda f: E(f, "--limit", "0"), 2, ["--limit", ">= 1"]),
    ("eval-limit-negative", "evaluate", lambda f: E(f, "--limit", "-5"), 2, ["--limit", ">= 1"]),
    ("eval-batch-tokens-0", "evaluate", lambda f: E(f, "--batch-tokens", "0"), 2, ["--batch-tokens", ">= 1"]),
    ("eval-exclude-without-compare", "evaluate", lambda f: E(f, "--exclude", "gsm8k"), 2, ["--exclude", "--compare"]),
    # the model folder, its tokenizer and chat template, the adapter, the device: exit 1, the file or flag named
    ("gen-model-typo", "generate", lambda f: swap(G(f), "--model", str(f.dir / "modle")), 1,
     ["model folder not found", "modle"]),
    ("gen-model-corrupt-weights", "generate", lambda f: swap(G(f), "--model", str(f.corrupt)), 1,
     ["corrupt/model.safetensors", "not a readable safetensors file"]),
    ("gen-model-no-config", "generate", lambda f: swap(G(f), "--model", str(f.no_config)), 1,
     ["no config.json in", "no_config"]),
    ("gen-no-chat-template", "generate", lambda f: swap(G(f), "--model", str(f.no_template)), 1,
     ["--model", "no_template", "--chat-template"]),
    ("gen-adapter-typo", "generate", lambda f: G(f, "--adapter", str(f.dir / "adaptr")), 1,
     ["adapter_config.json", "adaptr"]),
    ("gen-adapter-corrupt", "generate", lambda f: G(f, "--adapter", str(f.bad_adapter)), 1,
     ["bad_adapter/adapter_model.safetensors", "not a readable safetensors file"]),
    ("gen-device-typo", "generate", lambda f: G(f, "--device", "cpuu"), 1, ["--device", "cpuu"]),
    ("gen-prompt-past-context", "generate", lambda f: swap(G(f), "--task-file", str(f.long)), 1,
     ["context of 256 tokens", "example '1'", "--max-new-tokens 4"]),
    ("train-model-typo", "train", lambda f: swap(T(f), "--model", str(f.dir / "modle")), 1, ["modle"]),
    ("train-no-chat-template", "train", lambda f: swap(T(f), "--model", str(f.no_template)), 1,
     ["--model", "--chat-template", "chatml"]),
    ("eval-model-corrupt-weights", "evaluate", lambda f: swap(E(f), "--model", str(f.corrupt)), 1,
     ["corrupt/model.safetensors"]),
    ("eval-adapter-typo", "evaluate", lambda f: E(f, "--adapter", str(f.dir / "adaptr")), 1, ["adaptr"]),
    ("eval-no-chat-template", "evaluate", lambda f: swap(E(f), "--model", str(f.no_template)), 1, ["--chat-template"]),
    # task records: the file, its 1-based line and the field, with what was expected
    ("gen-task-file-missing", "generate", lambda f: swap(G(f), "--task-file", str(f.dir / "nope.jsonl")), 1,
     ["task file not found", "nope.jsonl"]),
    ("gen-nq-on-gsm8k", "generate", lambda f: G(f, "--task", "nq"), 1,
     ["gsm8k.jsonl:1", "'answer'", "list of strings", "NQ-open"]),
    ("gen-mbpp-test-list-string", "generate", lambda f: swap(G(f), "--task-file", str(f.mbpp_str)), 1,
     ["mbpp.jsonl:1", "'test_list'", "list of strings"]),
    ("gen-question-int", "generate", lambda f: swap(G(f), "--task-file", str(f.question_int)), 1,
     ["q5.jsonl:2", "'question'", "str", "got int 5"]),
    ("gen-not-utf8", "generate", lambda f: swap(G(f), "--task-file", str(f.not_utf8)), 1, ["latin1.jsonl:2", "UTF-8"]),
    ("gen-not-json", "generate", lambda f: swap(G(f), "--task-file", str(f.not_json)), 1,
     ["broken.jsonl:2", "not valid JSON"]),
    ("gen-not-an-object", "generate", lambda f: swap(G(f), "--task-file", str(f.not_object)), 1,
     ["list.jsonl:2", "JSON object"]),
    ("gen-line-after-blank-lines", "generate", lambda f: swap(G(f), "--task-file", str(f.blank_lines)), 1,
     ["blank.jsonl:4", "missing field 'answer'"]),
    ("gen-chat-turn-without-content", "generate", lambda f: swap(G(f), "--task-file", str(f.no_content)), 1,
     ["nocontent.jsonl:1", "messages[0]", "'content'"]),
    ("gen-messages-string", "generate", lambda f: swap(G(f), "--task-file", str(f.messages_str)), 1,
     ["msgstr.jsonl:1", "'messages'", "list"]),
    ("gen-duplicate-ids", "generate", lambda f: swap(G(f), "--task-file", str(f.duplicate)), 1,
     ["dup.jsonl:3", "duplicate id 'a'", "line 1"]),
    ("train-messages-without-target", "train", lambda f: swap(T(f), "--data", str(f.no_assistant)), 1,
     ["noassistant.jsonl:1", "assistant"]),
    ("train-judge-free-data-with-ssr", "train", lambda f: swap(T(f), "--method", "ssr"), 1,
     ["--method ssr", "needs a judge", "chat.jsonl"]),
    ("train-nq-on-gsm8k", "train", lambda f: swap(T(f), "--data", str(f.gsm8k)) + ["--task", "nq"], 1,
     ["gsm8k.jsonl:1", "'answer'", "list of strings"]),
    ("eval-nq-alias-characters", "evaluate", lambda f: swap(E(f), "--tasks", f"nq={f.gsm8k}"), 1,
     ["gsm8k.jsonl:1", "'answer'"]),
    ("eval-unknown-task", "evaluate", lambda f: swap(E(f), "--tasks", "mmmlu"), 1, ["--tasks", "'mmmlu'"]),
    ("eval-no-data-dir", "evaluate", lambda f: swap(E(f), "--tasks", "mmlu"), 1, ["--tasks mmlu", "--data-dir"]),
    ("eval-data-dir-missing", "evaluate", lambda f: E(f, "--data-dir", str(f.dir / "data")), 1, ["--data-dir"]),
    # judge.py's predictions
    ("judge-predictions-missing", "judge", lambda f: swap(J(f), "--predictions", str(f.dir / "pred.jsnl")), 1,
     ["--predictions", "pred.jsnl"]),
    ("judge-prediction-without-output", "judge", lambda f: swap(J(f), "--predictions", str(f.pred_no_output)), 1,
     ["pred_no_output.jsonl:1", "'output'"]),
    ("judge-predictions-of-another-file", "judge", lambda f: swap(J(f), "--predictions", str(f.pred_other_ids)), 1,
     ["none of its ids", "'x7'"]),
    ("judge-chat-records", "judge", lambda f: swap(J(f), "--task-file", str(f.chat)), 1, ["--task-file", "'chat'"]),
    ("judge-nq-on-gsm8k", "judge", lambda f: J(f, "--task", "nq"), 1, ["gsm8k.jsonl:1", "'answer'"]),
    # study.py
    ("study-negative-seed", "study", lambda f: ["--preset", "quick", "--seeds", "-1", "--out", str(f.out)], 2,
     ["--seeds", "'-1'"]),
    ("study-model-typo", "study", lambda f: ["--preset", "quick", "--model", str(f.dir / "modle"), "--out",
                                             str(f.out)], 1, ["modle"]),
    ("study-unknown-retention", "study", lambda f: ["--preset", "quick", "--model", str(f.model), "--retention",
                                                    "capitols", "--out", str(f.out)], 1,
     ["--retention capitols", "unknown benchmark"]),
    ("study-preset-without-data-dir", "study", lambda f: ["--preset", "gsm8k", "--model", str(f.model), "--out",
                                                          str(f.out)], 1, ["--retention arc_easy", "--data-dir"]),
    ("study-sdft-recipe-on-chatml", "study", lambda f: ["--preset", "quick", "--model", str(f.model), "--recipe",
                                                        "sdft", "--out", str(f.out)], 1,
     ["--recipe sdft", "Llama-2-chat's format", "chatml"]),
    # --compare
    ("compare-exclude-typo", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.same_limit),
                                                   "--exclude", "mmmlu"], 1, ["--exclude", "mmmlu"]),
    ("compare-other-limit", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.other_limit)], 1,
     ["different --limit", "other.json: 8"]),
    ("compare-missing-file", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.dir / "sft.json")], 1,
     ["--compare", "sft.json"]),
    ("compare-malformed-file", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.bad_json)], 1,
     ["bad.json", "not a valid JSON"]),
    ("compare-nan-score", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.nan_score)], 1,
     ["nan.json", "'mmlu'", "no finite score"]),
    ("compare-other-max-new-tokens", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.other_tokens)], 1,
     ["different --max-new-tokens", "other_tokens.json: 20"]),
    ("compare-other-judge", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.other_judge)], 1,
     ["different --judge", "'llm'"]),
    ("compare-other-n", "evaluate", lambda f: ["--compare", str(f.base_json), str(f.other_n)], 1,
     ["'mmlu'", "different numbers of items", "base: n=4", "other_n: n=8"]),
    # an --out that is (or lies inside) an input: refused before anything is written, the input untouched
    ("gen-out-is-the-task-file", "generate", lambda f: swap(G(f), "--out", str(f.gsm8k)), 1,
     ["--out", "is --task-file", "gsm8k.jsonl", "destroy an input"]),
    ("gen-out-inside-the-model", "generate", lambda f: swap(G(f), "--out", str(f.model / "pred.jsonl")), 1,
     ["lies inside --model"]),
    ("judge-out-is-the-predictions", "judge", lambda f: swap(J(f), "--out", str(f.pred)), 1,
     ["is --predictions", "pred.jsonl"]),
    ("train-out-is-the-model-folder", "train", lambda f: swap(T(f), "--out", str(f.model)), 1, ["is --model"]),
    ("eval-out-is-the-task-file", "evaluate", lambda f: swap(E(f), "--out", str(f.gsm8k)), 1,
     ["is --tasks gsm8k=", "gsm8k.jsonl"]),
    ("eval-out-is-the-squad-json", "evaluate", lambda f: swap(swap(E(f), "--tasks", f"squad2={f.squad}"), "--out",
                                                               str(f.squad)), 1, ["is --tasks squad2=", "squad.json"]),
    # records no judge may accept, and files the loaders must name
    ("gen-mbpp-without-tests", "generate", lambda f: swap(G(f), "--task-file", str(f.mbpp_no_tests)), 1,
     ["mbpp_empty.jsonl:1", "'test_list'", "no assert"]),
    ("gen-mbpp-task-id-not-a-number", "generate", lambda f: swap(G(f), "--task-file", str(f.mbpp_humaneval)), 1,
     ["humaneval.jsonl:1", "'task_id'", "HumanEval/1"]),
    ("gen-gsm8k-gold-without-number", "generate", lambda f: swap(G(f), "--task-file", str(f.no_number)), 1,
     ["nonum.jsonl:2", "'answer'", "#### N"]),
    ("train-gsm8k-gold-without-number", "train", lambda f: swap(T(f), "--data", str(f.no_number)), 1,
     ["nonum.jsonl:2", "'answer'", "final number"]),
    ("gen-lone-surrogate", "generate", lambda f: swap(G(f), "--task-file", str(f.surrogate)), 1,
     ["surrogate.jsonl:2", "'question'", "lone surrogate"]),
    ("gen-nested-too-deeply", "generate", lambda f: swap(G(f), "--task-file", str(f.nested)), 1,
     ["deep.jsonl:2", "nested too deeply"]),
    ("eval-squad-without-id", "evaluate", lambda f: swap(E(f), "--tasks", f"squad2={f.squad_no_id}"), 1,
     ["squad_no_id.json", "qas[0]", "'id'"]),
    ("eval-squad-answer-without-text", "evaluate", lambda f: swap(E(f), "--tasks", f"squad2={f.squad_no_text}"), 1,
     ["squad_no_text.json", "answers[0]", "'text'"]),
    ("eval-squad-without-paragraphs", "evaluate", lambda f: swap(E(f), "--tasks", f"squad2={f.squad_no_paragraphs}"),
     1, ["squad_no_paragraphs.json", "data[0]", "'paragraphs'"]),
    ("gen-adapter-null-r", "generate", lambda f: G(f, "--adapter", str(f.null_adapter)), 1,
     ["null_adapter/adapter_config.json", "'r'", "null"]),
    ("gen-adapter-nan-weights", "generate", lambda f: G(f, "--adapter", str(f.nan_adapter)), 1,
     ["nan_adapter/adapter_model.safetensors", "NaN"]),
    ("eval-adapter-nan-weights", "evaluate", lambda f: E(f, "--adapter", str(f.nan_adapter)), 1,
     ["nan_adapter/adapter_model.safetensors", "NaN"]),
]


def tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_script(script, argv):
    try:
        return SCRIPTS[script](argv)
    except SystemExit as e:  # argparse
        return e.code


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_by_name_before_anything_is_written(case, inputs, tmp_path, capsys):
    _, script, argv, code, says = case
    inputs.out = tmp_path / "out"
    before = tree(inputs.dir)
    assert run_script(script, argv(inputs)) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err  # one line, no traceback
    for text in says:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    assert not inputs.out.exists()  # no settings file, no lock, no output
    assert tree(inputs.dir) == before  # and no input touched


def test_the_table_covers_every_script():
    assert len(CASES) >= 40
    assert {script for _, script, *_ in CASES} == set(SCRIPTS)


def test_debug_switch_shows_the_traceback(inputs, tmp_path, monkeypatch):
    inputs.out = tmp_path / "out"
    monkeypatch.setenv("SSR_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="modle"):
        generate.main(swap(G(inputs), "--model", str(inputs.dir / "modle")))


def test_nq_answer_string_is_never_split_into_one_alias_per_character(inputs, tmp_path):
    # list("I do not know") would make 'i' an alias, and "contains" would accept nearly any answer
    with pytest.raises(ValueError, match=r"gsm8k.jsonl:1: field 'answer' must be a list of strings"):
        load_task(inputs.gsm8k, "nq")
    with pytest.raises(ValueError, match=r"mbpp.jsonl:1: field 'test_list' must be a list of strings"):
        load_task(inputs.mbpp_str)
    nq = jsonl(tmp_path / "nq.jsonl", [{"question": "what animal barks", "answer": ["a dog", "dog"]}])
    example = load_task(nq)[0]
    assert example.aliases == ["a dog", "dog"]
    assert not ssr.harness.judges.nq("I do not know, maybe it is a cat.", example.aliases).correct


def test_evaluate_refuses_predictions_made_with_other_settings(inputs, tmp_path, capsys):
    """evaluate.py killed before its first benchmark was written, then rerun on the same --out with another
    model, adapter or --max-new-tokens: the first run's predictions are never scored for the second."""
    other = tmp_path / "other_model"
    tiny_run_folder(other)
    make_checkpoint(other, "llama", seed=1, vocab_size=ssr.load_model(inputs.model).config.vocab_size)
    out = tmp_path / "r.json"
    argv = ["--model", str(inputs.model), "--tasks", f"gsm8k={inputs.gsm8k}", "--out", str(out),
            "--max-new-tokens", "4", "--limit", "3"]
    assert evaluate.main(argv) == 0
    predictions = tmp_path / "r.gsm8k.predictions.jsonl"
    assert len(read_records(predictions)) == 3
    out.unlink()  # as if killed after generating, before the result was written
    kept = predictions.read_bytes()
    for changed in (swap(argv, "--model", str(other)), argv + ["--adapter", str(inputs.adapter)],
                    swap(argv, "--max-new-tokens", "5"), swap(argv, "--limit", "2")):
        capsys.readouterr()
        assert evaluate.main(changed) == 1
        err = capsys.readouterr().err
        assert "holds results made with other settings" in err and str(out) in err
        assert not out.exists() and predictions.read_bytes() == kept
    assert evaluate.main(argv) == 0  # the same settings: the predictions are reused
    assert out.is_file() and predictions.read_bytes() == kept


def test_finished_training_run_refuses_other_hyperparameters(inputs, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--method", "sft", "--data", str(inputs.chat), "--model", str(inputs.model), "--out", str(run),
            "--epochs", "1", "--micro-batch", "4", "--grad-accum", "1"]
    assert train.main(argv) == 0
    adapter = tree(run / "adapter")
    for flag, value, shown in (("--epochs", "2", "epochs"), ("--lr", "0.001", "lr"), ("--seed", "3", "seed")):
        capsys.readouterr()
        changed = swap(argv, flag, value) if flag in argv else argv + [flag, value]
        assert train.main(changed) == 1
        captured = capsys.readouterr()
        assert "holds results made with other settings" in captured.err and f"'{shown}':" in captured.err
        assert "already trained" not in captured.out
        assert tree(run / "adapter") == adapter
    capsys.readouterr()
    assert train.main(argv) == 0 and "already trained" in capsys.readouterr().out


def test_train_takes_a_chat_template_for_a_model_without_one(inputs, tmp_path):
    argv = ["--method", "sft", "--data", str(inputs.chat), "--model", str(inputs.no_template), "--out",
            str(tmp_path / "run"), "--epochs", "1", "--micro-batch", "4", "--grad-accum", "1"]
    assert train.main(argv) == 1 and not (tmp_path / "run").exists()
    assert train.main(argv + ["--chat-template", "chatml"]) == 0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


def test_one_writer_per_output_and_no_stale_lock(tmp_path):
    out = tmp_path / "pred.jsonl"
    with hold_lock(out):
        with pytest.raises(FileExistsError, match=rf"{out} is being written by another process \(pid {os.getpid()}"):
            with hold_lock(out):
                pass
    with hold_lock(out):  # released when the holder is done
        pass


GATED = ("import os, sys, time\nimport ssr.sampling as s\ncomplete, calls = s.complete, [0]\n"
         "def gated(*a, **k):\n    calls[0] += 1\n"
         "    while calls[0] > int(os.environ['FREE']) and os.path.exists(os.environ['GATE']):\n"
         "        time.sleep(0.01)\n    return complete(*a, **k)\n"
         "s.complete = gated\nimport generate\nsys.exit(generate.main(sys.argv[1:]))")


def gated_generate(inputs, out, n):
    """generate.py, one example per batch, whose batches after the first $FREE wait while the file $GATE exists:
    a signal lands mid-run however fast or slow the machine is (the test waits for a condition, never a time)."""
    task = jsonl(inputs.dir / f"many{n}.jsonl", [GSM8K[i % len(GSM8K)] for i in range(n)])
    return [sys.executable, "-c", GATED, "--model", str(inputs.model), "--task-file", str(task), "--out", str(out),
            "--batch-size", "1", "--max-new-tokens", "4", "--device", "cpu", "--quiet"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def wait_for(condition, what: str, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_two_copies_on_one_out_then_a_kill_leaves_no_stale_lock(inputs, tmp_path):
    out, gate = tmp_path / "pred.jsonl", tmp_path / "gate"
    gate.touch()  # the holder writes one record, then waits: it cannot finish before the other is refused
    cmd = gated_generate(inputs, out, 30)
    env = dict(ENV, GATE=str(gate), FREE="1")
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    wait_for(lambda: any(p.poll() is not None for p in procs), "neither copy was refused")
    refused, holder = sorted(procs, key=lambda p: p.poll() is None)
    assert refused.returncode == 1 and holder.poll() is None  # one runs, the other is refused
    err = refused.stderr.read().decode()
    assert err.startswith("error: ") and err.count("\n") == 1 and "is being written by another process (pid" in err
    wait_for(lambda: out.is_file() and out.read_bytes().count(b"\n") >= 1, "the holder wrote nothing")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    for p in procs:
        p.stderr.close()
    assert generate.main(cmd[3:]) == 0  # the kill left no stale lock: the same command proceeds
    ids = [r["id"] for r in read_records(out)]
    assert len(ids) == len(set(ids)) == 30


def test_ctrl_c_says_what_was_kept_and_the_rerun_is_exact(inputs, tmp_path):
    straight, resumed, gate = tmp_path / "straight.jsonl", tmp_path / "resumed.jsonl", tmp_path / "gate"
    assert generate.main(gated_generate(inputs, straight, 10)[3:]) == 0  # never interrupted (in process: no gate)
    gate.touch()  # two batches go through, the third waits: SIGINT lands while it waits
    proc = subprocess.Popen(gated_generate(inputs, resumed, 10), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(ENV, GATE=str(gate), FREE="2"))
    wait_for(lambda: resumed.is_file() and resumed.read_bytes().count(b"\n") >= 2, "nothing written in time")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err == f"interrupted: 2 records kept in {resumed}; rerun the same command to continue\n"
    assert len(read_records(resumed)) == 2
    gate.unlink()
    subprocess.run(gated_generate(inputs, resumed, 10), env=dict(ENV, GATE=str(gate), FREE="0"), check=True,
                   timeout=300, capture_output=True)
    records = read_records(resumed)
    assert len(records) == 10 and {r["id"]: r for r in records} == {r["id"]: r for r in read_records(straight)}
