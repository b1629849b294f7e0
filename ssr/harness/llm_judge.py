"""The LLM judge: a chat model reads the question (and its passages), the reference answer and a response, and
says whether the response is acceptable, as SSR's paper does (Mixtral-8x7B or GPT-4 as the judge) and S3FT on
NQ (Mistral-7B-Instruct judging itself). It works for every task, also where no rule can judge (open-ended
chat records). The prompts, one per kind of task, are `ssr.harness.tasks.JUDGE`.

Two ways to run the judge model, with the same prompts and greedy decoding:
- `ModelJudge`: any chat model this project loads (an HF folder, the default model, or the model being trained,
  its adapters off), through the project's own batched sampler;
- `EndpointJudge`: an OpenAI-compatible chat-completions endpoint (vLLM, TGI, ...) for a large judge, over the
  standard library's HTTP, the key read from $SSR_JUDGE_API_KEY (else $OPENAI_API_KEY; none is sent without).

`judge_records` judges generation records into a resumable verdicts file, like `judges.judge_records`; each
verdict keeps the judge's raw text and its settings, and a file judged by one judge is never continued by another.

The trap avoided: reading a verdict into text that does not give one. The judge must write a line
"Verdict: CORRECT" or "Verdict: INCORRECT" (any case); no such line, lines that disagree, or any other word
is a reject with reason "unparseable judge output", never an accept.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from tqdm import tqdm

from ssr import lora
from ssr.harness import judges
from ssr.harness.runfiles import append_records, read_records
from ssr.harness.tasks import JUDGE, Example, judge_messages

KINDS = ("rule", "llm", "both")  # --judge: the rule judge, the LLM judge, or both must accept
UNPARSEABLE = "unparseable judge output"
API_KEY_ENV = ("SSR_JUDGE_API_KEY", "OPENAI_API_KEY")  # the first one set is sent as a Bearer token

# "Verdict: CORRECT" alone on its line; markdown emphasis, quotes and a final full stop allowed around it.
_VERDICT_LINE = re.compile(r"^[ \t*_#>`\"'-]*verdict[ \t*_`\"']*:[ \t*_`\"']*(correct|incorrect)[ \t*_`\"'.!]*$",
                           re.IGNORECASE | re.MULTILINE)


def parse_verdict(text: str) -> judges.Verdict:
    """The judge's verdict in its output: accept only on verdict lines that all say CORRECT."""
    words = {w.lower() for w in _VERDICT_LINE.findall(text)}
    if len(words) != 1:  # none, or CORRECT and INCORRECT both
        return judges.Verdict(False, UNPARSEABLE, "unparseable")
    word = words.pop()
    return judges.Verdict(word == "correct", f"judge says {word.upper()}", word)


def prompt_name(task: str) -> str:
    """The judge prompt's name and a digest of its text: a verdict file records which wording judged it."""
    return f"{task}:{hashlib.sha256(JUDGE[task].encode()).hexdigest()[:8]}"


