"""Tasks: what every task shares, and one file per task with its data, its prompt in each mode, its gold form
and its rule judge: gsm8k.py (GSM8K), mbpp.py (MBPP, run in ssr/harness/sandbox.py), nq.py (NQ-open),
squad2.py (SQuAD 2.0: document-grounded questions, some unanswerable), nq_rc.py (NQ questions with their gold
passage: `nq_rc`, reading comprehension as S3FT has it, and `nq_rc_unanswerable`, each question also paired
with a passage that does not answer it, SSR's setting), chat.py (generic chat records).

Every loader returns `Example`s with a stable `id`, so that generation, judging and training can be
resumed and joined by id. GSM8K and NQ-open lines carry no id, so the id is the line's position in its
file: never reorder or filter a task file in place between the steps of a run.

Instructions go in the user turn, never in a system message: the original Mistral template has no
system role. Chat records keep their own earlier turns and system message. The SDFT recipe is the one
exception: its prompts are the official code's own text templates (ssr/harness/recipes.py), not chat turns.

MBPP has official splits by task_id (`MBPP_SPLITS`), nq_rc a split by question (`nq_rc.SPLITS`: train, test);
`load_task(..., split=)` selects one before `limit`. A task file may be gzip-compressed (FILE.jsonl.gz).

Every task file names the same things, which the functions here look up by task name in `TASK_FILES`:
- `FIELDS`, the record fields it uses with their types (checked here first), and `from_record(row, index,
  where)`, one record -> Example;
- `predict_messages(example)`, `PARAPHRASE`, `REWRITE` and `REWRITE_PREFIX`, `JUDGE`: its prompt in each
  mode, the LLM judge's included, and `fields(example)`, what those prompts fill in;
- `clean_gold(example)`, the gold answer as shown to the model, and `gold_response(example)`, as a target;
- `judge_example(example, output, **options)`, its rule judge (None: judged by the LLM judge only), and
  `unfit(output)`, why an output may not be a training target whatever its correctness (None: no such rule).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ssr.harness.runfiles import numbered_records


@dataclass
class Example:
    id: str
    task: str  # "gsm8k", "mbpp", "nq", "squad2", "nq_rc" or "chat" (generic records)
    question: str  # what the model is asked (GSM8K question, MBPP text, NQ question)
    gold: str  # the reference answer used as an SFT target
    aliases: list[str] = field(default_factory=list)  # accepted forms of gold (NQ, SQuAD); [] = unanswerable
    tests: list[str] = field(default_factory=list)  # MBPP asserts
    setup: str = ""  # MBPP test_setup_code
    messages: list[dict] | None = None  # generic records: the conversation, gold turn excluded
    documents: list[str] = field(default_factory=list)  # squad2, nq_rc: the passages the answer must come from


@dataclass
class Prompt:
    messages: list[dict]  # the conversation up to the assistant turn (for reading, when `pieces` is set)
    prefix: str = ""  # the assistant turn's forced start (SDFT rewrite); the output continues it
    pieces: list[str] | None = None  # SDFT recipe: text pieces encoded one by one after BOS, no chat template


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # one line for a human: "extracted 72 = 72", "AssertionError in test 2"
    kind: str  # the reason grouped for counting: "match", "mismatch", "AssertionError", "timeout", ...


def detect_task(row: dict, where: str = "record") -> str:
    """Name the format of one record by its fields."""
    if "task_id" in row and "test_list" in row:
        return "mbpp"
    if "question" in row and "ctxs" in row:
        return "nq_rc"
    if "question" in row and ("documents" in row or "context" in row):
        return "squad2"
    if "question" in row and isinstance(row.get("answer"), str):
        return "gsm8k"
    if "question" in row and isinstance(row.get("answer"), list):
        return "nq"
    if "messages" in row or ("prompt" in row and "response" in row):
        return "chat"
    raise ValueError(f"{where}: unknown record format with fields {sorted(row)}; expected GSM8K (question, answer), "
                     "MBPP (task_id, text, code, test_list), NQ-open (question, answer list), "
                     "grounded QA (id, documents or context, question, answers), "
                     "NQ with passages (question, answers, ctxs), "
                     "or chat records (messages, or prompt and response); or name it with --task")


# The fields each format uses, with their types (each task file's FIELDS). A wrong type is an error naming the
# field, never coerced: list("a dog") would turn an answer string into one alias per character, which
# "contains" matches anywhere.
STR, STRS, ID = (str,), "list of strings", (str, int)
FORMAT = {"gsm8k": "GSM8K", "mbpp": "MBPP", "nq": "NQ-open", "squad2": "grounded QA", "nq_rc": "NQ with passages",
          "nq_rc_unanswerable": "NQ with passages", "chat": "chat"}


def _check(row: dict, fields: dict, where: str, task: str) -> None:
    for key, kind in fields.items():
        if key not in row:
            raise ValueError(f"{where}: missing field {key!r} (a {FORMAT[task]} record has {', '.join(fields)})")
        value = row[key]
        if kind == STRS:
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            wanted = kind if kind == STRS else " or ".join(t.__name__ for t in kind)
            raise ValueError(f"{where}: field {key!r} must be {'a ' if kind == STRS else ''}{wanted} in a "
                             f"{FORMAT[task]} record, got {type(value).__name__} {_short(value)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _messages(value, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects, "
                         f"got {type(value).__name__} {_short(value)}")
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ValueError(f"{where}: messages[{i - 1}] must be an object with string 'role' and 'content', "
                             f"got {_short(m)}")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"{where}: messages[{i - 1}] has role {m['role']!r}; expected system, user or assistant")
    return list(value)


def plain_gold(example: Example) -> str:
    """The gold answer as written, CRLFs undone (MBPP's code has them), stripped: how every task whose file
    says nothing else shows it to the model and trains on it."""
    return example.gold.replace("\r\n", "\n").strip()


# ---------------------------------------------------------------------------------------------------
# prompts, one per task and mode (the templates are in the task files)

MODES = ("predict", "paraphrase", "rewrite")

# predict (SSR, S3FT): the task as a user asks it. In the project recipe this is also the prompt to train on, so
# that a self-generated target answers exactly the prompt it is trained with. {question} is the task text; for
# MBPP {tests} are its asserts, one per line (as in the MBPP paper's prompt, which is what names the
# function). Chat records are sent as they are.
#
# train (the s3ft recipe only): S3FT shows one prompt for training (its Fig. 3) and another for predicting the base
# model's answer (its Fig. 4). Their wording is not available here; each task file's `TRAIN` is ours: the task
# as the data set states it (GSM8K's problem, MBPP's task and tests, the passages and question), without the
# predict prompt's instruction on the answer's form ("End with ... The answer is N.", "a short answer", the
# decline sentence). Gold, the model's own answers and its paraphrases are all trained as the response to it;
# a self-generated target keeps the very ids the model generated after the predict prompt (the chat template's
# generation prompt ends both prompts alike, so those ids follow the training prompt's ids as they followed the
# predict prompt's).
#
# paraphrase (S3FT): the task and its gold answer; the model restates the gold answer in its own words,
# keeping its final result (same number, same function, same short answer). {question} is the task text
# (for chat records, the last user turn), {gold} the gold answer; MBPP shows its tests again, since they
# fix the function's name.
#
# rewrite (SDFT, project recipe): the wording of two distillation templates of SDFT's code (sail-sg/sdft,
# src/llmtuner/data/template.py: `gsm8k_distill`, and `alpaca_distill_refer`, a general template with a
# reference answer; which template the official scripts use for which of SDFT's data sets is not checked here)
# put into the model's own chat template: the system text opens the user turn, {prompt} is the predict prompt's
# user text, {gold} the gold answer. Not the official rendering: `--recipe sdft` (SDFT_TEMPLATES in
# ssr/harness/recipes.py) is, for GSM8K. The output is the continuation of the prefill; the prefill is not part
# of the target. This project uses `alpaca_distill_refer`'s wording as the rewrite prompt of every task but
# GSM8K (SDFT has no MBPP, NQ or grounded-QA recipe), with no prefill:
REWRITE_OTHER = ("Below are an instruction that describes a task along with a reference answer. Refer to the "
                 "reference answer and write your own response.\n\n### Instruction:\n{prompt}\n\n"
                 "### Reference Answer:\n{gold}\n\n### Response:\n")

# judge (the LLM judge, ssr/harness/llm_judge.py): one prompt per kind of task, shown the question (with its
# passages), the reference answer and the response, and told to end with the verdict word; the parser
# (llm_judge.parse_verdict) accepts only a line "Verdict: CORRECT" or "Verdict: INCORRECT" (any case).
# {question} is the task text (for chat records, the last user turn), {reference} the gold answer as shown to
# the model (clean_gold), {response} the output judged. SSR's and S3FT's judge prompts are not public: these
# are ours.
JUDGE_VERDICT = ("Think briefly if you need to, then end your reply with a line that is exactly "
                 "\"Verdict: CORRECT\" or \"Verdict: INCORRECT\".")


# ---------------------------------------------------------------------------------------------------
# the task files (imported here, below what they use from this file)

from ssr.harness.tasks import chat, gsm8k, mbpp, nq, nq_rc, squad2  # noqa: E402
from ssr.harness.tasks.mbpp import MBPP_SPLITS, mbpp_split_of  # noqa: E402,F401
from ssr.harness.tasks.squad2 import UNANSWERABLE, passages, squad_rows  # noqa: E402,F401

# nq_rc_unanswerable reads the same records as nq_rc, and load_task adds the unanswerable pairs; its examples are
# "nq_rc" examples (the same prompts and judge)
TASK_FILES = {"gsm8k": gsm8k, "mbpp": mbpp, "nq": nq, "squad2": squad2, "nq_rc": nq_rc, "nq_rc_unanswerable": nq_rc,
              "chat": chat}
TASKS = tuple(name for name, task in TASK_FILES.items() if task.judge_example)  # the tasks with a rule judge
JUDGE = {name: task.JUDGE for name, task in TASK_FILES.items()}  # the LLM judge's prompt of each task


def to_example(row: dict, index: int, task: str, where: str = "record") -> Example:
    """One record of a known format -> Example, every field the task uses checked for its type. `index` is the
    record's position in its file (the id of records without one); `where` names it in errors ("FILE:LINE")."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "id" in row and (not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool)):
        raise ValueError(f"{where}: field 'id' must be a string or an integer, got {_short(row['id'])}")
    if task not in TASK_FILES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS + ('chat',)}")
    _check(row, TASK_FILES[task].FIELDS, where, task)
    return TASK_FILES[task].from_record(row, index, where)


