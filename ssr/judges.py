"""Rule-based judges: GSM8K final-answer match, MBPP execution of the program against its asserts, NQ-open
alias match. The judge decides which of the model's own answers become training targets, so each verdict
carries a short reason ("extracted 72 = 72", "AssertionError in test 2", "timeout after 5 s").

The trap avoided in each:
- GSM8K: instruct models rarely write the dataset's `#### N`; they say "The answer is $1,234.", `\\boxed{18}`
  or end on a unit. A strict regex scores them near zero, so the final answer is extracted from free text and
  compared as a number (18.00 == 18, 1,234 == 1234).
- MBPP: an exit code of 0 does not mean the asserts ran. `ssr.sandbox` runs the program, the setup and each
  assert as separate stages and proves each one finished; a pass needs every test.
- NQ: chatty answers ("It was Paris, in 1900.") never equal an alias exactly. The default mode, "contains",
  accepts an output that contains some normalised alias as whole words; "exact" is SQuAD exact match.
  A contains-judge is lenient with outputs that list several candidates; report which mode a number used.
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

from ssr import sandbox
from ssr.jsonl import append_records, read_records
from ssr.tasks import Example

NQ_MODES = ("contains", "exact")
DEFAULT_TIMEOUT = 5.0  # seconds per MBPP program; all official solutions but one need well under a second


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # one line for a human: "extracted 72 = 72", "AssertionError in test 2"
    kind: str  # the reason grouped for counting: "match", "mismatch", "AssertionError", "timeout", ...


# --------------------------------------------------------------------------------------------------------
# GSM8K

# A number as people write it: optional minus, optional $, thousands separators, decimals, an optional
# "/denominator" (so that "1/2" is not read as 1). Not glued to a word or a number on its left, so "x2",
# "3-5" (a range, not -5) and "1.2.3" yield no extra numbers.
_NUMBER = re.compile(r"(?<![\w.])(?P<sign>[-−]?)\$?\s?(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                     r"(?:\s?/\s?(?P<den>\d+))?")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_HASHES = re.compile(r"####")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|was|would be|will be|should be|=|:)", re.IGNORECASE)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_END_OF_SENTENCE = re.compile(r"\.(?:\s|$)|\n")


def _numbers(text: str) -> list[Decimal]:
    values = []
    for m in _NUMBER.finditer(_FRAC.sub(r"\1/\2", text)):
        value = Decimal(m["num"].replace(",", ""))
        if m["den"]:
            if int(m["den"]) == 0:
                continue
            value /= Decimal(m["den"])
        values.append(-value if m["sign"] else value)
    return values


def _braced(text: str, start: int) -> str:
    """The text inside the brace group opening just before `start`, nested braces included."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]


def extract_number(text: str) -> Decimal | None:
    """The final answer in free text, by the first rule that finds a number:
    the last `#### N`; the last `\\boxed{N}`; the last "answer is N" / "final answer: N" / "Answer: N" (the
    first number in the rest of that sentence); otherwise the last number in the text. Fractions count as
    their value, so `\\boxed{\\frac{1}{2}}` is 0.5, never 1."""
    if hashes := list(_HASHES.finditer(text)):
        tail = text[hashes[-1].end():].split("\n", 1)[0]
        if found := _numbers(tail):
            return found[0]
    if boxes := list(_BOXED.finditer(text)):
        if found := _numbers(_braced(text, boxes[-1].end())):
            return found[0]
    if phrases := list(_ANSWER_IS.finditer(text)):
        tail = _END_OF_SENTENCE.split(text[phrases[-1].end():], 1)[0]
        if found := _numbers(tail):
            return found[0]
    found = _numbers(text)
    return found[-1] if found else None


def _show(value: Decimal) -> str:
    return format(value.normalize(), "f")


def gsm8k(output: str, reference: str) -> Verdict:
    """Compare the output's final number with the reference's (a GSM8K solution ending in `#### N`, or N)."""
    gold = extract_number(reference)
    if gold is None:
        raise ValueError(f"no number in the reference: {reference[-80:]!r}")
    got = extract_number(output)
    if got is None:
        return Verdict(False, "no number in output", "no answer")
    if got == gold:
        return Verdict(True, f"extracted {_show(got)} = {_show(gold)}", "match")
    return Verdict(False, f"extracted {_show(got)} != {_show(gold)}", "mismatch")


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
# any task


def judge(example: Example, output: str, *, nq_mode: str = "contains",
          timeout: float = DEFAULT_TIMEOUT) -> Verdict:
    """Judge one output for an `ssr.tasks.Example` with the judge of its task."""
    if example.task == "gsm8k":
        return gsm8k(output, example.gold)
    if example.task == "mbpp":
        return mbpp(output, example.tests, example.setup, timeout=timeout)
    if example.task == "nq":
        return nq(output, example.answers, nq_mode)
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

    Appends {"id", "mode", "task", "correct", "kind", "reason"} for each (id, mode) that `out_path`
    lacks, as verdicts finish; returns the verdict records of `records`, in their order. Records whose
    id is not in `examples` are an error.
    """
    unknown = [r["id"] for r in records if str(r["id"]) not in examples]
    if unknown:
        raise KeyError(f"{len(unknown)} record(s) have ids that are not in the task (e.g. {unknown[0]!r})")
    key = lambda r: (str(r["id"]), r.get("mode"))  # noqa: E731
    done = {key(v) for v in read_records(out_path)}
    todo = list({key(r): r for r in records if key(r) not in done}.values())
    verdicts = judge_iter([examples[str(r["id"])] for r in todo], [r["output"] for r in todo], **options)
    with tqdm(total=len(todo), desc="judging", unit="answer", disable=not progress) as bar:
        def finished():
            for i, verdict in verdicts:
                bar.update()
                example = examples[str(todo[i]["id"])]
                yield {"id": example.id, "mode": todo[i].get("mode"), "task": example.task,
                       "correct": verdict.correct, "kind": verdict.kind, "reason": verdict.reason}
        append_records(out_path, finished())
    by_key = {key(v): v for v in read_records(out_path)}
    return [by_key[key(r)] for r in records]


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
