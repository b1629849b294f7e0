"""Chat records: any conversation to train on, in JSONL as {"messages": [{role, content}, ...]} ending in the
assistant turn to learn (the OpenAI / Hugging Face chat layout), or {"prompt", "response"}. Here: the loader
(the target turn split off, earlier turns and system message kept), the prompt of each mode (predict sends the
conversation as it is) and the gold form.

There is no rule judge: a free-form response has no rule to check it, so chat records are judged by the LLM
judge only (`JUDGE`; --judge llm), and ssr.harness.judges.judge refuses them rather than guessing.
"""
from __future__ import annotations

from ssr.harness.tasks import JUDGE_VERDICT, REWRITE_OTHER, STR, Example, _check, _messages, plain_gold

FIELDS = {}  # "messages", or "prompt" and "response": checked by from_record


def from_record(row: dict, index: int, where: str) -> Example:
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


# ---------------------------------------------------------------------------------------------------
# prompts (what each mode is for: ssr/harness/tasks/__init__.py). {question} is the last user turn.

PARAPHRASE = ("Here is a request and a correct response to it.\n\nRequest:\n{question}\n\nResponse:\n{gold}\n\n"
              "Rewrite the response in your own words, keeping everything it says and its final result. "
              "Reply with the rewritten response only.")
REWRITE, REWRITE_PREFIX = REWRITE_OTHER, ""
JUDGE = ("You are grading a response to a request against a reference response.\n\nRequest:\n{question}\n\n"
         "Reference response:\n{reference}\n\nResponse:\n{response}\n\nThe response is CORRECT if it is "
         "acceptable in place of the reference: it gives the same result or answer and says nothing wrong; "
         "wording and length may differ. Otherwise it is INCORRECT. " + JUDGE_VERDICT)


def fields(example: Example) -> dict:
    return dict(question=example.question.strip(), gold=clean_gold(example), reference=clean_gold(example))


def predict_messages(example: Example) -> list[dict]:
    """The conversation as the record gives it, up to its last user turn."""
    if not example.messages or example.messages[-1]["role"] != "user":
        raise ValueError(f"chat example {example.id}: the prompt must end with a user turn")
    return list(example.messages)


clean_gold = gold_response = plain_gold  # the last assistant turn, as written


judge_example = None  # no rule judge: the LLM judge only
unfit = None  # no target-quality rule
