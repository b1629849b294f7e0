"""The training loop: batching, schedule, memorisation, NaN stop, and a killed run resumed to the same adapter."""
import json
import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

import ssr
from hf_oracle import make_checkpoint
from ssr import lora, trainer
from ssr.harness import training
from ssr.harness.training import train
from ssr.trainer import Sample, TrainConfig, epoch_batches, lr_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
RECORDS = [{"prompt": f"what is {a} plus {b}", "response": f"{a} plus {b} is {a + b}"}
           for a in range(3) for b in range(3)]
RECORDS += [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"},
                          {"role": "assistant", "content": "hi"}, {"role": "user", "content": "again"},
                          {"role": "assistant", "content": "hi hi"}]}] * 3


def tiny_run_folder(folder):
    """A tiny random llama checkpoint with a word-level ChatML tokenizer over RECORDS' words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    texts = [t for r in RECORDS for t in ([r["prompt"], r["response"]] if "prompt" in r else
                                          [m["content"] for m in r["messages"]])]
    words = sorted({w for t in texts for w in t.split()} | {"user", "assistant", "system", "[UNK]"})
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    make_checkpoint(folder, "llama", vocab_size=tk.get_vocab_size())
    tk.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>",
                                                              "bos_token": None}))
    return folder


def test_batches_respect_budget_and_cover_the_epoch():
    lengths = [5, 40, 17, 8, 33, 3, 21, 64, 12, 9, 50, 27] * 5
    batches = epoch_batches(lengths, batch_tokens=100, max_seqs=4, seed=1, epoch=2)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(len(b) <= 4 and len(b) * max(lengths[i] for i in b) <= 100 for b in batches)
    assert batches == epoch_batches(lengths, batch_tokens=100, max_seqs=4, seed=1, epoch=2)  # a function of the seed
    assert batches != epoch_batches(lengths, batch_tokens=100, max_seqs=4, seed=1, epoch=3)
    with pytest.raises(ValueError, match="batch_tokens"):
        epoch_batches([10, 200], batch_tokens=100, max_seqs=4, seed=0, epoch=0)


def test_warmup_then_cosine():
    cfg = TrainConfig(lr=1.0, warmup=0.1, min_lr_ratio=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[:10] == sorted(lrs[:10]) and lrs[9] < 1.0 and lrs[10] == 1.0
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and 0.1 < lrs[-1] < 0.11


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    # hidden 256, not 64: behind the final norm a frozen random head bounds the logits, and at width 64
    # no adapter can push a token's probability near 1 (the loss stalls near 0.6)
    make_checkpoint(folder, "llama", hidden_size=256, intermediate_size=384)
    return folder


def memorise_samples():
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(8):
        ids = torch.randint(0, 128, (12,), generator=g).tolist()
        out.append(Sample(ids, [0] * 6 + [1] * 6))
    return out


def test_optimizer_gets_only_lora_parameters(tiny):
    model = lora.apply_lora(ssr.load_model(tiny), r=4, targets=("v_proj", "up_proj"))
    opt = trainer.make_optimizer(model, TrainConfig())
    handed = {id(p) for group in opt.param_groups for p in group["params"]}
    assert handed == {id(p) for p in lora.lora_parameters(model)}
    assert handed == {id(p) for p in model.parameters() if p.requires_grad}


def test_memorises_eight_examples(tiny, tmp_path):
    torch.manual_seed(0)
    model = lora.apply_lora(ssr.load_model(tiny), r=8, alpha=16, targets=lora.MODULES)
    cfg = TrainConfig(epochs=40, lr=1e-2, warmup=0.05, micro_batch=8, grad_accum=1, save_every=0)
    history = train(model, memorise_samples(), cfg, tmp_path, progress=False)
    assert history[-1]["loss"] < 0.05, [round(h["loss"], 3) for h in history[::10]]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 40
    assert {"step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm"} <= set(json.loads(lines[0]))


def test_nan_loss_stops_and_keeps_the_last_checkpoint(tiny, tmp_path, monkeypatch):
    calls = []

    def poisoned(*args):
        calls.append(1)
        loss = trainer_loss(*args)
        return loss * float("nan") if len(calls) == 3 else loss

    trainer_loss = trainer.loss
    monkeypatch.setattr(trainer, "loss", poisoned)
    model = lora.apply_lora(ssr.load_model(tiny), r=4)
    cfg = TrainConfig(epochs=1, micro_batch=2, grad_accum=1, save_every=1)
    with pytest.raises(FloatingPointError, match=r"step 3: the loss is nan.*checkpoint.*\(step 2\)"):
        train(model, memorise_samples(), cfg, tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["step"] == 2
    assert not (tmp_path / "adapter").exists()


def test_resume_refuses_other_settings_or_data(tiny, tmp_path):
    cfg = TrainConfig(epochs=1, micro_batch=4, grad_accum=1, save_every=1)
    train(lora.apply_lora(ssr.load_model(tiny), r=4), memorise_samples(), cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.0001 -> 0.001\)"):
        train(lora.apply_lora(ssr.load_model(tiny), r=4), memorise_samples(), replace(cfg, lr=1e-3), tmp_path,
              resume=True, progress=False)
    with pytest.raises(ValueError, match="data_fingerprint"):
        train(lora.apply_lora(ssr.load_model(tiny), r=4), memorise_samples()[:7], cfg, tmp_path, resume=True,
              progress=False)


def train_args(folder, data, out, *extra):
    return ["--method", "sft", "--data", str(data), "--model", str(folder), "--out", str(out), "--epochs", "3",
            "--micro-batch", "2", "--grad-accum", "2", "--save-every", "2", "--lora-dropout", "0.1",
            "--lora-modules", "q_proj,v_proj,down_proj", "--lr", "1e-2", *extra]


# train.py whose steps after the fifth wait while the file $GATE exists: the kill lands after step 5 however
# slow or fast the machine is (a condition, not a duration)
GATED_STEPS = ("import os, sys, time\nimport ssr.trainer as t\nstep, calls = t.train_step, [0]\n"
               "def gated(*a, **k):\n    calls[0] += 1\n"
               "    while calls[0] > 5 and os.path.exists(os.environ['GATE']):\n        time.sleep(0.01)\n"
               "    return step(*a, **k)\n"
               "t.train_step = gated\nimport train\nsys.exit(train.main(sys.argv[1:]))")


def test_killed_run_resumes_to_the_same_adapter(tmp_path, capsys):
    """train.py killed by SIGKILL from outside right after step 5 (last checkpoint: step 4), then resumed, ends
    where a run that never stopped ends. LoRA dropout is on, so the RNG state must be restored too."""
    import train as train_py
    folder = tiny_run_folder(tmp_path / "model")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))

    assert train_py.main(train_args(folder, data, tmp_path / "straight", "--save-merged")) == 0
    assert (tmp_path / "straight" / "merged" / "model.safetensors").is_file()
    # step 6 waits at the gate, so the kill lands between step 5 and step 6's checkpoint
    gate = tmp_path / "gate"
    gate.touch()
    proc = subprocess.Popen([sys.executable, "-c", GATED_STEPS, *train_args(folder, data, tmp_path / "resumed")],
                            env=dict(os.environ, PYTHONPATH=ROOT, GATE=str(gate)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    metrics, deadline = tmp_path / "resumed" / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    proc.stderr.close()
    assert json.loads((tmp_path / "resumed" / "checkpoint" / "state.json").read_text())["step"] == 4
    assert train_py.main(train_args(folder, data, tmp_path / "resumed")) == 0  # the same command continues
    assert "resuming" in capsys.readouterr().out
    assert train_py.main(train_args(folder, data, tmp_path / "resumed", "--limit", "3")) == 1  # not another run
    assert "other settings (limit: None -> 3; data_sha256: " in capsys.readouterr().err  # fewer examples used

    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "resumed" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 12
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))  # step 5 logged once, not twice
    config = json.loads((tmp_path / "straight" / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "v_proj", "down_proj"] and config["r"] == 8


def test_a_run_refuses_to_continue_with_another_loss(tiny, tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=1, micro_batch=4, grad_accum=1, save_every=1)
    train(lora.apply_lora(ssr.load_model(tiny), r=4), memorise_samples(), cfg, tmp_path, progress=False)
    default = trainer.loss

    def halved(model, batch, n_tokens):
        return 0.5 * default(model, batch, n_tokens)

    monkeypatch.setattr(trainer, "loss", halved)
    assert training.loss_identity() != json.loads((tmp_path / "train.json").read_text())["loss"]
    with pytest.raises(ValueError, match=r"other settings \(loss: 'ssr.trainer.loss"):
        train(lora.apply_lora(ssr.load_model(tiny), r=4), memorise_samples(), cfg, tmp_path, resume=True,
              progress=False)
