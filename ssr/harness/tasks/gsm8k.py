"""GSM8K (Cobbe et al. 2021): grade-school math word problems with worked solutions. Data: the official JSONL
(openai/grade-school-math, {"question", "answer"}, the answer a worked solution with <<48/2=24>> calculator
notes, ending in "#### N"); its lines carry no id, so the id is the line's position in its file. Here: the
loader, the prompt of each mode, the gold form (SDFT's own) and the rule judge.

The trap its judge avoids: instruct models rarely write the dataset's `#### N`, and the last number of an
output is often not its answer (a check after it, a made-up next question, a correction). The judge reads the
answer the output commits to, compared as a number (18.00 == 18, 1,234 == 1234), and rejects with a reason what
commits to none: a wrong target costs more than a lost one. `unfit` is the separate rule for what may become a
training target whatever its correctness: an output that states only its final answer may not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from ssr.harness.tasks import JUDGE_VERDICT, STR, Example, Verdict

FIELDS = {"question": STR, "answer": STR}


def from_record(row: dict, index: int, where: str) -> Example:
    try:  # the judge compares with this number: a gold without one would stop a run after all its generation
        _reference_number(row["answer"])
    except ValueError:
        raise ValueError(f"{where}: field 'answer' has no final number (a GSM8K solution ends in '#### N'), got "
                         f"{row['answer'][-60:]!r}") from None
    return Example(id=str(row.get("id", index)), task="gsm8k", question=row["question"], gold=row["answer"])


# ---------------------------------------------------------------------------------------------------
# prompts (what each mode is for: ssr/harness/tasks/__init__.py)

PREDICT = ("{question}\n\nSolve the problem step by step. End with a final line of the form "
           "\"The answer is N.\", where N is the final number.")
TRAIN = "{question}"  # the s3ft recipe's training prompt (tasks/__init__.py): the problem as GSM8K states it
PARAPHRASE = ("Here is a math problem and a correct solution to it.\n\nProblem:\n{question}\n\nSolution:\n{gold}\n\n"
              "Rewrite the solution in your own words, explaining each step, with the same final answer. "
              "End with a final line of the form \"The answer is N.\"")
# SDFT's `gsm8k_distill` wording; the prefill is the official template's own
REWRITE = ("You are an expert in math. Below are a math question and its reference answer. Refer to the "
           "reference answer and write a response that appropriately answers the question.\n\n{prompt}\n\n{gold}")
REWRITE_PREFIX = "Great! Let's think step by step."
JUDGE = ("You are grading a student's solution to a math problem against the reference solution.\n\n"
         "Problem:\n{question}\n\nReference solution:\n{reference}\n\nStudent's solution:\n{response}\n\n"
         "The student's solution is CORRECT if its final answer equals the reference's final answer and it "
         "commits to that one answer; otherwise it is INCORRECT. " + JUDGE_VERDICT)


def fields(example: Example) -> dict:
    """What the prompts fill in: the paraphrase and rewrite prompts show the gold solution in its target form
    (ending in "The answer is N."), the LLM judge without its calculator notes."""
    return dict(question=example.question.strip(), gold=gold_response(example), reference=clean_gold(example))


def predict_messages(example: Example) -> list[dict]:
    return [{"role": "user", "content": PREDICT.format(**fields(example))}]


def clean_gold(example: Example) -> str:
    """The gold answer as shown to the model: GSM8K's <<48/2=24>> calculator notes removed."""
    return re.sub(r"<<[^<>]*>>", "", example.gold).strip()


def gold_response(example: Example) -> str:
    """The gold answer as a training target: the worked solution, calculator notes removed, its "#### N" turned
    into the final line "The answer is N." that the prompt asks for.

    This is SDFT's own data (sail-sg/sdft, data/gsm8k/gsm8k_{train,test}.json): this function gives exactly
    its answer for all 7473 train and 1319 test items (checked against those files)."""
    if "####" in example.gold:
        work, _, answer = clean_gold(example).rpartition("####")
        return f"{work.strip()}\nThe answer is {answer.strip()}."
    return clean_gold(example)


