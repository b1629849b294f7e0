"""Rule-based judges: GSM8K final-answer match, MBPP execution of the program against its asserts, NQ-open
alias match, SQuAD 2.0 answer-or-decline (the LLM judge is ssr/llm_judge.py). The judge decides which of the
model's own answers become training targets, so each verdict carries a short reason ("extracted 72 = 72",
"hedged: '18 or 19'", "AssertionError in test 2").

The trap avoided in each:
- GSM8K: instruct models rarely write the dataset's `#### N`, and the last number of an output is often not
  its answer (a check after it, a made-up next question, a correction). The judge reads the answer the output
  commits to, compared as a number (18.00 == 18, 1,234 == 1234), and rejects with a reason what commits to
  none: a wrong target costs more than a lost one.
- MBPP: an exit code of 0 does not mean the asserts ran. `ssr.harness.sandbox` runs the program, the setup and each
  assert as separate stages and proves each one finished; a pass needs every test. The program is found
  however the answer is laid out (several fences, no fence, prose after it).
- NQ: chatty answers ("It was Paris, in 1900.") never equal an alias exactly. The default mode, "contains",
  accepts an output that contains some normalised alias as whole words; "exact" is SQuAD exact match.
  A contains-judge is lenient with outputs that list several candidates; report which mode a number used.

`unfit_target` is the separate rule for what may become a training target whatever its correctness (a GSM8K
output that states only its final answer may not).
"""
from __future__ import annotations

import ast
import os
import re
import string
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from ssr.harness import distributed, sandbox
from ssr.harness.runfiles import append_records, read_records
from ssr.harness.tasks import UNANSWERABLE, Example

NQ_MODES = ("contains", "exact")
DEFAULT_TIMEOUT = 5.0  # seconds per MBPP program; all official solutions but one need well under a second


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # one line for a human: "extracted 72 = 72", "AssertionError in test 2"
    kind: str  # the reason grouped for counting: "match", "mismatch", "AssertionError", "timeout", ...


# --------------------------------------------------------------------------------------------------------
# GSM8K
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
        return _Answer(None, "no answer", "no committed answer: no answer marker and no concluding sentence")
    value, kind, why = _clause_value(sentence[cues[-1].end():], direct=False)
    if value is None and kind == "unclear":
        value, kind, why = _clause_value(sentence[cues[-1].end():], direct=True)
    return _Answer(value, kind if value is None else "answer",
                   why or "no committed answer: no answer marker and no concluding sentence", start)


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


# --------------------------------------------------------------------------------------------------------
# target quality

_WORKED_STEP = re.compile(r"\d")


def unfit_target(task: str, output: str) -> str | None:
    """Why an output is not fit to be a training target whatever its correctness, or None when it is fit.
    The one place this rule lives, per task; tasks without a rule return None.

    GSM8K: the prompt asks for the steps, so an output that only states its final answer ("The answer is 990.")
    teaches the model to skip them. It needs a worked step: some number before the sentence that commits to
    the answer (or, without one, before its last sentence)."""
    if task == "gsm8k":
        text = _before_new_turn(_clean(output))
        answer = _final_answer(output)
        if not _WORKED_STEP.search(text[:answer.start]):
            return "answer only: no worked step"
    return None


# --------------------------------------------------------------------------------------------------------
# MBPP

_FENCE = re.compile(r"```[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n(?P<code>.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = ("", "python", "python3", "py")
_DEFINITION = re.compile(r"^[ \t]*(?:async[ \t]+def|def|class)[ \t]+\w", re.MULTILINE)
# Where unfenced code starts after a line of prose: a definition, a decorator or an import at column 0.
_CODE_START = re.compile(r"(?:async\s+)?def\s+\w+\s*\(|class\s+\w+\s*[(:]|@[\w.]+|"
                         r"import\s+[\w.]+\s*(?:,|\bas\b|$)|from\s+[\w.]+\s+import\b")


# Parsing model code (to find where it starts and ends) is not running it: its invalid escapes ("\d" in a
# plain string) would print a DeprecationWarning per answer. Filtered by file name, which unlike
# warnings.catch_warnings is safe with the judging threads.
_PARSED = "<model output>"
warnings.filterwarnings("ignore", module=re.escape(_PARSED))


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code, _PARSED)
    except (SyntaxError, ValueError):  # ValueError: a null byte
        return None


