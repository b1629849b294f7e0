"""Tasks: GSM8K, MBPP and NQ-open files in their official JSONL formats, SQuAD 2.0 (document-grounded
questions, some unanswerable), generic chat records, and the prompt of every task and mode, the LLM judge's
included.

Every loader returns `Example`s with a stable `id`, so that generation, judging and training can be
resumed and joined by id. GSM8K and NQ-open lines carry no id, so the id is the line's position in its
file: never reorder or filter a task file in place between the steps of a run.

Instructions go in the user turn, never in a system message: the original Mistral template has no
system role. Chat records keep their own earlier turns and system message. The SDFT recipe is the one
exception: its prompts are the official code's own text templates (`SDFT_TEMPLATES`), not chat turns.

MBPP has official splits by task_id (`MBPP_SPLITS`); `load_task(..., split=)` selects one before `limit`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ssr.harness.runfiles import numbered_records

TASKS = ("gsm8k", "mbpp", "nq", "squad2")  # the tasks with a rule-based judge (ssr/judges.py)

# What the squad2 prompt tells the model to say when the passages do not answer the question; the gold answer
# of an unanswerable question. SSR's paper does not publish its wording: this one is ours.
UNANSWERABLE = "The passages do not answer the question."

# MBPP's official splits (Austin et al. 2021; google-research/mbpp/README.md): few-shot prompts, test,
# validation, train. Training on "test" inflates every MBPP score, so train.py refuses it by name.
MBPP_SPLITS = {"prompt": range(1, 11), "test": range(11, 511), "validation": range(511, 601),
               "train": range(601, 975)}


@dataclass
class Example:
    id: str
    task: str  # "gsm8k", "mbpp", "nq", "squad2" or "chat" (generic records)
    question: str  # what the model is asked (GSM8K question, MBPP text, NQ question)
    gold: str  # the reference answer used as an SFT target
    answers: list[str] = field(default_factory=list)  # NQ aliases; squad2 answers ([] = unanswerable)
    tests: list[str] = field(default_factory=list)  # MBPP asserts
    setup: str = ""  # MBPP test_setup_code
    messages: list[dict] | None = None  # generic records: the conversation, gold turn excluded
    documents: list[str] = field(default_factory=list)  # squad2: the passages the answer must come from


def detect_task(row: dict, where: str = "record") -> str:
    """Name the format of one record by its fields."""
    if "task_id" in row and "test_list" in row:
        return "mbpp"
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
                     "or chat records (messages, or prompt and response); or name it with --task")


# The fields each format uses, with their types. A wrong type is an error naming the field, never coerced:
# list("a dog") would turn an answer string into one alias per character, which "contains" matches anywhere.
STR, STRS, ID = (str,), "list of strings", (str, int)
FIELDS = {"gsm8k": {"question": STR, "answer": STR},
          "mbpp": {"task_id": ID, "text": STR, "code": STR, "test_list": STRS},
          "nq": {"question": STR, "answer": STRS},
          "squad2": {"question": STR, "answers": STRS}}  # answers [] for an unanswerable question
FORMAT = {"gsm8k": "GSM8K", "mbpp": "MBPP", "nq": "NQ-open", "squad2": "grounded QA", "chat": "chat"}


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


def to_example(row: dict, index: int, task: str, where: str = "record") -> Example:
    """One record of a known format -> Example, every field the task uses checked for its type. `index` is the
    record's position in its file (the id of records without one); `where` names it in errors ("FILE:LINE")."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "id" in row and (not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool)):
        raise ValueError(f"{where}: field 'id' must be a string or an integer, got {_short(row['id'])}")
    if task in FIELDS:
        _check(row, FIELDS[task], where, task)
    if task == "gsm8k":
        return Example(id=str(row.get("id", index)), task="gsm8k", question=row["question"], gold=row["answer"])
    if task == "mbpp":
        setup = row.get("test_setup_code") or ""
        if not isinstance(setup, str):
            raise ValueError(f"{where}: field 'test_setup_code' must be a string, got {_short(setup)}")
        return Example(id=str(row["task_id"]), task="mbpp", question=row["text"], gold=row["code"],
                       tests=list(row["test_list"]), setup=setup)
    if task == "nq":
        answers = list(row["answer"])
        if not answers:
            raise ValueError(f"{where}: field 'answer' is an empty list (an NQ-open record needs at least one alias)")
        return Example(id=str(row.get("id", index)), task="nq", question=row["question"], gold=answers[0],
                       answers=answers)
    if task == "squad2":
        documents = row["documents"] if "documents" in row else [row.get("context")]
        if not isinstance(documents, list) or not documents or \
                not all(isinstance(d, str) and d.strip() for d in documents):
            raise ValueError(f"{where}: 'documents' must be a non-empty list of passages (or give one 'context')")
        answers = list(row["answers"])
        return Example(id=str(row.get("id", index)), task="squad2", question=row["question"],
                       gold=answers[0] if answers else UNANSWERABLE, answers=answers, documents=list(documents))
    if task == "chat":
        if "messages" in row:
            messages = _messages(row["messages"], where)
            if messages[-1]["role"] != "assistant":
                raise ValueError(f"{where}: 'messages' must end with an assistant turn (the target)")
            prompt, gold = messages[:-1], messages[-1]["content"]
            if not prompt or prompt[-1]["role"] != "user":
                raise ValueError(f"{where}: 'messages' must have a user turn right before its last assistant turn")
        else:
            _check(row, {"prompt": STR, "response": STR}, where, "chat")
            prompt, gold = [{"role": "user", "content": row["prompt"]}], row["response"]
        question = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
        return Example(id=str(row.get("id", index)), task="chat", question=question, gold=gold, messages=prompt)
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS + ('chat',)}")