# --------------------------------------------------------------------------------------------------------
# the judge
#
# The final answer is the one the output commits to: an answer marker ("The answer is N", "Answer: N",
# `#### N`, `\boxed{N}`) and, without one, a concluding sentence ("So she has 18 eggs."). A wrong target costs
# more than a lost one, so whatever does not commit to one number is rejected with its reason: a hedge
# ("18 or 19", "18-20"), markers that disagree with no correction between them, a correction that retracts
# the answer without giving another, an expression with no result.

# A number as people write it: optional minus, optional $, thousands separators (comma, or a space / thin space
# between groups of exactly three digits), decimals, an exponent, an optional "/denominator" (so "1/2" is 0.5,
# never 1) and a scale word ("1.2 million", "$1.2k"). Not glued to a word or a number on its left, so "x2",
# "3-5" (a range, not -5) and "1.2.3" yield no extra numbers; ordinals ("2nd") are not numbers.
_NUMBER = re.compile(
    r"(?<![\w.])(?:(?P<sign>-)\s?\$?|\$\s?)?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?![\d-])(?:\.\d+)?"
    r"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+))?"
    r"(?:\s*(?P<scale>thousand|million|billion|trillion)\b|(?P<k>[kK])\b)?"
    r"(?!\d|\.\d|(?:st|nd|rd|th)\b)")
_SCALE = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12, "k": 10**3, "K": 10**3}

# How models dress numbers up, undone before reading: calculator notes, LaTeX, markdown emphasis, Unicode
# minus and spaces, "18 dollars and 50 cents".
_CLEANUP = [
    (re.compile(r"<<[^<>]*>>"), ""),
    (re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"\1/\2"),
    (re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}"), r"\1"),
    (re.compile(r"\{,\}"), ","),
    (re.compile(r"\\[,;: ]|~"), "\u2009"),
    (re.compile(r"\\\$"), "$"),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\(?:times|cdot)"), "×"),
    (re.compile(r"\\[()\[\]]|\\(?:left|right)\b"), " "),
    (re.compile(r"\*\*|__"), ""),
    (re.compile(r"(?<![\w*])[*_](\S(?:[^*_\n]*?\S)?)[*_](?![\w*])"), r"\1"),
    (re.compile(r"[−–—‒]"), lambda m: "-" if m[0] == "−" else "–"),
    (re.compile(r"\bi\.e\.|\be\.g\."), "ie"),
    (re.compile(r"(\d)\s*dollars?\s*(?:and\s*)?(\d{1,2})\s*cents?\b", re.IGNORECASE),
     lambda m: f"{m[1]}.{int(m[2]):02d} dollars"),
]
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"(?<!#)####(?!#)[ \t]*")
# "The answer is", "my final answer:", "Answer:" at the start of a line; not "the next answer was" or
# "points/answer =", which GSM8K solutions write about parts of the problem.
_PHRASE = re.compile(r"(?:\b(?:the|my|our)\s+|^[ \t#>*-]*)(?:final\s+|correct\s+)?answer\s*"
                     r"(?:(?P<neg>is\s+not|isn't|was\s+not|wasn't|is\s+n't)|is|was|would\s+be|will\s+be|should\s+be"
                     r"|=|:)(?P<colon>\s*:)?", re.IGNORECASE | re.MULTILINE)
_FILLER = re.compile(r"(?:[\s:=]|\\boxed\s*\{|\(?[A-E]\)(?=\s*\$?\d)|\b(?:exactly|just|only|approximately|about|"
                     r"around|roughly|a total of|equal to|then|between|at least|at most|more than|less than|"
                     r"fewer than|over|under|up to|either|maybe|perhaps|probably)\b)*", re.IGNORECASE)
