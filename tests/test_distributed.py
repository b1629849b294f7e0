"""torchrun: generate.py, evaluate.py and train.py on 2 CPU processes (gloo) give what one process gives; a rank
killed mid-training ends the job, and the same command resumes it; a step is normalised by the tokens of all ranks.

Each torchrun launch costs a few seconds of start-up, so the model is tiny and the launches are few: the training
run is the killed-and-resumed one, compared with an uninterrupted one-process run."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import evaluate
import generate
import judge
import ssr
import train
from conftest import ROOT
from ssr import lora, trainer
from ssr.harness.runfiles import read_records
from ssr.harness import distributed, training
from test_trainer import tiny_run_folder

QUESTIONS = [{"question": f"what is {a} plus {b}", "answer": f"{a} plus {b} is {a + b}\n#### {a + b}"}
             for a in range(3) for b in range(3)] + [{"question": "say hi", "answer": "hi\n#### 0"}]
ARC = [{"id": f"q{i}", "question": {"stem": f"what is {i} plus 1", "choices": [
    {"text": t, "label": label} for t, label in zip([f"{i} plus 1 is {i + 1}", "hi", "hi hi again"], "ABC")]},
        "answerKey": "A"} for i in range(3)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    tiny_run_folder(root / "model")
    (root / "sums.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    arc = root / "data" / "arc" / "ARC-Easy" / "ARC-Easy-Test.jsonl"
    arc.parent.mkdir(parents=True)
    arc.write_text("".join(json.dumps(q) + "\n" for q in ARC))
    return root


def torchrun(script, *args, wait=True, code=0):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", script, *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out = proc.communicate(timeout=180)[0]
    assert (proc.returncode == 0) == (code == 0), out
    return out


def test_generate_and_evaluate_equal_one_process(setup, tmp_path):
    model, sums = str(setup / "model"), str(setup / "sums.jsonl")
    common = ["--model", model, "--task-file", sums, "--max-new-tokens", "8", "--batch-size", "3", "--quiet"]
    assert generate.main(common + ["--out", str(tmp_path / "one.jsonl")]) == 0
    one = read_records(tmp_path / "one.jsonl")
    # as if an interrupted run (of 4 ranks) had left parts: what they hold is kept, a killed writer's half line not
    kept = [dict(r, output="kept") for r in one[2:5]]
    (tmp_path / "two.rank3.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept[:2]) + '{"id": "9", "mo')
    (tmp_path / "two.rank0.jsonl").write_text(json.dumps(kept[2]) + "\n")
    made_with = {"mode": "predict", "recipe": "project", "max_new_tokens": 8, "temperature": 0.0, "top_k": 0,
                 "top_p": 1.0, "seed": None, "stop": []}
    # parts carry the settings they were made with: parts of 100-token records are never merged into 8-token ones
    (tmp_path / "two.parts.json").write_text(json.dumps(dict(made_with, max_new_tokens=100)))
    refused = torchrun("generate.py", *common, "--out", str(tmp_path / "two.jsonl"), code=1)
    assert "two.rank0.jsonl, two.rank3.jsonl of an interrupted run were made with other settings " \
           "(max_new_tokens: 100 -> 8)" in refused and not (tmp_path / "two.jsonl").exists()
    (tmp_path / "two.parts.json").write_text(json.dumps(made_with))
    torchrun("generate.py", *common, "--out", str(tmp_path / "two.jsonl"))
    two = read_records(tmp_path / "two.jsonl")
    assert len(one) == len(QUESTIONS) and two == one[:2] + kept + one[5:]  # ids, outputs, order
    assert sorted(os.listdir(tmp_path)) == ["one.jsonl", "one.jsonl.lock", "one.settings.json", "two.jsonl",
                                            "two.jsonl.lock", "two.settings.json"]  # no part file is left

    common = ["--model", model, "--tasks", f"arc_easy,sums={sums}", "--data-dir", str(setup / "data"),
              "--max-new-tokens", "8", "--batch-size", "3", "--batch-tokens", "64"]
    assert evaluate.main(common + ["--out", str(tmp_path / "eval1.json")]) == 0
    torchrun("evaluate.py", *common, "--out", str(tmp_path / "eval2.json"))
    one, two = (json.loads((tmp_path / f"eval{n}.json").read_text()) for n in (1, 2))
    assert two == one and one["results"]["arc_easy"]["n"] == 3 and one["results"]["sums"]["n"] == len(QUESTIONS)
    predictions = [read_records(tmp_path / f"eval{n}.sums.predictions.jsonl") for n in (1, 2)]
    assert predictions[0] == predictions[1]
    # one process appends verdicts as its judging threads finish them: compare them by id
    verdicts = [sorted(read_records(tmp_path / f"eval{n}.sums.verdicts.jsonl"), key=lambda v: v["id"]) for n in (1, 2)]
    assert verdicts[0] == verdicts[1] and len(verdicts[0]) == len(QUESTIONS)


# steps after the fifth wait while the file "gate" exists, so that the kill lands mid-run however fast the machine
# is; every rank notes its pid so that the test can kill rank 1
SLOW_TRAIN = """import os, sys, time
open(os.path.join(sys.argv[1], "pid." + os.environ.get("RANK", "0")), "w").write(str(os.getpid()))
import ssr.trainer as t
step, calls = t.train_step, [0]
def gated(*a, **k):
    calls[0] += 1
    while calls[0] > 5 and os.path.exists(os.path.join(sys.argv[1], "gate")):
        time.sleep(0.01)
    return step(*a, **k)
