"""Multiple-choice scoring against transformers, and the benchmark loaders on the real files."""
import json
import math

import pytest
import torch

import ssr
from ssr.harness import evaluation as benchmarks
from ssr.harness.evaluation import loglikelihoods, score_questions, split_tokens


@pytest.fixture(scope="module")
def stories(shared):
    folder = shared / "models" / "stories260K" / "hf"
    return folder, ssr.load_model(folder), ssr.load_tokenizer(folder)


def test_loglikelihood_equals_transformers(stories):
    transformers = pytest.importorskip("transformers")
    folder, model, tok = stories
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    pairs = [("Once upon a time, there was a", " little girl"), ("Lily saw a big", " red ball."),
             ("The cat", " sat on the mat and looked at the sky for a long time."), ("Tom", " ran")]
    requests = [split_tokens(tok, c, x) for c, x in pairs]
    ours = loglikelihoods(model, requests, batch_tokens=40, progress=False)  # several batches, right padded
    for (ctx, cont), score in zip(requests, ours):
        with torch.no_grad():
            logits = hf(torch.tensor([ctx + cont])).logits[0]
        ref = torch.log_softmax(logits.float(), -1)[len(ctx) - 1:-1].gather(-1, torch.tensor(cont)[:, None]).sum()
        assert abs(score - ref.item()) <= 1e-4
    assert all(math.isfinite(s) and s < 0 for s in ours)


def test_split_tokens_keeps_the_whole_text_encoding(stories):
    _, _, tok = stories
    ctx, cont = split_tokens(tok, "Question: what is red?\nAnswer:", " a ball")
    assert ctx[0] == tok.bos_id
    assert ctx + cont == [tok.bos_id] + tok.encode("Question: what is red?\nAnswer: a ball")
    assert tok.decode(cont) == "a ball"


def test_score_questions_prefers_the_likely_choice(stories):
    _, model, tok = stories
    q = benchmarks.MCQuestion("q", "Once upon a time, there was a little", ["girl", "xylophone zebra"], [1, 0])
    wrong = benchmarks.MCQuestion("w", "Once upon a time, there was a little", ["girl", "xylophone zebra"], [0, 1])
    result = score_questions(model, tok, [q, wrong], progress=False)
    assert result["acc"] == 0.5 and result["n"] == 2
    assert 0.0 < result["mc2"] < 1.0


def test_loaders_read_the_official_files(shared):
    data = shared / "data"
    mmlu = benchmarks.load_mmlu(data, limit=50)
    assert len(mmlu) == 50 and all(sum(q.labels) == 1 and q.choices == ["A", "B", "C", "D"] for q in mmlu)
    assert len({q.id.split("/")[0] for q in mmlu}) > 10  # the sample spans subjects
    assert mmlu[0].context.startswith("The following are multiple choice questions (with answers) about ")
    assert mmlu[0].context.endswith("\nAnswer:")
    assert len(benchmarks.load_mmlu(data)) == 14042
    easy, challenge = benchmarks.LOADERS["arc_easy"](data), benchmarks.LOADERS["arc_challenge"](data)
    assert (len(easy), len(challenge)) == (2376, 1172)  # the official Test splits, as the papers and lm-eval score
    assert easy[0].id == json.loads((data / "arc" / "ARC-Easy" / "ARC-Easy-Test.jsonl").open().readline())["id"]
    easy_dev, challenge_dev = benchmarks.LOADERS["arc_easy_dev"](data), benchmarks.LOADERS["arc_challenge_dev"](data)
    assert (len(easy_dev), len(challenge_dev)) == (570, 299)  # Dev, only when asked for by name
    assert all(sum(q.labels) == 1 and len(q.choices) == len(q.labels) for q in easy + challenge + easy_dev)
    hellaswag = benchmarks.LOADERS["hellaswag"](data)
    assert len(hellaswag) == 10042 and all(len(q.choices) == 4 and sum(q.labels) == 1 for q in hellaswag)
    mc1, mc2 = benchmarks.LOADERS["truthfulqa_mc1"](data), benchmarks.LOADERS["truthfulqa_mc2"](data)
    assert len(mc1) == len(mc2) == 817
    assert all(q.labels[0] == 1 and sum(q.labels) == 1 for q in mc1)
    assert all(sum(q.labels) >= 1 for q in mc2) and mc1[0].context.endswith("\nA:")


def test_hellaswag_format(tmp_path):
    row = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
           "ctx_b": "then", "ctx": "...", "endings": [" a [title] b", "c", "d", "e"], "label": "2",
           "split": "val", "split_type": "indomain", "source_id": "x"}
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val.jsonl").write_text(json.dumps(row) + "\n")
    (q,) = benchmarks.load_hellaswag(tmp_path)
    assert q.context == "Removing ice from car: Then, the man writes over the snow. Then"
    assert q.choices[0] == "a. b" and q.labels == [0, 0, 1, 0]


def test_missing_benchmark_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="mmlu"):
        benchmarks.load_mmlu(tmp_path)


def test_arc_without_its_test_file_is_an_error_not_a_dev_score(shared, tmp_path):
    (tmp_path / "arc" / "ARC-Easy").mkdir(parents=True)
    dev = shared / "data" / "arc" / "ARC-Easy" / "ARC-Easy-Dev.jsonl"
    (tmp_path / "arc" / "ARC-Easy" / dev.name).write_bytes(dev.read_bytes())
    with pytest.raises(FileNotFoundError, match="no ARC-Easy-Test.jsonl"):
        benchmarks.LOADERS["arc_easy"](tmp_path)
    assert len(benchmarks.LOADERS["arc_easy_dev"](tmp_path)) == 570