def load_task(path: str | Path, task: str | None = None, limit: int | None = None,
              split: str | None = None) -> list[Example]:
    """Load a task file, checking every record it uses. `task` is detected from the first record when not
    given. `split` (MBPP only) keeps one of MBPP_SPLITS; `limit` then takes the first N of what is left.
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
        rows = numbered_records(path, partial_tail=False)
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
    if split is not None:
        if task != "mbpp":
            raise ValueError(f"--split {split}: splits by task_id exist for MBPP only; {path} is {task!r} data")
        if split not in MBPP_SPLITS:
            raise ValueError(f"unknown MBPP split {split!r}; choose one of {', '.join(MBPP_SPLITS)}")
        examples = [e for e in examples if int(e.id) in MBPP_SPLITS[split]]
    return examples[:limit] if limit else examples


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


def squad_rows(path: Path) -> list[dict]:
    """SQuAD 2.0's official JSON ({"version", "data": [{"title", "paragraphs": [{"context", "qas"}]}]}) as
    plain grounded-QA records {"id", "documents": [context], "question", "answers"}, in the file's order.
    An `is_impossible` question has `answers: []` (its `plausible_answers` are distractors, never gold)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not SQuAD's official JSON layout {{\"version\", \"data\": [...]}} ({e})") from None
    rows = []
    for a, article in enumerate(data):
        for p, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else [x["text"] for x in qa["answers"]]
                if not qa.get("is_impossible") and not answers:
                    raise ValueError(f"{path}: question {qa.get('id')!r} (article {a}, paragraph {p}) is not "
                                     "is_impossible but has no answers")
                rows.append({"id": qa["id"], "documents": [paragraph["context"]], "question": qa["question"],
                             "answers": answers})
    return rows


# ---------------------------------------------------------------------------------------------------
# prompts, one per task and mode

MODES = ("predict", "paraphrase", "rewrite")

# predict (SSR, S3FT): the task as a user asks it. This is also the prompt to train on, so that a
# self-generated target answers exactly the prompt it is trained with. {question} is the task text; for
# MBPP {tests} are its asserts, one per line (as in the MBPP paper's prompt, which is what names the
# function). Chat records are sent as they are.
PREDICT = {
    "gsm8k": "{question}\n\nSolve the problem step by step. End with a final line of the form "
             "\"The answer is N.\", where N is the final number.",
    "mbpp": "You are an expert Python programmer, and here is your task: {question} "
            "Your code should pass these tests:\n\n{tests}\n\nWrite the function in a ```python code block.",
    "nq": "Answer the question with a short answer (a few words), without explanation.\n\nQuestion: {question}",
    # the passages before the question, and the exact sentence to give when they do not answer it
    "squad2": "Answer the question using only the passages below. If the passages do not contain the answer, "
              "reply with exactly this sentence: \"{decline}\"\n\n{passages}\n\nQuestion: {question}",
}