t.train_step = gated
import train
sys.exit(train.main(sys.argv[2:]))
"""


def test_killed_rank_ends_the_job_and_the_rerun_ends_as_one_process(setup, tmp_path):
    """train.py --method ssr (generate, judge, targets, training) on 2 ranks, rank 1 killed after step 5, the
    same command rerun: the adapter and every step's loss equal a one-process run's. 3 micro-batches a step
    on 2 ranks: the ranks hold different numbers of supervised tokens."""
    args = ["--method", "ssr", "--task", "gsm8k", "--data", str(setup / "sums.jsonl"), "--model", str(setup / "model"),
            "--epochs", "4", "--micro-batch", "2", "--grad-accum", "3", "--save-every", "2", "--lora-dropout", "0",
            "--lora-modules", "q_proj,v_proj,down_proj", "--lr", "1e-2", "--max-new-tokens", "8", "--batch-size", "4"]
    assert train.main(args + ["--out", str(tmp_path / "one")]) == 0

    (tmp_path / "slow_train.py").write_text(SLOW_TRAIN)
    argv = [str(tmp_path / "slow_train.py"), str(tmp_path), *args, "--out", str(tmp_path / "two")]
    (tmp_path / "gate").touch()
    proc = torchrun(*argv, wait=False)
    metrics, deadline = tmp_path / "two" / "metrics.jsonl", time.monotonic() + 90
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 5):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    os.kill(int((tmp_path / "pid.1").read_text()), signal.SIGKILL)
    killed = time.monotonic()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode != 0 and time.monotonic() - killed < 60, out
    assert "Signal 9" in out or "SIGKILL" in out, out  # torchrun names the dead rank
    assert json.loads((tmp_path / "two" / "checkpoint" / "state.json").read_text())["world_size"] == 2

    (tmp_path / "gate").unlink()
    out = torchrun(*argv)  # the same command continues
    assert "resuming" in out and out.count("adapter:") == 1, out  # rank 0 alone prints
    a = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) == 12
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    one, two = (read_records(tmp_path / run / "metrics.jsonl") for run in ("one", "two"))
    assert [r["step"] for r in two] == list(range(1, 9)) and len(one) == 8
    assert all(abs(r["loss"] - s["loss"]) <= 1e-5 and r["tokens"] == s["tokens"] for r, s in zip(one, two))
    for name in ("predict.jsonl", "targets.jsonl"):
        assert read_records(tmp_path / "two" / name) == read_records(tmp_path / "one" / name), name
    assert not list((tmp_path / "two").glob("*.rank*"))  # the parts were merged and removed

    with pytest.raises(ValueError, match=r"written by 2 process\(es\) and this run has 1"):
        m = ssr.load_model(setup / "model")
        lora.apply_lora(m, r=8, alpha=16, targets=("q_proj", "v_proj", "down_proj"))
        training.load_checkpoint(tmp_path / "two" / "checkpoint", m, trainer.make_optimizer(m, trainer.TrainConfig()))


# ---------------------------------------------------------------------------------------------------------
# the normaliser of a step: one step on 2 gloo processes holding unequal shares, against one process


def batches():
    """Rank 0's micro-batch (2 rows, 9 supervised tokens), rank 1's (1 row, 2 supervised tokens)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 16, (3, 10), generator=g)  # the tiny vocabulary has 19 tokens
    a = trainer.Batch(ids[:2], torch.tensor([[0] * 5 + [1] * 5, [0] * 6 + [1] * 4]))
    b = trainer.Batch(ids[2:], torch.tensor([[0] * 8 + [1] * 2]))
    return a, b