def load_task(path: str | Path, task: str | None = None, limit: int | None = None,
              split: str | None = None) -> list[Example]:
    """Load a task file, checking every record it uses. `task` is detected from the first record when not
    given. `split` (MBPP: one of MBPP_SPLITS; nq_rc: train or test) keeps one split; `limit` then takes the first
    N of what is left. "nq_rc_unanswerable" adds each question's unanswerable pair (tasks/nq_rc.py) first.
    Errors name the file and the record's 1-based line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1 (or None for all records), got {limit}")
    if path.suffix == ".json":  # SQuAD's official layout (one JSON document: "lines" are question numbers)
        if task not in (None, "squad2"):
            raise ValueError(f"{path}: a .json task file is read as SQuAD 2.0's official layout, not as {task!r}")
        rows, task = list(enumerate(squad_rows(path), 1)), "squad2"
    else:
        rows = _gzip_records(path) if path.suffix == ".gz" else numbered_records(path, partial_tail=False)
    if not rows:
        raise ValueError(f"{path}: no records")
    task = task or detect_task(rows[0][1], f"{path}:{rows[0][0]}")
    examples = [to_example(r, i, task, where=f"{path}:{line}") for i, (line, r) in enumerate(rows)]
    first_line: dict[str, int] = {}
    for e, (line, _) in zip(examples, rows):
        if e.id in first_line:
            raise ValueError(f"{path}:{line}: duplicate id {e.id!r} (first on line {first_line[e.id]}); "
                             "ids must be unique")
        first_line[e.id] = line
    if task == "nq_rc_unanswerable":
        examples = nq_rc.with_unanswerable(examples)
    if split is not None:
        if task not in ("mbpp", "nq_rc", "nq_rc_unanswerable"):
            raise ValueError(f"--split {split}: splits exist for MBPP (by task_id) and nq_rc (by question) only; "
                             f"{path} is {task!r} data")
        examples = (mbpp if task == "mbpp" else nq_rc).select_split(examples, split)
    return examples[:limit] if limit else examples


def _gzip_records(path: Path) -> list[tuple[int, dict]]:
    """(1-based line, record) of a gzip-compressed JSONL task file (the nq_rc data ships so), every line checked."""
    import gzip
    import json
    try:
        lines = gzip.decompress(path.read_bytes()).split(b"\n")
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a gzip file ({e})") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{path}:{n}: not valid UTF-8 JSON ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            rows.append((n, record))
    return rows


def refuse_test_split(examples: list[Example], where: str) -> None:
    """Training on a test split is refused by name (MBPP's task_ids 11-510, nq_rc's test questions): it would
    inflate every score evaluate.py reports on it."""
    mbpp.refuse_test_split(examples, where)
    nq_rc.refuse_test_split(examples, where)


def judge_messages(example: Example, response: str) -> list[dict]:
    """The LLM judge's prompt for one response to one example: a single user turn."""
    task = TASK_FILES[example.task]
    text = task.JUDGE.format(**task.fields(example), response=response.strip())
    return [{"role": "user", "content": text}]


