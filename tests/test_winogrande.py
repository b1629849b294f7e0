"""Winogrande as lm-evaluation-harness scores it (lm_eval/tasks/winogrande: preprocess_winogrande.py and
default.yaml, multiple_inputs): the context of option k is the sentence up to the blank with option k in it,
the continuation (same for both) is " " + the rest of the sentence after the blank, stripped; acc is whether
the option with the higher log-likelihood of the continuation is the answer. Checked on the real dev set."""
import json

import pytest
import torch

import evaluate
import ssr
from ssr.harness import evaluation
from ssr.harness.evaluation import load_winogrande, score_questions, split_tokens


def lm_eval_requests(row):
    """The (context, continuation) pairs lm-eval builds for one Winogrande record, written from its definition."""
    blank = row["sentence"].index("_")
    target = row["sentence"][blank + 1:].strip()
    return [(row["sentence"][:blank] + row["option1"], " " + target),
            (row["sentence"][:blank] + row["option2"], " " + target)], {"1": 0, "2": 1}[row["answer"]]


def test_loader_builds_lm_evals_requests_on_the_dev_set(shared):
    rows = [json.loads(line) for line in (shared / "data" / "winogrande" / "dev.jsonl").read_text().splitlines()]
    questions = load_winogrande(shared / "data")
    assert len(questions) == len(rows) == 1267
    for q, row in zip(questions, rows):
        requests, gold = lm_eval_requests(row)
        assert q.id == row["qID"] and q.requests() == requests and q.labels[gold] == 1 and sum(q.labels) == 1
    assert questions[0].requests() == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                                       ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert len(load_winogrande(shared / "data", limit=10)) == 10


def test_scores_equal_transformers_on_real_items(shared):
    transformers = pytest.importorskip("transformers")
    folder = shared / "models" / "stories260K" / "hf"
    model, tok = ssr.load_model(folder), ssr.load_tokenizer(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = [json.loads(line) for line in (shared / "data" / "winogrande" / "dev.jsonl").read_text().splitlines()[:12]]
    correct = 0
    for row in rows:
        requests, gold = lm_eval_requests(row)
        lls = []
        for context, continuation in requests:
            ctx, cont = split_tokens(tok, context, continuation)  # lm-eval's split: context ids, the rest of the whole
            with torch.no_grad():
                logp = torch.log_softmax(hf(torch.tensor([ctx + cont])).logits[0].float(), -1)
            lls.append(logp[len(ctx) - 1:-1].gather(-1, torch.tensor(cont)[:, None]).sum().item())
        correct += int(max(range(2), key=lls.__getitem__) == gold)
    questions = load_winogrande(shared / "data")[:12]
    assert score_questions(model, tok, questions, progress=False)["acc"] == pytest.approx(correct / 12)
    assert evaluation.PRIMARY["winogrande"] == "acc"


def test_evaluate_scores_winogrande_and_paper_sets_use_the_papers_metrics(shared, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = ["--model", str(shared / "models" / "stories260K" / "hf"), "--tasks", "winogrande", "--data-dir",
            str(shared / "data"), "--limit", "8", "--out", str(out)]
    assert evaluate.main(argv) == 0
    result = json.loads(out.read_text())["results"]["winogrande"]
    assert result["n"] == 8 and result["kind"] == "retention" and 0.0 <= result["acc"] <= 1.0
    assert "| winogrande" in capsys.readouterr().out
    # the paper sets: SDFT reads lm-eval's acc (not acc_norm); SSR counts GSM8K as a retention benchmark
    assert evaluate.parse_tasks("sdft-paper", shared / "data", "sdft").keys() == set(evaluation.PAPERS["sdft-paper"].tasks)
    sdft = evaluation.paper_labels(evaluation.PAPERS["sdft-paper"])
    assert sdft["hellaswag"] == {"kind": "retention", "metric": "acc"} and sdft["gsm8k"]["kind"] == "target"
    assert evaluation.paper_labels(evaluation.PAPERS["ssr-paper"])["gsm8k"]["kind"] == "retention"
    results = {"hellaswag": {"acc": 0.4, "acc_norm": 0.6, "n": 8, "metric": "acc"}}
    assert evaluation.primary_score("hellaswag", results["hellaswag"]) == 0.4
    table = evaluate.results_table(results, evaluation.PAPERS["sdft-paper"])
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table.splitlines()
            if line.startswith("| ")}
    assert rows["hellaswag"] == ["acc", "40.0", "8", "not available here"]
    assert rows["gsm8k"][-1].startswith("SDFT 34.4, SFT 31.9 (")


def test_the_ssr_and_s3ft_paper_sets_read_passages_and_quote_the_papers(shared):
    s3ft, ssr_set = evaluation.PAPERS["s3ft-paper"], evaluation.PAPERS["ssr-paper"]
    assert "hellaswag" in s3ft.tasks and "nq_rc" in s3ft.targets and "nq" not in s3ft.tasks  # NQ with passages
    assert ssr_set.targets == ["nq_rc_unanswerable"] and "hellaswag" in ssr_set.tasks
    tasks = evaluate.parse_tasks("s3ft-paper,ssr-paper", shared / "data")
    assert tasks["nq_rc"] == ("target", shared / "data" / "nq_rc" / "nq-open-oracle.jsonl.gz")
    # the papers' own words, with where they are
    assert "up to 4.4" in s3ft.reported["average drop"] and s3ft.reported["average drop"].endswith("(abstract)")
    assert "up to 16.7%" in ssr_set.reported["average drop"] and "close to 2% drop" in ssr_set.reported["average drop"]
    # evaluation scores nq_rc's test questions only, with their unanswerable pairs for SSR's set
    examples = evaluation.target_examples("nq_rc_unanswerable", tasks["nq_rc_unanswerable"][1])
    assert len(examples) == 1068 and sum(not e.aliases for e in examples) == 534
    assert len(evaluation.target_examples("nq_rc", tasks["nq_rc"][1])) == 534