class ModelJudge:
    """A chat model of this project as the judge, greedy, in batches. `model`/`tok` given: use them (the model
    being trained: its adapters are switched off while it judges); else load `name` on first use."""

    def __init__(self, name: str, model=None, tok=None, *, max_new_tokens: int = 256, batch_size: int = 8,
                 device="cpu", dtype=None):
        self.name, self.model, self.tok = name, model, tok
        self.max_new_tokens, self.batch_size, self.device, self.dtype = max_new_tokens, batch_size, device, dtype
        self.settings = {"model": name, "url": None, "max_new_tokens": max_new_tokens}

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        from ssr import checkpoint, sampling, tokenizer  # the model is loaded only if something is judged
        if self.model is None:
            self.model = checkpoint.load_model(self.name, device=self.device,
                                               **({"dtype": self.dtype} if self.dtype else {}))
            self.tok = tokenizer.load_tokenizer(self.name)
        prompts = [self.tok.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
        with lora.disabled(self.model):
            done = sampling.complete(self.model, prompts, self.max_new_tokens, 0.0, stop_ids=self.tok.stop_ids,
                                     batch_size=self.batch_size)
        return [self.tok.decode(c.tokens) for c in done]


class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint as the judge (temperature 0). `url` is the server's base
    ("http://host:8000/v1") or the full ".../chat/completions" address; `model` the served model's name. Each
    request is tried `retries` + 1 times (on connection errors, timeouts, HTTP 429 and 5xx) with growing pauses."""

    def __init__(self, url: str, model: str, *, max_new_tokens: int = 256, timeout: float = 120.0, retries: int = 3,
                 backoff: float = 1.0, workers: int = 8):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--judge-url {url!r}: expected an http:// or https:// address")
        self.url = url if url.rstrip("/").endswith("/chat/completions") else url.rstrip("/") + "/chat/completions"
        self.model, self.max_new_tokens, self.timeout = model, max_new_tokens, timeout
        self.retries, self.backoff, self.workers = retries, backoff, workers
        self.settings = {"model": model, "url": self.url, "max_new_tokens": max_new_tokens}

    def complete(self, conversations: list[list[dict]]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.workers) as pool:  # requests in flight together; order kept
            return list(pool.map(self.ask, conversations))

    def ask(self, messages: list[dict]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_new_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        key = next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                    data = json.loads(reply.read())
                return data["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}: {e.read()[:300].decode(errors='replace')}"
                if e.code != 429 and e.code < 500:
                    raise EndpointError(f"judge endpoint {self.url}: {problem}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                problem = str(getattr(e, "reason", e))
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise EndpointError(f"judge endpoint {self.url}: not a chat-completions reply ({e!r})") from None
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise EndpointError(f"judge endpoint {self.url}: {problem} (after {self.retries + 1} attempts)")


class EndpointError(ConnectionError):  # an OSError: the scripts print it as one error line
    pass


def flag_settings(args) -> dict | None:
    """What a script records of its --judge flags beside its output: None for the rule judge (left out, so that
    settings files written before the LLM judge existed still match)."""
    if args.judge == "rule":
        return None
    return {"judge": args.judge, "model": args.judge_model, "url": args.judge_url,
            "max_new_tokens": args.judge_max_new_tokens}


def make_judge(kind: str, judge_model: str | None = None, judge_url: str | None = None, *, own=None,
               max_new_tokens: int = 256, batch_size: int = 8, device="cpu", dtype=None):
    """The judge the scripts' flags ask for, or None for the rule judge. judge_model: an HF folder or the default
    model's name, or "self" (with `own` = (model, tok, its name): the model being trained, adapters off); with
    judge_url, the served model's name."""
    if kind not in KINDS:
        raise ValueError(f"--judge {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "rule":
        return None
    if judge_url:
        if not judge_model or judge_model == "self":
            raise ValueError("--judge-url needs --judge-model: the name the endpoint serves its model under")
        judge = EndpointJudge(judge_url, judge_model, max_new_tokens=max_new_tokens)
    elif judge_model in (None, "self") or (own is not None and judge_model == own[2]):
        if own is None:
            raise ValueError("--judge-model self means the model being trained, which only train.py has; "
                             "give an HF folder or the default model's name")
        model, tok, name = own
        judge = ModelJudge(f"self ({name})", model, tok, max_new_tokens=max_new_tokens, batch_size=batch_size)
    else:
        judge = ModelJudge(str(judge_model), max_new_tokens=max_new_tokens, batch_size=batch_size, device=device,
                           dtype=dtype)
    judge.both = kind == "both"
    judge.settings = {"judge": kind, **judge.settings}
    return judge


def judge_records(judge, examples: dict[str, Example], records: Sequence[dict], out_path, *, chunk: int = 16,
                  progress: bool = True) -> list[dict]:
    """Judge generation records ({"id", "mode", "output", ...}) with the LLM judge into a resumable verdicts
    JSONL file; returns the verdict records of `records`, in their order.

    Appends, for each (id, mode) that `out_path` lacks, {"id", "mode", "task", "correct", "kind", "reason",
    "unfit", "judge": the judge's settings, "judge_prompt": its prompt's name, "judge_output": its raw text},
    plus "rule": the rule judge's verdict when both must accept. Verdicts are appended `chunk` at a time, so a
    killed run loses at most one chunk. A file holding verdicts of another judge is refused, naming both."""
    existing = read_records(out_path)
    other = next((v.get("judge", {"judge": "rule"}) for v in existing if v.get("judge") != judge.settings), None)
    if other is not None:
        raise ValueError(f"{out_path} holds verdicts of another judge ({_named(other)}); this judge is "
                         f"{_named(judge.settings)}: use another output, or delete it to start over")
    todo = judges.pending_records(examples, records, existing)
    with tqdm(total=len(todo), desc="LLM judging", unit="answer", disable=not progress) as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            cases = [(examples[str(r["id"])], r["output"]) for r in batch]
            texts = judge.complete([judge_messages(example, output) for example, output in cases])
            append_records(out_path, [_verdict(judge, r, example, output, text)
                                      for r, (example, output), text in zip(batch, cases, texts)])
            bar.update(len(batch))
    return judges.verdicts_in_order(out_path, records)


def _verdict(judge, record: dict, example: Example, output: str, text: str) -> dict:
    verdict = parse_verdict(text)
    out = {"id": example.id, "mode": record.get("mode"), "task": example.task, "correct": verdict.correct,
           "kind": verdict.kind, "reason": verdict.reason, "unfit": judges.unfit_target(example.task, output),
           "judge": judge.settings, "judge_prompt": prompt_name(example.task), "judge_output": text}
    if judge.both:  # both must accept; the rule's verdict is kept beside the judge's
        rule = judges.judge(example, output)
        out["rule"] = {"correct": rule.correct, "kind": rule.kind, "reason": rule.reason}
        if not rule.correct:
            out.update(correct=False, kind=f"rule: {rule.kind}", reason=f"{verdict.reason}; rule: {rule.reason}")
    return out


def _named(settings: dict) -> str:
    if settings.get("judge", "rule") == "rule":
        return "the rule judge"
    where = f" at {settings['url']}" if settings.get("url") else ""
    return f"--judge {settings['judge']} with model {settings.get('model')!r}{where}, " \
           f"max_new_tokens {settings.get('max_new_tokens')}"