def _defines_something(block: str) -> bool:
    """A block with a top-level def, class or import is part of the program; one with only calls, prints,
    asserts or an output listing is a usage example. A block that does not parse counts when it has a def or
    class (a cut-off or broken program must fail as one), not when it is a `>>>` session or printed output."""
    tree = _parse(block)
    if tree is None:
        return _DEFINITION.search(block) is not None
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
               for node in tree.body)


def _without_prose(text: str) -> str:
    """Unfenced code with prose around it: from the top, or else from the first line that starts a definition
    or an import, the longest stretch that parses and defines something, cut only before an unindented line
    (never inside a function)."""
    if _parse(text) is not None:
        return text
    lines = text.split("\n")
    starts = [0] + [next((i for i, line in enumerate(lines) if _CODE_START.match(line)), 0)]
    for start in dict.fromkeys(starts):
        for end in range(len(lines), start, -1):
            if end < len(lines) and lines[end][:1] in (" ", "\t"):
                continue
            code = "\n".join(lines[start:end])
            if _parse(code) is not None:
                if _defines_something(code):
                    return code
                break  # the longest stretch from here is not a program; shorter ones are not either
    return text  # broken code: let it fail as a SyntaxError


def extract_code(output: str, tests: Iterable[str] = ()) -> str:
    """The program in a model's answer, however it is laid out:
    - fenced blocks (tagged python/py/python3 or untagged): every block that defines something, joined in
      order, so a helper class in one block and the function in the next run together, and a later
      definition replaces an earlier one as in Python; usage, `>>>` and output blocks are left out (if that
      leaves nothing, the first block). An unclosed fence (a generation cut short) runs to the end.
    - no fence: the text without the prose before and after the code.
    `tests` is not needed any more (the layout decides) and is accepted for older callers."""
    blocks = [m["code"] for m in _FENCE.finditer(output) if m["lang"].lower() in _PYTHON_TAGS]
    if not blocks:
        return _without_prose(output)
    program = [block for block in blocks if _defines_something(block)]
    return "".join(block.rstrip("\n") + "\n" for block in program) if program else blocks[0]