_HEDGE_BEFORE = re.compile(r"\b(?:between|at least|at most|more than|less than|fewer than|over|under|up to|"
                           r"either|maybe|perhaps|probably)\s*\$?$", re.IGNORECASE)
# "18-20" is a range, "20 - 2" an expression.
_HEDGE_AFTER = re.compile(r"(?:\s*(?:\bor|\bto|\band|–)\s*|-|(?:\s+[a-z]+)?,?\s*(?:or\s+)?(?:maybe|perhaps|possibly)"
                          r"\s+)(?=-?\$?\s?\d|\.\d)", re.IGNORECASE)
_TWO_ANSWERS = re.compile(r"\s+[a-z]+,?\s+and\s+(?=-?\$?\s?\d|\.\d)", re.IGNORECASE)  # "24 boys and 16 girls"
_OPERATOR_AFTER = re.compile(r"\s*(?:[-+*/×x÷^]|of\b)\s*(?=\(?-?\$?\d)")
_CONNECTOR = re.compile(r"\b(?:which\s+is|which\s+means|that\s+is|that's|ie|so|giving|gives|makes|for\s+a\s+total"
                        r"\s+of|total(?:ing|ling)?\s+of|in\s+total|equals?|is\s+equal\s+to)\b|=", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)|[?!;](?=\s|$)|\n")
_NEW_TURN = re.compile(r"^[ \t]*(?:[#*>]+[ \t]*)?(?:question|q|problem|exercise|example|human|user|instruction)"
                       r"[ \t]*\d*[ \t]*[:.)]", re.IGNORECASE | re.MULTILINE)
# After a committed answer: an admission of error retracts it; "wait", "actually", "no" only may.
_ADMITS = re.compile(r"\b(?:oops|sorry|correction|mistakes?|errors?|miscalculat\w*|wrong|incorrect|"
                     r"re-?calculat\w*|redo)\b", re.IGNORECASE)
_DOUBTS = re.compile(r"\b(?:wait|actually|hmm|hold on)\b|(?:^|[.!?,]\s*)no\b", re.IGNORECASE | re.MULTILINE)
_RESTATE = re.compile(r"\b(?:it'?s|it\s+is|that'?s|that\s+is|should\s+be|would\s+be|is\s+actually|becomes|instead|"
                      r"rather|but)\b[\s:]*(?=-?\$?\s?\d|\.\d)|=\s*", re.IGNORECASE)
# Without a marker, a correction to the final number: a doubt, an admission or "but / instead / rather", then the
# number itself, only "it is", "that's", "the answer is", "I get" and the like between them ("27? No wait, 72.",
# "I first thought 27, but it is 72."); "She has 5 apples but gives 2 away" is no correction (a verb stands between).
_CORRECTS = re.compile(_ADMITS.pattern + "|" + _DOUBTS.pattern + r"|\b(?:but|instead|rather)\b",
                       re.IGNORECASE | re.MULTILINE)
_TO_NUMBER = re.compile(r"(?:[\s,:;.!?-]|\b(?:no|wait|actually|sorry|oops|hmm|so|then|now|it'?s|it\s+is|that'?s|"
                        r"that\s+is|it\s+(?:should|would|must)\s+be|(?:the\s+)?(?:correct\s+|right\s+|real\s+)?"
                        r"(?:answer|result|total)\s+(?:is|was)|i\s+(?:get|got|mean|meant))\b)*",
                        re.IGNORECASE)
_NUMBER_ENDS = re.compile(r"(?:\s+[A-Za-z]+){0,3}\s*(?:[.!]|$)")
_RESULT_CUE = re.compile(r"\b(?:so|therefore|thus|hence|in\s+total|total|altogether|in\s+all|overall|finally)\b",
                         re.IGNORECASE)


@dataclass(frozen=True)
class _Answer:
    value: Decimal | None  # None: no committed answer, `kind` says why
    kind: str  # "answer", or why not: "no answer", "hedged", "conflicting", "retracted", "unclear"
    why: str
    start: int = 0  # where the sentence that commits to it begins (for unfit_target)


