"""The layout rules that keep the teaching core small and free of the harness (README, "Reading the code").

The core (model, lora, sampling, trainer, methods) and its support (tokenizer, checkpoint, __init__) are what a
learner reads top to bottom; everything about tasks, run folders, recipes, torchrun and command lines lives in
ssr/harness/. These tests fail when later work creeps back: a new top-level module, a core file over its line
budget, an import of the harness, a command-line flag or a harness word in a core or support file.
"""
import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

SSR = Path(__file__).resolve().parents[1] / "ssr"
CORE = ("model", "lora", "sampling", "trainer", "methods")
SUPPORT = ("tokenizer", "checkpoint", "__init__")
ALIASES = ("judges",)  # the public name `ssr.judges` of the harness's rule judges: imports, nothing else
CORE_LINES, CORE_AND_SUPPORT_LINES = 1100, 1700
FAST_DECODE_LINES = 100  # the opt-in fast GPU decode path sits in the core, next to the eager path it mirrors
# The one import of the harness outside it: `ssr.load_model("smollm2-135m-instruct")` (the public API) builds
# the built-in model from its GGUF on first use, a converter no learner needs to read.
ALLOWED_HARNESS_IMPORTS = {("checkpoint", "ssr.harness.default_model")}
# Words of the harness: process ranks and torchrun, run folders, recipes, settings files.
HARNESS_WORDS = re.compile(r"\b(torchrun|ranks?\b(?![ -]?r\b)|world_size|run[ _]folders?|run_dir|recipes?|"
                           r"settings[ _]files?|settings\.json|distributed)\b", re.IGNORECASE)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def lines(name: str) -> int:
    return len((SSR / f"{name}.py").read_text().splitlines())


def has_fast_decode() -> bool:
    return "def _static_decoder(" in (SSR / "sampling.py").read_text()  # complete(..., static=True)


def test_top_level_modules_are_the_core_and_its_support():
    found = {p.stem for p in SSR.glob("*.py")}
    assert found == set(CORE + SUPPORT + ALIASES), (
        f"ssr/ holds {sorted(found - set(CORE + SUPPORT + ALIASES))} beyond the core and its support: "
        "new features go into ssr/harness/")


def test_line_budgets():
    extra = FAST_DECODE_LINES if has_fast_decode() else 0
    core = sum(lines(n) for n in CORE)
    support = sum(lines(n) for n in SUPPORT)
    assert core <= CORE_LINES + extra, f"the core has {core} lines (budget {CORE_LINES + extra})"
    assert core + support <= CORE_AND_SUPPORT_LINES + extra, \
        f"core + support have {core + support} lines (budget {CORE_AND_SUPPORT_LINES + extra})"


def imported_modules(tree: ast.AST):
    for node in ast.walk(tree):  # every import, also one inside a function
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


@pytest.mark.parametrize("name", CORE + SUPPORT)
def test_core_and_support_never_import_the_harness(name):
    tree = ast.parse((SSR / f"{name}.py").read_text())
    harness = {m for m in imported_modules(tree) if m.startswith(("ssr.harness", ".harness")) or m == "ssr.harness"}
    allowed = {m for n, m in ALLOWED_HARNESS_IMPORTS if n == name}
    assert {m for m in harness if not any(m == a or m.startswith(a + ".") for a in allowed)} == set()


@pytest.mark.parametrize("name", CORE + SUPPORT)
def test_core_and_support_name_no_flag_and_no_harness_word(name):
    text = (SSR / f"{name}.py").read_text()
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (tokenize.COMMENT, tokenize.STRING):
            found += [(tok.start[0], m.group()) for m in FLAG.finditer(tok.string)]
            found += [(tok.start[0], m.group()) for m in HARNESS_WORDS.finditer(tok.string)]
        elif tok.type == tokenize.NAME and HARNESS_WORDS.fullmatch(tok.string):
            found.append((tok.start[0], tok.string))
    assert found == [], f"ssr/{name}.py names flags or harness ideas (line, text): {found}"


def test_the_rules_catch_what_they_are_for(tmp_path):
    """The checks above find what they look for (a layout test that cannot fail guards nothing)."""
    bad = "from ssr.harness import distributed  # under torchrun, rank 0 writes the run folder\n" \
          "def f():\n    import ssr.harness.recipes\n    return '--limit'\n"
    assert len(list(m for m in imported_modules(ast.parse(bad)) if m.startswith("ssr.harness"))) == 3
    words = [m.group() for m in HARNESS_WORDS.finditer(bad)] + [m.group() for m in FLAG.finditer(bad)]
    assert words == ["distributed", "torchrun", "rank", "run folder", "recipes", "--limit"]
    assert not HARNESS_WORDS.search("the LoRA rank r; rank-r activations; rank_pattern")