# paraphrase (S3FT): the task and its gold answer; the model restates the gold answer in its own words,
# keeping its final result (same number, same function, same short answer). {question} is the task text
# (for chat records, the last user turn), {gold} the gold answer; MBPP shows its tests again, since they
# fix the function's name.
PARAPHRASE = {
    "gsm8k": "Here is a math problem and a correct solution to it.\n\nProblem:\n{question}\n\nSolution:\n{gold}\n\n"
             "Rewrite the solution in your own words, explaining each step, with the same final answer. "
             "End with a final line of the form \"The answer is N.\"",
    "mbpp": "Here is a programming task and a correct solution to it.\n\nTask:\n{question}\n\n"
            "Solution:\n```python\n{gold}\n```\n\nRewrite the solution in your own words and style, in a "
            "```python code block. Keep the function's name and arguments, so that it still passes these "
            "tests:\n\n{tests}",
    "nq": "Here is a question and its correct answer.\n\nQuestion: {question}\nCorrect answer: {gold}\n\n"
          "Answer the question in your own words, with a short answer that keeps this answer.",
    "squad2": "Here are passages, a question about them and its correct answer.\n\n{passages}\n\n"
              "Question: {question}\nCorrect answer: {gold}\n\nAnswer the question in your own words, in a "
              "sentence, keeping this answer. If the correct answer is \"{decline}\", reply with exactly that "
              "sentence.",
    "chat": "Here is a request and a correct response to it.\n\nRequest:\n{question}\n\nResponse:\n{gold}\n\n"
            "Rewrite the response in your own words, keeping everything it says and its final result. "
            "Reply with the rewritten response only.",
}

# rewrite (SDFT, project recipe): the wording of SDFT's distillation templates (sail-sg/sdft, template.py:
# `gsm8k_distill` for GSM8K, `alpaca_distill_refer` for its other data sets) put into the model's own chat
# template: the system text opens the user turn, {prompt} is the predict prompt's user text (the query this
# recipe trains on), {gold} the gold answer. Not the official rendering: `--recipe sdft` (SDFT_TEMPLATES
# below) is. The output is the continuation of the prefill; the prefill is not part of the target.
REWRITE = {
    "gsm8k": "You are an expert in math. Below are a math question and its reference answer. Refer to the "
             "reference answer and write a response that appropriately answers the question.\n\n{prompt}\n\n{gold}",
    "other": "Below are an instruction that describes a task along with a reference answer. Refer to the "
             "reference answer and write your own response.\n\n### Instruction:\n{prompt}\n\n"
             "### Reference Answer:\n{gold}\n\n### Response:\n",
}
REWRITE_PREFIX = {"gsm8k": "Great! Let's think step by step."}  # other tasks: no prefill