def _clean(text: str) -> str:
    for pattern, replacement in _CLEANUP:
        text = pattern.sub(replacement, text)
    return text


def _value(m: re.Match) -> Decimal | None:
    value = Decimal(re.sub(r"[,\s\u00a0\u2009\u202f]", "", m["num"]))
    if m["den"]:
        if int(m["den"]) == 0:
            return None
        value /= Decimal(m["den"])
    value *= _SCALE.get(m["scale"] or m["k"] or "", 1)
    return -value if m["sign"] else value


def _numbers(text: str) -> list[tuple[re.Match, Decimal]]:
    return [(m, v) for m in _NUMBER.finditer(text) if (v := _value(m)) is not None]


def _show(value: Decimal) -> str:
    return format(value.normalize(), "f")


def _clause_value(clause: str, direct: bool) -> tuple[Decimal | None, str, str]:
    """(value, kind, why) of the clause after an answer marker. `direct`: the marker is followed by the number
    itself ("is 18"), else by a sentence ("is: she has 18 eggs"). The value is the result of an expression
    ("13 + 5 = 18", "2/3 of 27, which is 18"), else the first number (direct) or the only one (sentence)."""
    numbers = _numbers(clause)
    if not numbers:
        return None, "no answer", "no number after the answer marker"
    connectors = list(_CONNECTOR.finditer(clause))
    after = [(m, v) for m, v in numbers if connectors and m.start() >= connectors[-1].end()]
    if after:
        m, value = after[0]
    elif direct or len({v for _, v in numbers}) == 1:
        m, value = numbers[0]
    else:
        return None, "unclear", f"several numbers and no result in {clause.strip()[:40]!r}"
    hedge = _HEDGE_AFTER.match(clause, m.end())
    other = _numbers(clause[hedge.end():]) if hedge else []
    if other and other[0][0].start() == 0 and other[0][1] != value:
        return None, "hedged", f"hedged: {clause[m.start():hedge.end() + other[0][0].end()].strip()!r}"
    if (both := _TWO_ANSWERS.match(clause, m.end())) and _numbers(clause[both.end():])[0][1] != value:
        return None, "unclear", f"two answers: {clause[m.start():].strip()[:40]!r}"
    if _HEDGE_BEFORE.search(clause[:m.start()]):
        return None, "hedged", f"hedged: {clause[:m.end()].strip()[-40:]!r}"
    if not after and _OPERATOR_AFTER.match(clause, m.end()):
        return None, "unclear", f"an expression without a result: {clause.strip()[:40]!r}"
    return value, "answer", ""


def _clause(text: str, start: int) -> str:
    end = _SENTENCE_END.search(text, start)
    return text[start:end.start() if end else len(text)]


def _markers(text: str) -> list[tuple[int, int, Decimal | None, str, str, bool]]:
    """Answer markers in order: (start, end, value, kind, why, strong). Strong ones are followed by the
    number itself; weak ones ("Answer: she has 18 eggs") count only when no strong one exists."""
    found = []
    for m in _HASHES.finditer(text):
        if first := _NUMBER.match(text, m.end()):
            found.append((m.start(), first.end(), _value(first), "answer", "", True))
    for m in _BOXED.finditer(text):
        inside = _braced(text, m.end())
        value, kind, why = _clause_value(inside, direct=True)
        found.append((m.start(), m.end() + len(inside), value, kind, why, True))
    for m in _PHRASE.finditer(text):
        lead = _FILLER.match(text, m.end()).end()
        direct = _NUMBER.match(text, lead) is not None
        if m["neg"]:
            found.append(_negated(text, m, lead))
        elif direct or m["colon"] or m[0].endswith(":") or re.match(r"that\b", text[lead:]):
            clause = _clause(text, m.end())
            value, kind, why = _clause_value(clause, direct)
            found.append((m.start(), m.end() + len(clause), value, kind, why, direct))
    return sorted(found)