def step(model_dir, mine):
    torch.manual_seed(0)
    model = lora.apply_lora(ssr.load_model(model_dir), r=4, targets=("q_proj", "v_proj"))
    opt = torch.optim.SGD(lora.lora_parameters(model))  # plain SGD: the update is the gradient, unrescaled
    stats = trainer.train_step(model, opt, mine, lr=1.0, max_grad_norm=0.0, world=distributed.Ranks())
    return stats, {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def _rank(r, model_dir, store, out):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=r, world_size=2)
    torch.save(step(model_dir, [batches()[r]]), f"{out}.{r}")
    dist.destroy_process_group()


def test_a_step_is_normalised_by_the_tokens_of_all_ranks(setup, tmp_path):
    model_dir = setup / "model"
    a, b = batches()
    assert int(a.loss_mask[:, 1:].sum()) == 9 and int(b.loss_mask[:, 1:].sum()) == 2
    mp.start_processes(_rank, args=(model_dir, tmp_path / "store", tmp_path / "out"), nprocs=2, start_method="spawn")
    stats, weights = step(model_dir, [a, b])  # one process, both micro-batches
    local, _ = step(model_dir, [a])  # what rank 0 alone would call its loss
    for r in (0, 1):
        s, w = torch.load(tmp_path / f"out.{r}", weights_only=False)
        assert s["tokens"] == 11 and abs(s["loss"] - stats["loss"]) <= 1e-6
        assert max((w[k] - weights[k]).abs().max().item() for k in weights) <= 1e-6
    assert abs(local["loss"] - stats["loss"]) > 1e-3  # normalising per rank would give another loss


# ---------------------------------------------------------------------------------------------------------
# LLM judging: the answers split among the ranks, each judged once, merged as one process would write them

JUDGE_RANK = """import os, sys
open(os.path.join(sys.argv[1], "pid." + os.environ.get("RANK", "0")), "w").write(str(os.getpid()))
import judge
sys.exit(judge.main(sys.argv[2:]))
"""