# The SDFT recipe's prompts: LLaMA-Factory text templates of the official code (sail-sg/sdft, branch
# `reproduce`, src/llmtuner/data/template.py: `gsm8k` for training, `gsm8k_infer` for evaluation,
# `gsm8k_distill` for the rewrites), as (system, prompt). They are not the model's chat template: the
# <<SYS>> block comes before [INST], and Template._encode encodes [BOS], the prefix with the system text
# and the prompt each on its own (tokenizer.encode(piece, add_special_tokens=False)), so each piece gets
# SentencePiece's leading "▁". {query} is the raw question, {resp} the gold answer, both stripped; the
# distill prompt ends in " Great! Let's think step by step. ", its trailing space included.
SDFT_SYSTEM_BLOCK = "<<SYS>>\n{system}\n<</SYS>>\n\n"
SDFT_TEMPLATES = {
    "gsm8k": ("You are an expert in math. Below is a math question. "
              "Write a response that appropriately answers the question.",
              "[INST] {query} [/INST]"),
    "gsm8k_infer": ("You are an expert in math. Below is a math question. "
                    "Write a response that appropriately answers the question. "
                    "Your final answer should be an integer at the end of your response, formatted as: "
                    "The answer is {answer}.",
                    "[INST] {query} [/INST]"),
    "gsm8k_distill": ("You are an expert in math. Below are a math question and its reference answer. "
                      "Refer to the reference answer and write a response that appropriately answers the question.",
                      "[INST] {query}\n\n{resp} [/INST] Great! Let's think step by step. "),
}
SDFT_MODE_TEMPLATE = {"train": "gsm8k", "predict": "gsm8k_infer", "rewrite": "gsm8k_distill"}
RECIPES = ("project", "sdft")
# judge (the LLM judge, ssr/llm_judge.py): one prompt per kind of task, shown the question (with its passages),
# the reference answer and the response, and told to end with the verdict word; the parser (llm_judge.
# parse_verdict) accepts only a line "Verdict: CORRECT" or "Verdict: INCORRECT" (any case). {question} is the
# task text (for chat records, the last user turn), {reference} the gold answer as shown to the model
# (clean_gold), {response} the output judged. SSR's and S3FT's judge prompts are not public: these are ours.
JUDGE_VERDICT = ("Think briefly if you need to, then end your reply with a line that is exactly "
                 "\"Verdict: CORRECT\" or \"Verdict: INCORRECT\".")
JUDGE = {
    "gsm8k": "You are grading a student's solution to a math problem against the reference solution.\n\n"
             "Problem:\n{question}\n\nReference solution:\n{reference}\n\nStudent's solution:\n{response}\n\n"
             "The student's solution is CORRECT if its final answer equals the reference's final answer and it "
             "commits to that one answer; otherwise it is INCORRECT. " + JUDGE_VERDICT,
    "mbpp": "You are grading a Python function written for a programming task against a reference solution.\n\n"
            "Task:\n{question}\n\nTests it must pass:\n{tests}\n\nReference solution:\n```python\n{reference}\n"
            "```\n\nSubmitted answer:\n{response}\n\nThe submission is CORRECT if its code does what the task "
            "asks and would pass the tests; otherwise it is INCORRECT. " + JUDGE_VERDICT,
    "nq": "You are grading an answer to a question against the reference answers.\n\nQuestion: {question}\n"
          "Reference answers (any one is right): {aliases}\n\nResponse: {response}\n\nThe response is CORRECT if "
          "it gives one of the reference answers (in any wording) and no other answer; otherwise it is INCORRECT. "
          + JUDGE_VERDICT,
    "squad2": "You are grading an answer to a question about some passages.\n\n{passages}\n\nQuestion: "
              "{question}\n\nReference answer: {reference}\n\nResponse: {response}\n\nIf the reference answer is "
              "\"{decline}\", the response is CORRECT only if it says that the passages do not answer the "
              "question. Otherwise it is CORRECT if it gives the reference answer (in any wording) and is supported "
              "by the passages, and INCORRECT if it gives another answer or says the passages do not answer. "
              + JUDGE_VERDICT,
    "chat": "You are grading a response to a request against a reference response.\n\nRequest:\n{question}\n\n"
            "Reference response:\n{reference}\n\nResponse:\n{response}\n\nThe response is CORRECT if it is "
            "acceptable in place of the reference: it gives the same result or answer and says nothing wrong; "
            "wording and length may differ. Otherwise it is INCORRECT. " + JUDGE_VERDICT,
}


def judge_messages(example: Example, response: str) -> list[dict]:
    """The LLM judge's prompt for one response to one example: a single user turn."""
    text = JUDGE[example.task].format(question=example.question.strip(), passages=passages(example),
                                      tests="\n".join(example.tests), reference=clean_gold(example),
                                      aliases="; ".join(example.answers), response=response.strip(),
                                      decline=UNANSWERABLE)
    return [{"role": "user", "content": text}]


@dataclass
class Prompt:
    messages: list[dict]  # the conversation up to the assistant turn (for reading, when `pieces` is set)
    prefix: str = ""  # the assistant turn's forced start (SDFT rewrite); the output continues it
    pieces: list[str] | None = None  # SDFT recipe: text pieces encoded one by one after BOS, no chat template