def _negated(text: str, m: re.Match, lead: int):
    """ "The answer is not 19, it's 18." / "isn't 19; it's 18": the value the output puts in its place."""
    line_end = text.find("\n", lead)
    rest = text[lead:line_end if line_end >= 0 else len(text)]
    restated = [r for r in _RESTATE.finditer(rest) if r.start() > 0]
    if restated and (number := _NUMBER.match(rest, restated[0].end())):
        return m.start(), lead + number.end(), _value(number), "answer", "", True
    return m.start(), lead + len(rest), None, "unclear", f"a negated answer without another: {m[0]!r}", True


def _before_new_turn(text: str) -> str:
    """Cut where the model, having answered, makes up a new question or user turn (and answers it)."""
    markers = _markers(text)
    if markers:
        for turn in _NEW_TURN.finditer(text):
            if turn.start() > markers[0][0]:
                return text[:turn.start()]
    return text


def _sentence_start(text: str, pos: int) -> int:
    newline, stop = text.rfind("\n", 0, pos), text.rfind(". ", 0, pos)
    return max(newline + 1, stop + 2 if stop >= 0 else 0)


def _final_answer(text: str) -> _Answer:
    text = _before_new_turn(_clean(text))
    markers = _markers(text)
    if any(strong for *_, strong in markers):
        markers = [marker for marker in markers if marker[-1]]
    if not markers:
        return _concluding_sentence(text)
    current = markers[0]
    for marker in markers[1:]:
        between = text[current[1]:marker[0]]
        if current[2] is not None and current[2] == marker[2] or _ADMITS.search(between) or \
                _DOUBTS.search(between) or current[2] is None and current[3] != "answer" and marker[2] is not None:
            current = marker
        elif marker[0] < current[1]:  # the same marker twice: "The answer is \boxed{18}"
            continue
        else:
            got = [_show(v) if v is not None else k for _, _, v, k, _, _ in (current, marker)]
            return _Answer(None, "conflicting", f"conflicting answers {got[0]} and {got[1]} with no correction")
    start, end, value, kind, why, _ = current
    if value is None:
        return _Answer(None, kind, why, _sentence_start(text, start))
    tail = text[end:]
    doubt = _ADMITS.search(tail) or _DOUBTS.search(tail)
    if doubt:
        after = tail[doubt.end():]
        restated = [n for r in _RESTATE.finditer(after) if (n := _NUMBER.match(after, r.end()))]
        if restated:
            value = _value(restated[-1])
        elif _ADMITS.search(tail) or any(v != value for _, v in _numbers(after)[-1:]):
            return _Answer(None, "retracted", f"a correction after the answer {_show(value)} gives no other",
                           _sentence_start(text, start))
    return _Answer(value, "answer", "", _sentence_start(text, start))


def _concluding_sentence(text: str) -> _Answer:
    """No answer marker: the output's only number, or the result its last sentence with a number concludes
    with "so", "therefore", "in total"... Anything else (a generation cut off mid-computation, a last line
    that only restates a quantity) is no committed answer."""
    numbers = _numbers(text)
    if not numbers:
        return _Answer(None, "no answer", "no number in output")
    if len({v for _, v in numbers}) == 1:
        return _Answer(numbers[0][1], "answer", "", _sentence_start(text, numbers[0][0].start()))
    last = numbers[-1][0].start()
    start = _sentence_start(text, last)
    sentence = _clause(text, start)
    cues = list(_RESULT_CUE.finditer(sentence))
    if not cues:
        corrected = _correction(text)
        if corrected is not None:
            return corrected
        return _Answer(None, "no answer", "no committed answer: no answer marker and no concluding sentence")
    value, kind, why = _clause_value(sentence[cues[-1].end():], direct=False)
    if value is None and kind == "unclear":
        value, kind, why = _clause_value(sentence[cues[-1].end():], direct=True)
    return _Answer(value, kind if value is None else "answer",
                   why or "no committed answer: no answer marker and no concluding sentence", start)