def build_prompt(example: Example, mode: str, recipe: str = "project") -> Prompt:
    """The prompt of one example in one mode; "train" is the prompt trained on: the predict prompt in the project
    recipe, `train_messages` in the s3ft recipe, the official template in the sdft recipe."""
    # recipes.py builds its prompts on this package's, so it is imported when a prompt is asked for
    from ssr.harness.recipes import RECIPES, SDFT_MODE_TEMPLATE, sdft_prompt
    if recipe == "sdft":
        if mode not in SDFT_MODE_TEMPLATE:
            raise ValueError(f"the SDFT recipe has no {mode!r} prompt; it has {', '.join(SDFT_MODE_TEMPLATE)}")
        return sdft_prompt(example, SDFT_MODE_TEMPLATE[mode])
    if recipe not in ("project", "s3ft"):
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if mode == "train" and recipe == "s3ft":
        return Prompt(train_messages(example))
    if mode == "train":
        mode = "predict"
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    asked = predict_messages(example)
    if mode == "predict":
        return Prompt(asked)
    task = TASK_FILES[example.task]
    fields = dict(task.fields(example), prompt=asked[-1]["content"])
    if mode == "paraphrase":
        return Prompt(asked[:-1] + [{"role": "user", "content": task.PARAPHRASE.format(**fields)}])
    text = task.REWRITE.format(**fields)
    return Prompt(asked[:-1] + [{"role": "user", "content": text}], task.REWRITE_PREFIX)


def predict_messages(example: Example) -> list[dict]:
    """The task as a user asks it: the prompt of predict mode, and of training."""
    return TASK_FILES[example.task].predict_messages(example)


def train_messages(example: Example) -> list[dict]:
    """S3FT's training prompt (the s3ft recipe): the task file's `TRAIN` filled in, as one user turn; a task file
    without one (chat records: their conversation is the task) trains on its predict prompt."""
    task = TASK_FILES[example.task]
    if getattr(task, "TRAIN", None) is None:
        return predict_messages(example)
    return [{"role": "user", "content": task.TRAIN.format(**task.fields(example))}]


def clean_gold(example: Example) -> str:
    """The gold answer as shown to the model (GSM8K's <<48/2=24>> calculator notes removed, MBPP's CRLFs undone)."""
    return TASK_FILES[example.task].clean_gold(example)


def gold_response(example: Example) -> str:
    """The gold answer as a training target (SFT, and every method's fallback), in the predict prompt's form:
    GSM8K's worked solution ending in "The answer is N.", MBPP's code in a ```python block, NQ's first alias
    (each task file's `gold_response`)."""
    return TASK_FILES[example.task].gold_response(example)
