"""Each method picks exactly the expected target for every example, from canned generations and verdicts."""
import json

from ssr import methods
from ssr.harness import pipeline
from ssr.harness import judges
from ssr.harness.tasks import Example


def gen(output, finish="stop"):
    return {"output": output, "finish_reason": finish}


def ok(correct):
    return {"correct": correct, "kind": "match" if correct else "mismatch"}


EXAMPLES = [Example(id=str(i), task="gsm8k", question=f"q{i}", gold=f"g{i}") for i in range(7)]
GOLD = {e.id: f"gold {e.id}" for e in EXAMPLES}
# id: what the base model did
PREDICTIONS = {
    "0": gen("self right"),  # correct
    "1": gen("self wrong"),  # wrong
    "2": gen("self cut off", "length"),  # judged right, but truncated
    "3": gen("   "),  # empty
    "4": gen("self wrong again"),
    # "5": no prediction at all (e.g. generation failed)
    "6": gen("self wrong, para cut"),
}
VERDICTS = {"0": ok(True), "1": ok(False), "2": ok(True), "3": ok(True), "4": ok(False), "6": ok(False)}
PARAPHRASES = {"1": gen("para right"), "2": gen("para right 2"), "3": gen("para wrong"), "4": gen("para right 4"),
               "5": gen("para right 5"), "6": gen("para cut", "length")}
PARA_VERDICTS = {"1": ok(True), "2": ok(True), "3": ok(False), "4": ok(True), "5": ok(True), "6": ok(True)}
REWRITES = {"0": gen("rewrite right"), "1": gen("rewrite wrong"), "2": gen("As the reference answer says, 4."),
            "3": gen("rewrite cut", "length"), "4": gen("rewrite right 4"), "6": gen("rewrite right 6")}
REWRITE_VERDICTS = {"0": ok(True), "1": ok(False), "2": ok(True), "3": ok(True), "4": ok(True), "6": ok(True)}


CANNED = {"predict": (PREDICTIONS, VERDICTS), "paraphrase": (PARAPHRASES, PARA_VERDICTS),
          "rewrite": (REWRITES, REWRITE_VERDICTS)}


def canned(asked=None):
    """A `generations` function over the canned generations and verdicts; records what each mode was asked for."""
    def answers(mode, examples):
        if asked is not None:
            asked[mode] = [e.id for e in examples]
        generations, verdicts = CANNED[mode]
        out = {e.id: methods.Generation(generations[e.id]["output"], pipeline.rejection(generations[e.id], verdicts[e.id]))
               for e in examples if e.id in generations}
        answers.rejected.update({(mode, id): a.rejected for id, a in out.items() if a.rejected})
        return out
    answers.rejected = {}
    return answers


def picked(targets):
    assert [t.id for t in targets] == [e.id for e in EXAMPLES]  # one target per example, in order
    return [(t.source, t.response) for t in targets]


def test_sft_is_always_gold():
    assert picked(methods.sft(EXAMPLES, GOLD, canned())) == [("gold", GOLD[e.id]) for e in EXAMPLES]


def test_ssr():
    assert picked(methods.ssr(EXAMPLES, GOLD, canned())) == [
        ("self", "self right"), ("gold", "gold 1"), ("gold", "gold 2"), ("gold", "gold 3"),
        ("gold", "gold 4"), ("gold", "gold 5"), ("gold", "gold 6")]


def test_s3ft():
    asked = {}
    assert picked(methods.s3ft(EXAMPLES, GOLD, canned(asked))) == [
        ("self", "self right"), ("paraphrase", "para right"), ("paraphrase", "para right 2"), ("gold", "gold 3"),
        ("paraphrase", "para right 4"), ("paraphrase", "para right 5"), ("gold", "gold 6")]
    assert asked == {"predict": [e.id for e in EXAMPLES], "paraphrase": ["1", "2", "3", "4", "5", "6"]}  # only failures


def test_sdft():
    assert picked(methods.sdft(EXAMPLES, GOLD, canned())) == [
        ("rewrite", "rewrite right"), ("gold", "gold 1"), ("gold", "gold 2"), ("gold", "gold 3"),
        ("rewrite", "rewrite right 4"), ("gold", "gold 5"), ("rewrite", "rewrite right 6")]


def test_quality_rule_rejects_a_correct_answer_without_steps_unless_switched_off():
    generation = {"output": "The answer is 990.", "finish_reason": "stop"}
    verdict = {"correct": True, "kind": "match", "task": "gsm8k", "unfit": judges.unfit_target("gsm8k", "The answer is 990.")}
    assert pipeline.rejection(generation, verdict) == "answer only: no worked step"
    assert pipeline.rejection(generation, verdict, quality=False) is None
    worked = {"output": "She has 30 * 33 = 990 eggs.\nThe answer is 990.", "finish_reason": "stop"}
    assert pipeline.rejection(worked, {**verdict, "unfit": judges.unfit_target("gsm8k", worked["output"])}) is None
    assert pipeline.rejection(generation, {"correct": True, "kind": "match", "task": "gsm8k"}) is not None  # old records


def test_targets_record_why_the_models_answers_were_not_used(tmp_path):
    targets = pipeline.build_targets("s3ft", EXAMPLES, canned(), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "targets.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == [t.source for t in targets]
    assert records[0]["rejected"] == {}
    assert records[1]["rejected"] == {"predict": "judge: mismatch"}
    assert records[6]["rejected"] == {"predict": "judge: mismatch", "paraphrase": "cut at max_new_tokens"}
    assert pipeline.target_stats(tmp_path) == ("gold 2, self 1, paraphrase 4 (71% generated by the model); answers "
                                              "not used: judge: mismatch 4, cut at max_new_tokens 2, empty 1")
