"""The prompt of every task and mode, in one place.

- predict (SSR, S3FT): the task as a user asks it. This is also the prompt to train on, so that a
  self-generated target answers exactly the prompt it is trained with.
- paraphrase (S3FT): the task and its gold answer; the model restates the gold answer in its own
  words, keeping its final result (same number, same function, same short answer).
- rewrite (SDFT): the distillation templates of SDFT's code (sail-sg/sdft, template.py):
  `gsm8k_distill` for GSM8K, with the assistant turn pre-filled "Great! Let's think step by step.";
  `alpaca_distill_refer` for the other tasks, as the code does for its other data sets. The output
  is the continuation of the prefill; the prefill is not part of the target.

Instructions go in the user turn, never in a system message: the original Mistral template has no
system role. Chat records keep their own earlier turns and system message.

The trap avoided: encoding a prefill on its own and appending its ids. SentencePiece puts a "▁" at
the start of every separately encoded piece, and each template joins the assistant text differently
(" [/INST] text", "[/INST]text", "assistant\\n text"), so those ids are not the ones the model sees
when the conversation is encoded whole. `prompt_ids` renders the conversation with the prefill as
the assistant turn, cuts the text right after the prefill, and encodes it once.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ssr.tasks import Example

MODES = ("predict", "paraphrase", "rewrite")

# ---------------------------------------------------------------------------------------------------
# predict: {question} is the task text; for MBPP {tests} are its asserts, one per line (as in the MBPP
# paper's prompt, which is what names the function). Chat records are sent as they are.

PREDICT = {
    "gsm8k": "{question}\n\nSolve the problem step by step. End with a final line of the form "
             "\"The answer is N.\", where N is the final number.",
    "mbpp": "You are an expert Python programmer, and here is your task: {question} "
            "Your code should pass these tests:\n\n{tests}\n\nWrite the function in a ```python code block.",
    "nq": "Answer the question with a short answer (a few words), without explanation.\n\nQuestion: {question}",
}

# ---------------------------------------------------------------------------------------------------
# paraphrase (S3FT): {question} is the task text (for chat records, the last user turn), {gold} the
# gold answer; MBPP shows its tests again, since they fix the function's name.

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
    "chat": "Here is a request and a correct response to it.\n\nRequest:\n{question}\n\nResponse:\n{gold}\n\n"
            "Rewrite the response in your own words, keeping everything it says and its final result. "
            "Reply with the rewritten response only.",
}

# ---------------------------------------------------------------------------------------------------
# rewrite (SDFT): the template's system prompt opens the user turn; {prompt} is the predict prompt's
# user text (SDFT shows the very query it trains on), {gold} the gold answer.

REWRITE = {
    "gsm8k": "You are an expert in math. Below are a math question and its reference answer. Refer to the "
             "reference answer and write a response that appropriately answers the question.\n\n{prompt}\n\n{gold}",
    "other": "Below are an instruction that describes a task along with a reference answer. Refer to the "
             "reference answer and write your own response.\n\n### Instruction:\n{prompt}\n\n"
             "### Reference Answer:\n{gold}\n\n### Response:\n",
}
REWRITE_PREFIX = {"gsm8k": "Great! Let's think step by step."}  # other tasks: no prefill

# ---------------------------------------------------------------------------------------------------


@dataclass
class Prompt:
    messages: list[dict]  # the conversation up to the assistant turn
    prefix: str = ""  # the assistant turn's forced start (SDFT rewrite); the output continues it


def build(example: Example, mode: str) -> Prompt:
    """The prompt of one example in one mode."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    asked = predict_messages(example)
    if mode == "predict":
        return Prompt(asked)
    task = example.task
    fields = dict(question=example.question.strip(), tests="\n".join(example.tests), prompt=asked[-1]["content"],
                  gold=clean_gold(example))
    if mode == "paraphrase":
        text = PARAPHRASE[task].format(**fields)
        return Prompt(asked[:-1] + [{"role": "user", "content": text}])
    text = REWRITE.get(task, REWRITE["other"]).format(**fields)
    return Prompt(asked[:-1] + [{"role": "user", "content": text}], REWRITE_PREFIX.get(task, ""))


def predict_messages(example: Example) -> list[dict]:
    """The task as a user asks it: the prompt of predict mode, and of training."""
    if example.task == "chat":
        if not example.messages or example.messages[-1]["role"] != "user":
            raise ValueError(f"chat example {example.id}: the prompt must end with a user turn")
        return list(example.messages)
    text = PREDICT[example.task].format(question=example.question.strip(), tests="\n".join(example.tests))
    return [{"role": "user", "content": text}]


def clean_gold(example: Example) -> str:
    """The gold answer as shown to the model: GSM8K's <<48/2=24>> calculator notes removed, MBPP's CRLFs undone."""
    if example.task == "gsm8k":
        return re.sub(r"<<[^<>]*>>", "", example.gold).strip()
    return example.gold.replace("\r\n", "\n").strip()


def gold_response(example: Example) -> str:
    """The gold answer as a training target (SFT, and every method's fallback), in the predict prompt's form.

    GSM8K keeps the dataset's worked solution ending in "#### N"; MBPP's code goes in the ```python
    block the prompt asks for; NQ answers with its first alias.
    """
    if example.task == "mbpp":
        return f"```python\n{clean_gold(example)}\n```"
    return clean_gold(example)


def prompt_ids(tok, prompt: Prompt) -> list[int]:
    """Token ids of the prompt, ending with the generation prompt, or with the prefill when there is one."""
    if not prompt.prefix:
        return tok.apply_chat_template(prompt.messages, add_generation_prompt=True)
    text = tok.render_chat(prompt.messages + [{"role": "assistant", "content": prompt.prefix}])
    end = text.rindex(prompt.prefix) + len(prompt.prefix)  # what follows is the template's end-of-turn
    return tok.encode(text[:end])
