"""The grounded QA task (squad2): loading SQuAD 2.0's official JSON and the plain JSONL form, its prompt, its rule
judge, SSR's metrics (token recall against SQuAD's official normalisation, decline rate), and SSR with an LLM
judge through train.py (a tiny random model here; the real default model judging itself is the slow test)."""
import collections
import json
import re
import shutil
import string

import pytest

import train
from hf_oracle import make_checkpoint
from ssr.harness import judges
from ssr.harness.evaluation import grounded_qa_scores, squad_tokens, token_recall
from ssr.harness.tasks import UNANSWERABLE, build_prompt, detect_task, gold_response, load_task

# ---------------------------------------------------------------------------------------------------------
# the oracle: SQuAD 2.0's official evaluate-v2.0.py, its normalize_answer / get_tokens and the overlap count of
# its compute_f1, written out as the script has them (recall = num_same / len(gold_toks); the script returns
# int(gold_toks == pred_toks) when either side is empty)


def official_normalize_answer(s):
    def remove_articles(text):
        regex = re.compile(r'\b(a|an|the)\b', re.UNICODE)
        return re.sub(regex, ' ', text)

    def white_space_fix(text):
        return ' '.join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return ''.join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_get_tokens(s):
    if not s:
        return []
    return official_normalize_answer(s).split()


def official_recall(a_gold, a_pred):
    gold_toks, pred_toks = official_get_tokens(a_gold), official_get_tokens(a_pred)
    num_same = sum((collections.Counter(gold_toks) & collections.Counter(pred_toks)).values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)
    return 1.0 * num_same / len(gold_toks)


def official_best_recall(golds, pred):  # the script's answer filter and max over gold answers
    golds = [a for a in golds if official_normalize_answer(a)] or [""]
    return max(official_recall(a, pred) for a in golds)


# (response, gold answers, expected recall)
RECALL_CASES = [
    ("France", ["France"], 1.0),
    ("Normandy is located in France.", ["France"], 1.0),  # punctuation
    ("FRANCE", ["france"], 1.0),  # case
    ("It was the Normans.", ["Normans"], 1.0),
    ("Normans", ["The Normans"], 1.0),  # articles in the gold
    ("an apple a day", ["the apple"], 1.0),
    ("in the 10th century", ["10th and 11th centuries"], 0.25),  # "10th" of 4 tokens
    ("in the 10th century", ["10th and 11th centuries", "the first half of the 10th century", "10th"], 1.0),
    ("first half of it", ["the first half of the 10th century"], 0.6),  # first half of 10th century: 3 of 5
    ("Denmark and Norway", ["Denmark, Iceland and Norway"], 0.75),  # punctuation between tokens
    ("Rollo, Rollo!", ["Rollo Rollo Rollo"], 2 / 3),  # counted with multiplicity
    ("William-the-Conqueror", ["William the Conqueror"], 0.0),  # hyphens are removed, not spaces: one token
    ("Williamthe Conqueror", ["William the Conqueror"], 0.5),
    ("$1,000", ["1000"], 1.0),
    ("São Paulo", ["Sao Paulo"], 0.5),  # the official script keeps accents
    ("Paris – France", ["Paris—France"], 0.0),  # nor does it drop Unicode dashes
    ("", ["France"], 0.0),
    ("The passages do not answer the question.", ["France"], 0.0),
    ("anything", ["the", "France"], 0.0),  # a gold that normalises to nothing is left out
    ("", ["a", "the"], 1.0),  # none left: only an empty response scores, as in the script
    ("something", ["a", "the"], 0.0),
]


@pytest.mark.parametrize("response,golds,expected", RECALL_CASES)
def test_token_recall_equals_squad_official_counting(response, golds, expected):
    assert token_recall(response, golds) == pytest.approx(expected)
    assert token_recall(response, golds) == pytest.approx(official_best_recall(golds, response))
    for text in [response, *golds]:
        assert squad_tokens(text) == official_get_tokens(text)


def test_squad_tokens_on_every_answer_of_the_shared_sample(shared):
    data = json.loads((shared / "data" / "squad2" / "dev-v2.0.subset.json").read_text())
    texts = [qa["question"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]
    texts += [x["text"] for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]
              for x in qa["answers"] + qa.get("plausible_answers", [])]
    assert len(texts) > 15000
    assert all(squad_tokens(t) == official_get_tokens(t) for t in texts)


# ---------------------------------------------------------------------------------------------------------
# loading and the prompt


