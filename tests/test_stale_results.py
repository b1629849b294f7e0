"""A cached result is tied to what it was made from, not to a path: a model or adapter retrained in place, a task
file edited between a run and its resume, other data under the same name, each is refused by name before a
stale score or a wrong join is printed; a failed write (a full disk) names the file and leaves no temporary file."""
import errno
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import evaluate
import generate
import judge
import ssr
import train
from ssr import lora
from ssr.checkpoint import atomic_dir
from ssr.harness import runfiles
from ssr.harness.runfiles import append_records, read_records, write_atomic
from test_bad_inputs import GSM8K, jsonl, swap
from test_trainer import RECORDS, tiny_run_folder


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_run_folder(tmp_path_factory.mktemp("stale") / "model")


def retrain_in_place(model, folder, seed):
    """Other LoRA weights of the same shapes written over an adapter folder: the same file names and sizes."""
    m = ssr.load_model(model)
    torch.manual_seed(seed)
    lora.apply_lora(m, r=4)
    for p in lora.lora_parameters(m):
        torch.nn.init.normal_(p, std=0.5)
    lora.save_adapter(m, folder)


def error_line(capsys) -> str:
    """The one error line (notes such as "no run.json beside the adapter" may come before it)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note: ")]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_an_adapter_retrained_in_place_is_not_scored_from_the_cache(model, tmp_path, capsys):
    shutil.copytree(model, tmp_path / "model")
    adapter = tmp_path / "adapter"
    retrain_in_place(model, adapter, seed=1)
    task = jsonl(tmp_path / "gsm8k.jsonl", GSM8K)
    argv = ["--model", str(tmp_path / "model"), "--adapter", str(adapter), "--tasks", f"sums={task}", "--out",
            str(tmp_path / "r.json"), "--max-new-tokens", "4"]
    assert evaluate.main(argv) == 0
    results = (tmp_path / "r.json").read_bytes()
    size = (adapter / "adapter_model.safetensors").stat().st_size
    retrain_in_place(model, adapter, seed=2)
    assert (adapter / "adapter_model.safetensors").stat().st_size == size  # the same size: only the bytes differ
    capsys.readouterr()
    assert evaluate.main(argv) == 1
    line = error_line(capsys)
    assert "holds results made with other settings (adapter_sha256:" in line and "r.json" in line
    assert (tmp_path / "r.json").read_bytes() == results
    # generate.py: the same rule
    out = tmp_path / "pred.jsonl"
    gen = ["--model", str(tmp_path / "model"), "--adapter", str(adapter), "--task-file", str(task), "--out", str(out),
           "--max-new-tokens", "4", "--quiet"]
    assert generate.main(gen) == 0
    retrain_in_place(model, adapter, seed=3)
    capsys.readouterr()
    assert generate.main(gen) == 1 and "adapter_sha256:" in error_line(capsys)


def test_other_data_under_the_same_name_is_not_scored_from_the_cache(model, tmp_path, capsys):
    first = jsonl(tmp_path / "a.jsonl", GSM8K)
    other = jsonl(tmp_path / "b.jsonl", GSM8K[::-1])  # the same questions in another order: other golds per id
    argv = ["--model", str(model), "--tasks", f"sums={first}", "--out", str(tmp_path / "r.json"), "--max-new-tokens",
            "4"]
    assert evaluate.main(argv) == 0
    capsys.readouterr()
    assert evaluate.main(swap(argv, "--tasks", f"sums={other}")) == 1
    assert "benchmark 'sums' was scored on other data" in error_line(capsys)
    assert evaluate.main(argv) == 0  # the same data: the finished score is reused


def test_a_task_file_edited_between_a_run_and_its_resume_is_refused(model, tmp_path, capsys):
    """ids of GSM8K lines are their positions: after an edit, old answers must not be joined to new questions."""
    task = jsonl(tmp_path / "t.jsonl", GSM8K)
    out = tmp_path / "pred.jsonl"
    argv = ["--model", str(model), "--task-file", str(task), "--out", str(out), "--max-new-tokens", "4", "--quiet"]
    assert generate.main(argv + ["--limit", "3"]) == 0
    kept = out.read_bytes()
    jsonl(task, [{"question": "what is 2 plus 2", "answer": "#### 4"}] + GSM8K[1:])  # line 1 replaced
    capsys.readouterr()
    assert generate.main(argv) == 1
    line = error_line(capsys)
    assert "the record of '0' (predict) was made from other input" in line and "prompt_text" in line
    assert out.read_bytes() == kept

    # judge.py: a verdict of another answer is not kept for the edited predictions
    predictions = jsonl(tmp_path / "p.jsonl", [{"id": str(i), "mode": "predict", "output": "The answer is 1."}
                                               for i in range(3)])
    verdicts = tmp_path / "v.jsonl"
    jargv = ["--task-file", str(task), "--predictions", str(predictions), "--out", str(verdicts)]
    assert judge.main(jargv) == 0
    jsonl(predictions, [{"id": str(i), "mode": "predict", "output": "The answer is 2."} for i in range(3)])
    capsys.readouterr()
    assert judge.main(jargv) == 1
    assert "the record of '0' (predict) was made from other input" in error_line(capsys)


def test_a_run_folder_refuses_a_model_or_data_changed_in_place(model, tmp_path, capsys):
    shutil.copytree(model, tmp_path / "model")
    data = jsonl(tmp_path / "chat.jsonl", RECORDS)
    argv = ["--method", "sft", "--data", str(data), "--model", str(tmp_path / "model"), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--micro-batch", "4", "--grad-accum", "1"]
    assert train.main(argv) == 0
    weights = tmp_path / "model" / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1  # "retrained" in place: same names, shapes and size
    save_file(tensors, weights)
    capsys.readouterr()
    assert train.main(argv) == 1 and "model_sha256:" in error_line(capsys)
    shutil.copy(model / "model.safetensors", weights)
    jsonl(data, RECORDS[::-1])
    capsys.readouterr()
    assert train.main(argv) == 1 and "data_sha256:" in error_line(capsys)
    jsonl(data, RECORDS)
    capsys.readouterr()
    assert train.main(argv) == 0 and "already trained" in capsys.readouterr().out


def test_a_hand_edited_results_file_is_named(model, tmp_path, capsys):
    task = jsonl(tmp_path / "t.jsonl", GSM8K)
    out = tmp_path / "r.json"
    argv = ["--model", str(model), "--tasks", f"sums={task}", "--out", str(out), "--max-new-tokens", "4"]
    assert evaluate.main(argv) == 0
    out.write_text(out.read_text()[:-20])  # a hand edit that broke it
    edited = out.read_bytes()
    capsys.readouterr()
    assert evaluate.main(argv) == 1
    line = error_line(capsys)
    assert f"{out}: not a valid JSON results file" in line
    assert out.read_bytes() == edited


def full_disk(path_part: str):
    """An `open` whose files raise ENOSPC on write when their path contains path_part."""
    real = open

    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    return lambda file, *a, **k: Full(real(file, *a, **k)) if path_part in str(file) else real(file, *a, **k)


def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")
    monkeypatch.setattr(runfiles, "open", full_disk("results.json"), raising=False)
    with pytest.raises(OSError, match=rf"{target}: could not be written \(No space left on device\)"):
        write_atomic(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]

    records = tmp_path / "pred.jsonl"
    monkeypatch.setattr(runfiles, "open", full_disk("pred.jsonl"), raising=False)
    with pytest.raises(OSError, match=rf"{records}: could not be appended to \(No space left on device\)"):
        append_records(records, [{"id": "1"}])
    monkeypatch.undo()
    assert read_records(records) == []

    # a folder written whole (checkpoint, adapter): torch.save on a full disk says only "basic_ios::clear"
    final = tmp_path / "checkpoint"
    final.mkdir()
    (final / "state.json").write_text("{}")
    with pytest.raises(OSError, match=rf"{final}: could not be written \(.*iostream error; \d+ MiB free"):
        with atomic_dir(final) as tmp:
            (tmp / "a").write_text("x")
            raise RuntimeError("basic_ios::clear: iostream error")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "pred.jsonl", "results.json"]
    assert (final / "state.json").read_text() == "{}"
