"""MBPP (Austin et al. 2021): short Python programming tasks, each checked by three asserts. Data: the official
JSONL (google-research/mbpp, {"task_id", "text", "code", "test_list", "test_setup_code"}), with official
splits by task_id (`MBPP_SPLITS`). Here: the loader and its splits, the prompt of each mode, the gold form (the
code in a ```python block) and the rule judge, which runs the program in ssr/harness/sandbox.py.

The trap its judge avoids: an exit code of 0 does not mean the asserts ran. `ssr.harness.sandbox` runs the
program, the setup and each assert as separate stages and proves each one finished; a pass needs every test.
The program is found however the answer is laid out (several fences, no fence, prose after it).
"""
from __future__ import annotations

import ast
import re
import warnings
from typing import Iterable, Sequence

from ssr.harness import sandbox
from ssr.harness.tasks import ID, JUDGE_VERDICT, REWRITE_OTHER, STR, STRS, Example, Verdict, _short, plain_gold

FIELDS = {"task_id": ID, "text": STR, "code": STR, "test_list": STRS}

# MBPP's official splits (Austin et al. 2021; google-research/mbpp/README.md): few-shot prompts, test,
# validation, train. Training on "test" inflates every MBPP score, so train.py refuses it by name.
MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975)}


def from_record(row: dict, index: int, where: str) -> Example:
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise ValueError(f"{where}: field 'test_setup_code' must be a string, got {_short(setup)}")
    if not str(row["task_id"]).isdigit():  # the splits are ranges of task_ids: "HumanEval/1" belongs to none
        raise ValueError(f"{where}: field 'task_id' must be a whole number (MBPP's task ids), got "
                         f"{_short(row['task_id'])}")
    if not any(test.strip() for test in row["test_list"]):  # a program would pass "0 tests": judged correct
        raise ValueError(f"{where}: field 'test_list' holds no assert; an MBPP task needs its tests")
    return Example(id=str(row["task_id"]), task="mbpp", question=row["text"], gold=row["code"],
                   tests=list(row["test_list"]), setup=setup)


def select_split(examples: list[Example], split: str) -> list[Example]:
    """The examples of one of MBPP_SPLITS (load_task's `split`)."""
    if split not in MBPP_SPLITS:
        raise ValueError(f"unknown MBPP split {split!r}; choose one of {', '.join(MBPP_SPLITS)}")
    return [e for e in examples if int(e.id) in MBPP_SPLITS[split]]


def mbpp_split_of(example: Example) -> str | None:
    """The official MBPP split an example's task_id belongs to (None for other tasks or ids past 974)."""
    if example.task != "mbpp":
        return None
    return next((name for name, ids in MBPP_SPLITS.items() if int(example.id) in ids), None)


def refuse_test_split(examples: list[Example], where: str) -> None:
    """Training on MBPP's test split is refused by name: it would inflate every method's MBPP score."""
    test = [e.id for e in examples if mbpp_split_of(e) == "test"]
    if test:
        raise ValueError(f"{where}: {len(test)} example(s) are in MBPP's test split (task_ids 11-510, e.g. "
                         f"{', '.join(test[:3])}); train with --split train (601-974) or --split validation "
                         "(511-600), or pass --allow-test-split to train on the test split anyway")


# ---------------------------------------------------------------------------------------------------
# prompts (what each mode is for: ssr/harness/tasks/__init__.py). {tests} are the asserts, one per line: they
# name the function.

PREDICT = ("You are an expert Python programmer, and here is your task: {question} "
           "Your code should pass these tests:\n\n{tests}\n\nWrite the function in a ```python code block.")
# the s3ft recipe's training prompt (tasks/__init__.py): the task and its tests, which name the function
TRAIN = ("You are an expert Python programmer, and here is your task: {question} "
         "Your code should pass these tests:\n\n{tests}")
PARAPHRASE = ("Here is a programming task and a correct solution to it.\n\nTask:\n{question}\n\n"
              "Solution:\n```python\n{gold}\n```\n\nRewrite the solution in your own words and style, in a "
              "```python code block. Keep the function's name and arguments, so that it still passes these "
              "tests:\n\n{tests}")
REWRITE, REWRITE_PREFIX = REWRITE_OTHER, ""
JUDGE = ("You are grading a Python function written for a programming task against a reference solution.\n\n"
         "Task:\n{question}\n\nTests it must pass:\n{tests}\n\nReference solution:\n```python\n{reference}\n"
         "```\n\nSubmitted answer:\n{response}\n\nThe submission is CORRECT if its code does what the task "
         "asks and would pass the tests; otherwise it is INCORRECT. " + JUDGE_VERDICT)


def fields(example: Example) -> dict:
    return dict(question=example.question.strip(), tests="\n".join(example.tests), gold=clean_gold(example),
                reference=clean_gold(example))


def predict_messages(example: Example) -> list[dict]:
    return [{"role": "user", "content": PREDICT.format(**fields(example))}]


clean_gold = plain_gold  # the code, its CRLFs undone


def gold_response(example: Example) -> str:
    """The gold answer as a training target: the code in a ```python block, as the predict prompt asks."""
    return f"```python\n{clean_gold(example)}\n```"


# --------------------------------------------------------------------------------------------------------
# the judge

DEFAULT_TIMEOUT = 5.0  # seconds per MBPP program; all official solutions but one need well under a second

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
    from ssr.harness.judges import _in_order, _parallel  # judges.py imports the task files: imported when called
    items = list(items)
    return _in_order(_parallel(lambda item: mbpp(*item, timeout=timeout), items, workers), len(items))


def judge_example(example: Example, output: str, *, timeout: float = DEFAULT_TIMEOUT, **options) -> Verdict:
    """The rule judge of one MBPP example (ssr.harness.judges.judge; of its options, it takes `timeout`)."""
    return mbpp(output, example.tests, example.setup, timeout=timeout)


unfit = None  # no target-quality rule: the tests decide