def test_loads_the_official_json(shared):
    examples = load_task(shared / "data" / "squad2" / "dev-v2.0.subset.json")
    assert len(examples) == 6576 and len({e.id for e in examples}) == 6576  # the README's counts
    assert sum(not e.aliases for e in examples) == 3376
    first, impossible = examples[0], examples[5]
    assert (first.id, first.task, first.question, first.gold) == ("56ddde6b9a695914005b9628", "squad2",
                                                                  "In what country is Normandy located?", "France")
    assert first.aliases == ["France"] * 4 and first.documents[0].startswith("The Normans (Norman: Nourmands;")
    assert impossible.aliases == [] and impossible.gold == UNANSWERABLE == gold_response(impossible)
    assert [e.id for e in load_task(shared / "data" / "squad2" / "dev-v2.0.subset.json", limit=3)] == \
        [e.id for e in examples[:3]]
    with pytest.raises(ValueError, match="read as SQuAD 2.0's official layout, not as 'gsm8k'"):
        load_task(shared / "data" / "squad2" / "dev-v2.0.subset.json", "gsm8k")


def test_loads_the_plain_jsonl_form(tmp_path):
    path = tmp_path / "grounded.jsonl"
    rows = [{"id": "d1", "documents": ["Doc one says the sky is blue.", "Doc two is about grass."],
             "question": "What colour is the sky?", "answers": ["blue"]},
            {"id": "d2", "context": "Only about grass.", "question": "How old is the moon?", "answers": []}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert detect_task(rows[0]) == detect_task(rows[1]) == "squad2"
    one, two = load_task(path)
    assert one.documents == rows[0]["documents"] and one.gold == "blue" and one.aliases == ["blue"]
    assert two.documents == ["Only about grass."] and two.gold == UNANSWERABLE and two.aliases == []
    text = build_prompt(one, "predict").messages[-1]["content"]
    # the passages come before the question, and the prompt gives the exact sentence to decline with
    assert text.index("Passage 1:\nDoc one") < text.index("Passage 2:\nDoc two") < text.index("Question: What colour")
    assert f'"{UNANSWERABLE}"' in text
    assert "Passage:\nOnly about grass." in build_prompt(two, "predict").messages[-1]["content"]
    path.write_text(json.dumps({"id": "x", "documents": [], "question": "q", "answers": []}) + "\n")
    with pytest.raises(ValueError, match=r"grounded.jsonl:1: 'documents' must be a non-empty list"):
        load_task(path)


# ---------------------------------------------------------------------------------------------------------
# the rule judge and the metrics on canned outputs


def test_rule_judge_and_decline_rate_on_canned_outputs(tmp_path):
    path = tmp_path / "g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a1", "context": "c", "question": "q1", "answers": ["France"]},
        {"id": "a2", "context": "c", "question": "q2", "answers": ["10th and 11th centuries", "10th century"]},
        {"id": "u1", "context": "c", "question": "q3", "answers": []},
        {"id": "u2", "context": "c", "question": "q4", "answers": []},
        {"id": "u3", "context": "c", "question": "q5", "answers": []},
        {"id": "u4", "context": "c", "question": "q6", "answers": []}]))
    examples = load_task(path)
    outputs = ["It is in France.",
               "the passages do not answer the question",  # declines an answerable question
               "The passages do not answer the question.",
               "THE PASSAGES DO NOT ANSWER THE QUESTION",  # case and punctuation aside, it is the sentence
               "I'm sorry, I cannot answer this.",  # a decline in the model's own words (ssr/harness/declines.py)
               "It was Rollo."]
    verdicts = [judges.squad2(o, e.aliases) for o, e in zip(outputs, examples)]
    assert [(v.correct, v.kind) for v in verdicts] == [
        (True, "match"), (False, "declined"), (True, "declined"), (True, "declined"), (True, "declined"),
        (False, "answered")]
    assert verdicts[4].reason == "declined (I cannot answer)"
    scores = grounded_qa_scores(examples, outputs, [v.correct for v in verdicts])
    assert scores == {"answerable_recall": 0.5, "answerable_acc": 0.5, "answerable_decline_rate": 0.5,
                      "answerable_decline_rate_exact": 0.5, "unanswerable_rate": 0.75,
                      "unanswerable_rate_exact": 0.5, "unanswerable_acc": 0.75,
                      "recall_or_declined": pytest.approx((1 + 0 + 1 + 1 + 1 + 0) / 6),
                      "n_answerable": 2, "n_unanswerable": 4}
    # the LLM judge's verdicts are what the accuracies count; recall and decline rate do not depend on them
    assert grounded_qa_scores(examples, outputs, [True] * 6)["answerable_acc"] == 1.0
    assert grounded_qa_scores(examples, outputs, [True] * 6)["unanswerable_rate"] == 0.75


@pytest.mark.parametrize("output,answers,correct", [
    ("The passage does not contain the answer to the question.", [], True),  # the model's own words
    ("The passage does not contain the answer to the question.", ["France"], False),
    ("The answer is 1974. The passages do not answer the question.", [], False),  # an answer, then the sentence
    ("It is France. The passages do not answer the question.", ["France"], False),  # both answers and declines
    ("The passage doesn't say exactly, but it was around 1850.", [], False),  # a hedge that answers
    ("The passage doesn't say exactly, but it was around 1850.", ["1850"], True),  # not a decline: the answer
    ("France, not Italy.", ["France"], True),
])
def test_the_judge_reads_declines_by_meaning(output, answers, correct):
    assert judges.squad2(output, answers).correct is correct