def _correction(text: str) -> _Answer | None:
    """A correction to the final number with no answer marker: the output's last correction signal (`_CORRECTS`)
    with a number before it, followed by the output's last number and nothing else but a few words of unit before
    the sentence ends; every number after the signal is that one. None when the output has no such correction."""
    signals = list(_CORRECTS.finditer(text))
    if not signals or not _numbers(text[:signals[-1].start()]):
        return None
    signal = signals[-1]
    number = _NUMBER.match(text, _TO_NUMBER.match(text, signal.end()).end())
    if number is None or _value(number) is None or not _NUMBER_ENDS.match(text, number.end()):
        return None
    value = _value(number)
    if any(v != value for _, v in _numbers(text[signal.end():])):
        return None
    return _Answer(value, "answer", "", _sentence_start(text, signal.start()))


def _braced(text: str, start: int) -> str:
    """The text inside the brace group opening just before `start`, nested braces included."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def extract_number(text: str) -> Decimal | None:
    """The final answer the text commits to (see `gsm8k`), as a number; None when it commits to none."""
    return _final_answer(text).value


def _reference_number(reference: str) -> Decimal:
    """A GSM8K solution's `#### N` is authoritative; a bare reference ("18") is read like an output."""
    if hashes := list(_HASHES.finditer(reference)):
        if numbers := _numbers(_clean(reference[hashes[-1].end():])):
            return numbers[0][1]
    if (value := extract_number(reference)) is None:
        raise ValueError(f"no number in the reference: {reference[-80:]!r}")
    return value


def gsm8k(output: str, reference: str) -> Verdict:
    """Compare the final answer the output commits to with the reference's (a GSM8K solution ending in `#### N`,
    or N), as numbers: 18.00 == 18, 1,234 == 1234, "1.2 million" == 1200000.

    The committed answer: the answer markers (`#### N`, `\\boxed{N}`, "the answer is N", "Answer: N"), where
    a marker followed by an expression counts its result ("13 + 5 = 18" is 18) and a negated one ("is not 19,
    it's 18") what replaces it. Several markers must agree unless a correction ("Wait", "I made an error")
    comes between, and then the last wins; a correction after the last marker must restate a number
    ("No wait, it's 19"). Text after the answer never overrides it, and a made-up next question ("Question:
    ... Answer: 7") is cut off. Without a marker: the only number of the output, or the result of a last
    sentence that concludes ("So she has 18 eggs."). Whatever is left undecided is rejected with its reason:
    "hedged" ("18 or 19", "18-20", "at least 18"), "conflicting", "retracted", "unclear", "no answer"."""
    gold = _reference_number(reference)
    answer = _final_answer(output)
    if answer.value is None:
        return Verdict(False, answer.why, answer.kind)
    if answer.value == gold:
        return Verdict(True, f"extracted {_show(answer.value)} = {_show(gold)}", "match")
    return Verdict(False, f"extracted {_show(answer.value)} != {_show(gold)}", "mismatch")



def judge_example(example: Example, output: str, **options) -> Verdict:
    """The rule judge of one GSM8K example (ssr.harness.judges.judge; it takes no options)."""
    return gsm8k(output, example.gold)


# --------------------------------------------------------------------------------------------------------
# target quality

_WORKED_STEP = re.compile(r"\d")


def unfit(output: str) -> str | None:
    """Why an output is not fit to be a training target whatever its correctness, or None when it is fit
    (ssr.harness.judges.unfit_target).

    GSM8K: the prompt asks for the steps, so an output that only states its final answer ("The answer is 990.")
    teaches the model to skip them. It needs a worked step: some number before the sentence that commits to
    the answer (or, without one, before its last sentence)."""
    text = _before_new_turn(_clean(output))
    answer = _final_answer(output)
    if not _WORKED_STEP.search(text[:answer.start]):
        return "answer only: no worked step"
    return None