def test_llm_judging_under_torchrun_equals_one_process(setup, tmp_path):
    """judge.py --judge llm against a loopback endpoint on 2 ranks: every answer is asked once (not once per rank)
    and the verdicts equal one process's; with rank 1 killed mid-way (the endpoint holds its replies after 6, so
    the kill lands there however fast the machine is) the same command resumes to them too. train.py --method ssr
    --judge llm on 2 ranks: each answer judged once, the one-process verdicts and targets."""
    from test_llm_judge import ChatServer
    n = 20
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} + 1?", "answer": [str(i + 1)]})
                            + "\n" for i in range(n)))
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text("".join(json.dumps({"id": f"q{i}", "mode": "predict", "output": str(i + (i % 3 > 0))})
                                   + "\n" for i in range(n)))
    hold, release = [None], threading.Event()

    def answer(body):  # a deterministic judge of what it is shown; after `hold` replies it waits to be released
        if hold[0] is not None and len(server.requests) > hold[0]:
            release.wait(120)
        text = body["messages"][0]["content"]
        nq = "Reference answers (any one is right): " in text  # judge.py's NQ records; else train.py's sums
        said = text.split("Response: ")[1].split("\n")[0] if nq else text
        gold = text.split("Reference answers (any one is right): ")[1].split("\n")[0] if nq else ""
        word = "CORRECT" if said == gold or sum(map(ord, text)) % 3 == 0 else "INCORRECT"
        return 200, f"Comparing.\nVerdict: {word}"

    server = ChatServer(answer)
    common = ["--task-file", str(task), "--predictions", str(predictions), "--judge", "llm", "--judge-url",
              server.url, "--judge-model", "m"]
    by_id = lambda path: {v["id"]: v for v in read_records(path)}  # noqa: E731
    try:
        assert judge.main(common + ["--out", str(tmp_path / "one.jsonl")]) == 0
        one = by_id(tmp_path / "one.jsonl")
        assert len(one) == n and len(server.requests) == n

        server.requests.clear()
        torchrun("judge.py", *common, "--out", str(tmp_path / "two.jsonl"))
        assert len(server.requests) == n  # every answer asked once, not once per rank
        two = read_records(tmp_path / "two.jsonl")
        assert [v["id"] for v in two] == [f"q{i}" for i in range(n)]  # merged in the records' order
        assert by_id(tmp_path / "two.jsonl") == one

        # rank 1 killed while the endpoint holds the replies after the sixth; the same command resumes
        server.requests.clear()
        hold[0] = 6
        (tmp_path / "judge_rank.py").write_text(JUDGE_RANK)
        argv = [str(tmp_path / "judge_rank.py"), str(tmp_path), *common, "--out", str(tmp_path / "three.jsonl")]
        proc = torchrun(*argv, wait=False)
        parts = lambda: sum(p.read_text().count("\n") for p in tmp_path.glob("three.rank*.jsonl"))  # noqa: E731
        deadline = time.monotonic() + 120
        while parts() < 6:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.02)
        os.kill(int((tmp_path / "pid.1").read_text()), signal.SIGKILL)
        out = proc.communicate(timeout=60)[0]
        assert proc.returncode != 0, out
        release.set()
        assert parts() == 6 and not (tmp_path / "three.jsonl").exists()
        asked = len(server.requests)
        torchrun(*argv)
        assert by_id(tmp_path / "three.jsonl") == one and len(read_records(tmp_path / "three.jsonl")) == n
        assert len(server.requests) - asked <= n - 6  # what the parts held is not asked again
        assert not list(tmp_path.glob("three.rank*")) and not (tmp_path / "three.parts.json").exists()

        # train.py: the targets come from the merged verdicts, the same on every rank and as in one process
        hold[0] = None
        args = ["--method", "ssr", "--task", "gsm8k", "--data", str(setup / "sums.jsonl"), "--model",
                str(setup / "model"), "--epochs", "1", "--max-new-tokens", "8", "--batch-size", "4", "--judge", "llm",
                "--judge-url", server.url, "--judge-model", "m", "--keep-answer-only"]
        server.requests.clear()
        assert train.main(args + ["--out", str(tmp_path / "run1")]) == 0
        assert len(server.requests) == len(QUESTIONS)
        server.requests.clear()
        torchrun("train.py", *args, "--out", str(tmp_path / "run2"))
        assert len(server.requests) == len(QUESTIONS)  # not once per rank
    finally:
        release.set()
        server.close()
    for name in ("predict.jsonl", "targets.jsonl"):
        assert read_records(tmp_path / "run2" / name) == read_records(tmp_path / "run1" / name), name
    assert by_id(tmp_path / "run2" / "predict.verdicts.jsonl") == by_id(tmp_path / "run1" / "predict.verdicts.jsonl")