# ---------------------------------------------------------------------------------------------------------
# SSR with an LLM judge through train.py


@pytest.fixture(scope="module")
def tiny_qwen(shared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    make_checkpoint(folder, "qwen2", vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                    max_position_embeddings=4096)  # SQuAD passages and the judge's prompts run past 256 tokens
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(shared / "tokenizers" / "Qwen2.5-Instruct" / name, folder / name)
    return folder


def fast(model, data, out, *extra):
    return ["--method", "ssr", "--data", str(data), "--model", str(model), "--out", str(out), "--max-new-tokens", "6",
            "--judge", "llm", "--judge-model", "self", "--judge-max-new-tokens", "6", "--epochs", "1", "--micro-batch", "2", "--grad-accum",
            "1", "--lora-r", "4", *extra]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ssr_on_squad2_with_the_model_judging_itself(tiny_qwen, shared, tmp_path, capsys):
    out = tmp_path / "run"
    data = shared / "data" / "squad2" / "dev-v2.0.subset.json"
    assert train.main(fast(tiny_qwen, data, out, "--task", "squad2", "--limit", "6")) == 0
    verdicts, targets = read(out / "predict.verdicts.jsonl"), read(out / "targets.jsonl")
    assert len(verdicts) == len(targets) == 6 and (out / "adapter" / "adapter_config.json").is_file()
    assert all(isinstance(v["judge_output"], str) and v["judge"]["model"] == f"self ({tiny_qwen})" for v in verdicts)
    assert all(v["judge_prompt"].startswith("squad2:") for v in verdicts)
    # a random model writes no verdict line: every answer is rejected as unparseable or cut, and gold is trained on
    assert all(not v["correct"] for v in verdicts) and {t["source"] for t in targets} == {"gold"}
    assert targets[5]["response"] == UNANSWERABLE and targets[0]["response"] == "France"
    assert "ssr targets: gold 6" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["judge"] == {"judge": "llm", "model": "self", "url": None,
                                                                   "max_new_tokens": 6}
    # the same folder with another judge is refused by name
    assert train.main(fast(tiny_qwen, data, out, "--task", "squad2", "--limit", "6", "--judge-model", "other")) == 1
    assert "judge:" in capsys.readouterr().err


def test_chat_records_run_self_generating_methods_with_an_llm_judge(tiny_qwen, tmp_path, capsys):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
        {"role": "user", "content": f"Write a haiku about the number {i}."},
        {"role": "assistant", "content": f"Number {i} stands / alone in the quiet field / counting the spring rain"}]})
        + "\n" for i in range(3)))
    assert train.main(fast(tiny_qwen, data, tmp_path / "rule")[:2] + ["--data", str(data), "--model", str(tiny_qwen),
                                                                       "--out", str(tmp_path / "rule")]) == 1
    assert "use --judge llm" in capsys.readouterr().err
    for method in ("ssr", "s3ft", "sdft"):
        out = tmp_path / method
        argv = fast(tiny_qwen, data, out)
        argv[1] = method
        assert train.main(argv) == 0
        assert [t["id"] for t in read(out / "targets.jsonl")] == ["c0", "c1", "c2"]
        mode = {"ssr": "predict", "s3ft": "paraphrase", "sdft": "rewrite"}[method]
        assert all(v["task"] == "chat" and "judge_output" in v for v in read(out / f"{mode}.verdicts.jsonl"))


@pytest.mark.slow
def test_acceptance_ssr_squad2_default_model_as_its_own_judge(shared, tmp_path, capsys):
    """The issue's command: SmolLM2-135M-Instruct answers 16 SQuAD 2.0 questions and judges its own answers."""
    out = tmp_path / "run"
    assert train.main(["--method", "ssr", "--task", "squad2", "--data",
                       str(shared / "data" / "squad2" / "dev-v2.0.subset.json"), "--judge", "llm", "--judge-model", "self",
                       "--limit", "16",
                       "--out", str(out), "--max-new-tokens", "128", "--epochs", "1"]) == 0
    verdicts, targets = read(out / "predict.verdicts.jsonl"), read(out / "targets.jsonl")
    assert len(verdicts) == len(targets) == 16
    assert all(v["judge_output"].strip() for v in verdicts)
    counts = collections.Counter(t["source"] for t in targets)
    assert counts["self"] + counts["gold"] == 16
    assert f"gold {counts['gold']}" in capsys.readouterr().out
    for v, t in zip(verdicts, targets):
        assert (t["source"] == "self") == (v["correct"] and not t["rejected"])