def sdft_prompt(example: Example, template: str) -> Prompt:
    """One of SDFT_TEMPLATES filled in, LLaMA-Factory's way (str.replace, not format: the system text of
    gsm8k_infer contains a literal "{answer}")."""
    if example.task != "gsm8k":
        raise ValueError(f"the SDFT recipe's templates are for GSM8K; example {example.id} is {example.task!r} "
                         "(use --recipe project)")
    system, prompt = SDFT_TEMPLATES[template]
    pieces = [SDFT_SYSTEM_BLOCK.replace("{system}", system),
              prompt.replace("{query}", example.question.strip()).replace("{resp}", gold_response(example).strip())]
    return Prompt([{"role": "system", "content": system}, {"role": "user", "content": pieces[1]}], pieces=pieces)


def build_prompt(example: Example, mode: str, recipe: str = "project") -> Prompt:
    """The prompt of one example in one mode ("train" too, for the SDFT recipe's training prompt)."""
    if recipe == "sdft":
        if mode not in SDFT_MODE_TEMPLATE:
            raise ValueError(f"the SDFT recipe has no {mode!r} prompt; it has {', '.join(SDFT_MODE_TEMPLATE)}")
        return sdft_prompt(example, SDFT_MODE_TEMPLATE[mode])
    if recipe != "project":
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if mode == "train":
        mode = "predict"
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    asked = predict_messages(example)
    if mode == "predict":
        return Prompt(asked)
    task = example.task
    fields = dict(question=example.question.strip(), tests="\n".join(example.tests), prompt=asked[-1]["content"],
                  gold=gold_response(example) if task == "gsm8k" else clean_gold(example),
                  passages=passages(example), decline=UNANSWERABLE)
    if mode == "paraphrase":
        return Prompt(asked[:-1] + [{"role": "user", "content": PARAPHRASE[task].format(**fields)}])
    text = REWRITE.get(task, REWRITE["other"]).format(**fields)
    return Prompt(asked[:-1] + [{"role": "user", "content": text}], REWRITE_PREFIX.get(task, ""))


def predict_messages(example: Example) -> list[dict]:
    """The task as a user asks it: the prompt of predict mode, and of training."""
    if example.task == "chat":
        if not example.messages or example.messages[-1]["role"] != "user":
            raise ValueError(f"chat example {example.id}: the prompt must end with a user turn")
        return list(example.messages)
    text = PREDICT[example.task].format(question=example.question.strip(), tests="\n".join(example.tests),
                                        passages=passages(example), decline=UNANSWERABLE)
    return [{"role": "user", "content": text}]


def passages(example: Example) -> str:
    """squad2's documents as the prompt shows them: "Passage:" or "Passage 1:", "Passage 2:", ..."""
    if len(example.documents) == 1:
        return f"Passage:\n{example.documents[0].strip()}"
    return "\n\n".join(f"Passage {i}:\n{d.strip()}" for i, d in enumerate(example.documents, 1))


def clean_gold(example: Example) -> str:
    """The gold answer as shown to the model: GSM8K's <<48/2=24>> calculator notes removed, MBPP's CRLFs undone."""
    if example.task == "gsm8k":
        return re.sub(r"<<[^<>]*>>", "", example.gold).strip()
    return example.gold.replace("\r\n", "\n").strip()


def gold_response(example: Example) -> str:
    """The gold answer as a training target (SFT, and every method's fallback), in the predict prompt's form:
    GSM8K's worked solution, calculator notes removed, its "#### N" turned into the final line "The answer
    is N." that the prompt asks for; MBPP's code in a ```python block; NQ's first alias.

    The GSM8K form is SDFT's own data (sail-sg/sdft, data/gsm8k/gsm8k_{train,test}.json): this function
    gives exactly its answer for all 7473 train and 1319 test items (checked against those files)."""
    if example.task == "mbpp":
        return f"```python\n{clean_gold(example)}\n```"
    if example.task == "gsm8k" and "####" in example.gold:
        work, _, answer = clean_gold(example).rpartition("####")
        return f"{work.strip()}\nThe answer is {answer.strip()}."
    return clean_gold(example)