def mbpp(output: str, tests: Sequence[str], setup: str = "", *, timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Run the program in the output, then the task's setup code, then each assert, in a sandbox. Correct only
    if every assert provably ran and held."""
    code = extract_code(output, tests)
    if not code.strip():
        return Verdict(False, "no code in output", "no code")
    stages = [("program", code)] + ([("setup", setup)] if setup.strip() else [])
    stages += [(f"test {i}", test) for i, test in enumerate(tests, 1)]
    result = sandbox.run(stages, sandbox.Limits(timeout=timeout))
    if result.passed:
        return Verdict(True, f"passed {len(tests)} tests", "passed")
    return Verdict(False, f"{result.error} in {result.stage}", result.kind)


def mbpp_batch(items: Iterable[tuple[str, Sequence[str], str]], *, workers: int | None = None,
               timeout: float = DEFAULT_TIMEOUT) -> list[Verdict]:
    """Judge many (output, tests, setup) triples in parallel; verdicts in input order."""
    items = list(items)
    return _in_order(_parallel(lambda item: mbpp(*item, timeout=timeout), items, workers), len(items))


# --------------------------------------------------------------------------------------------------------
# NQ-open

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)  # ASCII, symbols like $ and + included, as in SQuAD


def normalize_answer(text: str) -> str:
    """SQuAD normalisation (lower case, no punctuation, no articles a/an/the, single spaces), extended to
    Unicode: accents are dropped and Unicode punctuation goes too, so "Fernández" = "Fernandez" and
    "1979–80" (en dash) = "1979-80"."""
    text = "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch)).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION and not unicodedata.category(ch).startswith("P"))
    return " ".join(_ARTICLES.sub(" ", text).split())


def _light(text: str) -> str:
    return " ".join(text.lower().split())


def nq(output: str, answers: Sequence[str], mode: str = "contains") -> Verdict:
    """Match the output against every alias. "contains" (default): some normalised alias occurs in the
    normalised output as whole words. "exact": the normalised output equals a normalised alias.

    An alias without a letter or digit (")", "---", "*" are in the dev set) matches nothing: "contains" would
    accept any output with a bracket or a markdown star. One whose letters are all articles ("A+", the blood
    type) normalises to nothing but is a real answer: it is compared as written, case-insensitively."""
    if mode not in NQ_MODES:
        raise ValueError(f"unknown NQ mode {mode!r}; expected one of {NQ_MODES}")
    if not answers:
        raise ValueError("no reference answers")
    usable = [alias for alias in answers if any(ch.isalnum() for ch in alias)]
    if not usable:
        return Verdict(False, f"no usable alias in {list(answers)!r}", "no usable alias")
    said = normalize_answer(output)
    for alias in usable:
        gold = normalize_answer(alias)
        if gold:
            hit = said == gold if mode == "exact" else f" {gold} " in f" {said} "
        else:
            gold = _light(alias)
            hit = _light(output) == gold if mode == "exact" else \
                re.search(rf"(?<!\w){re.escape(gold)}(?!\w)", _light(output)) is not None
        if hit:
            return Verdict(True, f"{mode} match {alias!r}", "match")
    more = f" (+{len(answers) - 1} aliases)" if len(answers) > 1 else ""
    return Verdict(False, f"no {mode} match for {answers[0]!r}{more}", "no match")


# --------------------------------------------------------------------------------------------------------
# SQuAD 2.0 (grounded QA): the prompt gives the exact sentence for an unanswerable question


def declines(output: str) -> bool:
    """The output says the passages do not answer: it contains the prompt's sentence, normalised like an answer."""
    return f" {normalize_answer(UNANSWERABLE)} " in f" {normalize_answer(output)} "


def squad2(output: str, answers: Sequence[str]) -> Verdict:
    """An unanswerable question (no answers): correct when the output declines. An answerable one: correct when
    it does not decline and contains some gold answer (NQ's "contains" match); SSR's own judge is an LLM."""
    if not answers:
        return Verdict(True, "declined", "declined") if declines(output) else \
            Verdict(False, "answered an unanswerable question", "answered")
    if declines(output):
        return Verdict(False, "declined an answerable question", "declined")
    return nq(output, answers, "contains")


# --------------------------------------------------------------------------------------------------------
# any task


def judge(example: Example, output: str, *, nq_mode: str = "contains",
          timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Judge one output for an `ssr.harness.tasks.Example` with the judge of its task."""
    if example.task == "gsm8k":
        return gsm8k(output, example.gold)
    if example.task == "mbpp":
        return mbpp(output, example.tests, example.setup, timeout=timeout)
    if example.task == "nq":
        return nq(output, example.answers, nq_mode)
    if example.task == "squad2":
        return squad2(output, example.answers)
    raise ValueError(f"no rule-based judge for task {example.task!r} (example {example.id})")


def judge_iter(examples: Sequence[Example], outputs: Sequence[str], *, workers: int | None = None,
               nq_mode: str = "contains", timeout: float = DEFAULT_TIMEOUT) -> Iterator[tuple[int, Verdict]]:
    """Judge outputs[i] against examples[i] in parallel, yielding (i, verdict) as each finishes. Stopping the
    iteration early cancels what has not started; programs already running end within their timeout."""
    if len(examples) != len(outputs):
        raise ValueError(f"{len(examples)} examples but {len(outputs)} outputs")
    pairs = list(zip(examples, outputs))
    return _parallel(lambda pair: judge(*pair, nq_mode=nq_mode, timeout=timeout), pairs, workers)


def judge_batch(examples: Sequence[Example], outputs: Sequence[str], **options) -> list[Verdict]:
    """`judge_iter` collected in input order (the pipeline uses judge_records, which also resumes)."""
    return _in_order(judge_iter(examples, outputs, **options), len(examples))


def judge_records(examples: dict[str, Example], records: Sequence[dict], out_path, *, progress: bool = True,
                  **options) -> list[dict]:
    """Judge generate.py records ({"id", "mode", "output", ...}) into a resumable verdicts JSONL file.

    Appends {"id", "mode", "task", "correct", "kind", "reason", "unfit"} for each (id, mode) that `out_path`
    lacks, as verdicts finish ("unfit": `unfit_target`'s reason, or null); returns the verdict records of
    `records`, in their order. Records whose id is not in `examples` are an error.
    """
    key = record_key
    pending = pending_records(examples, records, read_records(out_path))
    # under torchrun: what no rank's part file holds yet, dealt round-robin to the ranks
    in_parts = {key(v) for v in distributed.part_records(out_path)}
    todo = [r for r in pending if key(r) not in in_parts][distributed.rank()::distributed.world()]
    verdicts = judge_iter([examples[str(r["id"])] for r in todo], [r["output"] for r in todo], **options)
    with tqdm(total=len(todo) * distributed.world(), desc="judging", unit="answer",  # rank 0's count x ranks
              disable=not (progress and distributed.is_main())) as bar:
        def finished():
            for i, verdict in verdicts:
                bar.update(distributed.world())
                example = examples[str(todo[i]["id"])]
                yield {"id": example.id, "mode": todo[i].get("mode"), "task": example.task,
                       "correct": verdict.correct, "kind": verdict.kind, "reason": verdict.reason,
                       "unfit": unfit_target(example.task, todo[i]["output"])}
        append_records(distributed.own_part(out_path), finished())
    distributed.merge_parts(out_path, [key(r) for r in pending], key)
    return verdicts_in_order(out_path, records)


def record_key(record: dict) -> tuple[str, str | None]:
    """What a generation record and its verdict share: (id, mode)."""
    return str(record["id"]), record.get("mode")


def pending_records(examples: dict[str, Example], records: Sequence[dict], verdicts: list[dict]) -> list[dict]:
    """The records no verdict answers yet, each (id, mode) once; a record whose id is not in `examples` is an
    error. Shared by this module's judge_records and ssr.harness.llm_judge's."""
    unknown = [r["id"] for r in records if str(r["id"]) not in examples]
    if unknown:
        raise KeyError(f"{len(unknown)} record(s) have ids that are not in the task (e.g. {unknown[0]!r})")
    done = {record_key(v) for v in verdicts}
    return list({record_key(r): r for r in records if record_key(r) not in done}.values())


def verdicts_in_order(out_path, records: Sequence[dict]) -> list[dict]:
    """The verdicts of `records` read back from out_path, in the records' order."""
    by_key = {record_key(v): v for v in read_records(out_path)}
    return [by_key[record_key(r)] for r in records]


def _parallel(fn: Callable, items: list, workers: int | None) -> Iterator[tuple[int, Verdict]]:
    # Threads, not processes: each MBPP job is a subprocess anyway, and the other judges take microseconds.
    # Twice as many as cores by default: a sandbox run is mostly process start-up latency, not CPU.
    pool = ThreadPoolExecutor(max_workers=workers or 2 * (os.cpu_count() or 1))
    try:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(done: Iterator[tuple[int, Verdict]], n: int) -> list[Verdict]:
    verdicts: list[Verdict | None] = [None] * n
    for i, verdict in done:
        verdicts[i] = verdict
    return verdicts
