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

The traps avoided: reading a verdict into text that does not give one, and trusting the endpoint. The judge
must end its reply with a line "Verdict: CORRECT" or "Verdict: INCORRECT" (any case); no such last line, a
verdict line followed by more text, verdict lines that disagree (one quoted from the judged answer), any other
word, a reply cut at its length limit, or a CORRECT for an answer that carries a verdict line of its own is a
reject, never an accept. The endpoint's reply is read with a
size cap and checked for its shape; a redirect is refused; a credential is never written or printed.
"""
from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import os
import queue
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Iterator, Sequence

from ssr import lora
from ssr.harness import judges
from ssr.harness.records import resume_records
from ssr.harness.runfiles import read_records
from ssr.harness.tasks import JUDGE, Example, judge_messages

KINDS = ("rule", "llm", "both")  # --judge: the rule judge, the LLM judge, or both must accept
UNPARSEABLE = "unparseable judge output"
CUT = "judge reply cut at its length limit (finish_reason length)"
INJECTED = "judge says CORRECT, but the judged answer has a verdict line of its own the judge may repeat"
API_KEY_ENV = ("SSR_JUDGE_API_KEY", "OPENAI_API_KEY")  # the first one set is sent as a Bearer token
DEFAULT_TIMEOUT = 120.0  # seconds per request (--judge-timeout)
MAX_REPLY_BYTES = 1 << 20  # a judge's reply is a few hundred tokens; a bigger one is an error, never stored
_ERROR_BODY_BYTES = 1 << 16  # of an HTTP error's body, read to show its start (redacted)

# "Verdict: CORRECT" alone on its line; markdown emphasis, quotation marks and a final full stop allowed around
# it, not a quote block ("> Verdict: ..." repeats someone else's words).
_VERDICT_LINE = re.compile(r"[ \t*_#`\"'-]*verdict[ \t*_`\"']*:[ \t*_`\"']*(correct|incorrect)[ \t*_`\"'.!]*",
                           re.IGNORECASE | re.ASCII)


def parse_verdict(text: str, finish_reason: str | None = None, judged: str = "") -> judges.Verdict:
    """The judge's verdict in its reply: its last non-empty line must be the verdict line, and no other line
    may be a verdict line that disagrees. A verdict line followed by more text (a retraction, a second thought,
    the judged answer repeated) counts for nothing; so does a reply cut at the length limit, whatever it says.
    `judged`, the answer judged: if it has a verdict line of its own, a CORRECT does not count either (a judge
    that repeats the answer and stops ends with the answer's line, not its own)."""
    if finish_reason == "length":
        return judges.Verdict(False, CUT, "cut")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    words = {m.group(1).lower() for line in lines if (m := _VERDICT_LINE.fullmatch(line))}
    if not lines or not _VERDICT_LINE.fullmatch(lines[-1]) or len(words) != 1:
        return judges.Verdict(False, UNPARSEABLE, "unparseable")
    word = words.pop()
    if word == "correct" and any(_VERDICT_LINE.fullmatch(line.strip()) for line in judged.splitlines()):
        return judges.Verdict(False, INJECTED, "injected")
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

    def replies(self, conversations: list[list[dict]], ids: Sequence[str]) -> Iterator[tuple[int, str, str]]:
        """(index, reply text, finish_reason) for each conversation. The prompts are checked against the judge
        model's context before anything is generated (a cache past it would compute positions it never saw)."""
        from ssr import checkpoint, sampling, tokenizer  # the model is loaded only if something is judged
        from ssr.harness.records import check_context
        if self.model is None:
            self.model = checkpoint.load_model(self.name, device=self.device,
                                               **({"dtype": self.dtype} if self.dtype else {}))
            self.tok = tokenizer.load_tokenizer(self.name)
        prompts = [self.tok.apply_chat_template(c, add_generation_prompt=True) for c in conversations]
        try:
            check_context(self.model, [(id, len(p)) for id, p in zip(ids, prompts)], self.max_new_tokens)
        except ValueError as e:  # the same rule as generation's; the flag that bounds the judge's reply is another
            raise ValueError(f"LLM judge {self.name}: {e}".replace("--max-new-tokens", "--judge-max-new-tokens"))
        with lora.disabled(self.model):
            done = sampling.complete(self.model, prompts, self.max_new_tokens, 0.0, stop_ids=self.tok.stop_ids,
                                     batch_size=self.batch_size)
        return ((i, self.tok.decode(c.tokens), c.finish_reason) for i, c in enumerate(done))


class EndpointJudge:
    """An OpenAI-compatible chat-completions endpoint as the judge (temperature 0). `url` is the server's base
    ("http://host:8000/v1", a query string kept at the end) or the full ".../chat/completions" address; `model`
    the served model's name. Each request is tried `retries` + 1 times (on connection errors, dropped
    connections, timeouts, HTTP 429 and 5xx) with growing pauses; `workers` requests are in flight together.

    Credentials: the key ($SSR_JUDGE_API_KEY, else $OPENAI_API_KEY) is sent as a Bearer token; user:password@ in
    the URL is sent instead as HTTP Basic auth (a proxy in front of the server). Neither is ever written or
    printed: `url` and `settings` hold the address without them, and an error body that echoes them back is
    redacted. Over plain http:// to a host other than this machine, a warning says they travel unencrypted.
    A redirect is refused, naming where it leads: urllib would resend the POST as a bodiless GET, perhaps to
    another host with the key."""

    def __init__(self, url: str, model: str, *, max_new_tokens: int = 256, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = 3, backoff: float = 1.0, workers: int = 8):
        shown = public_url(url)
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018: a port that is not a number raises here
        except ValueError as e:  # its message may quote the whole host part, user:password@ included
            userinfo = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)@", url)
            problem = str(e).replace(userinfo.group(1), "[redacted]") if userinfo else str(e)
            raise ValueError(f"--judge-url {shown!r}: not a URL ({problem})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--judge-url {shown!r}: expected an http:// or https:// address with a host")
        path = parts.path if parts.path.rstrip("/").endswith("/chat/completions") else \
            parts.path.rstrip("/") + "/chat/completions"
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], path, parts.query, ""))
        self.model, self.max_new_tokens, self.timeout = model, max_new_tokens, timeout
        self.retries, self.backoff, self.workers = retries, backoff, workers
        self.settings = {"model": model, "url": self.url, "max_new_tokens": max_new_tokens}
        self._headers = {"Content-Type": "application/json"}
        key = next((os.environ[k] for k in API_KEY_ENV if os.environ.get(k)), None)
        if "@" in parts.netloc:
            user, password = (urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or ""))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"
            self._secrets = [f"{user}:{password}", password, token]
        elif key:
            self._headers["Authorization"] = f"Bearer {key}"
            self._secrets = [key]
        else:
            self._secrets = []
        self._secrets = sorted({s for s in self._secrets if s}, key=len, reverse=True)
        if "Authorization" in self._headers and parts.scheme == "http" and not _is_loopback(parts.hostname):
            print(f"warning: --judge-url {self.url}: the judge's credentials travel unencrypted over http:// to "
                  f"{parts.hostname}; use https://", file=sys.stderr)
        self._opener = urllib.request.build_opener(_NoRedirect)

    def replies(self, conversations: list[list[dict]], ids: Sequence[str]) -> Iterator[tuple[int, str, str]]:
        """(index, reply text, finish_reason) as each reply arrives. An item that fails (refused, too big, not a
        chat-completions reply, out of retries) is raised, naming the first such example, only after every other
        item has been yielded, so that its verdicts are kept. On Ctrl-C the replies already received are yielded
        before KeyboardInterrupt goes on; requests still in flight are abandoned (daemon threads: the process
        does not wait for them)."""
        todo, done, stop = queue.Queue(), queue.Queue(), threading.Event()
        for i in range(len(conversations)):
            todo.put(i)

        def work():
            while not stop.is_set():
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.put((i, *self.ask(conversations[i], ids[i]), None))
                except Exception as e:  # noqa: BLE001: raised in the caller's thread, after the others
                    done.put((i, None, None, e))

        for _ in range(min(self.workers, len(conversations))):
            threading.Thread(target=work, daemon=True).start()
        failed = {}
        try:
            for _ in range(len(conversations)):
                i, text, finish, error = done.get()
                if error is None:
                    yield i, text, finish
                else:
                    failed[i] = error
        except KeyboardInterrupt:
            stop.set()
            while not done.empty():  # received already: kept
                i, text, finish, error = done.get_nowait()
                if error is None:
                    yield i, text, finish
            raise
        finally:
            stop.set()
        if failed:
            raise failed[min(failed)]

    def ask(self, messages: list[dict], id: str | None = None) -> tuple[str, str | None]:
        """One request: (the reply's text, its finish_reason). Errors name the URL and the example."""
        where = f"judge endpoint {self.url}" + (f": example {id!r}" if id is not None else "")
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_new_tokens}).encode()
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
                with self._opener.open(request, timeout=self.timeout) as reply:
                    raw = _read_capped(reply)
                break
            except urllib.error.HTTPError as e:
                if 300 <= e.code < 400:
                    raise EndpointError(f"{where}: HTTP {e.code} redirect to {_target(self.url, e.headers)} refused "
                                        "(a redirected POST loses its body); give the final URL as --judge-url") \
                        from None
                problem = f"HTTP {e.code} {e.reason}: {self._error_body(e)}"
                if e.code != 429 and e.code < 500:
                    raise EndpointError(f"{where}: {problem}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                # refused, reset or dropped mid-reply (RemoteDisconnected, IncompleteRead), timed out: retried
                reason = getattr(e, "reason", e)
                name, text = type(reason).__name__, str(reason)
                problem = self._redact(text if text.startswith(name) else f"{name}: {text}" if text else name)
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        else:
            raise EndpointError(f"{where}: {problem} (after {self.retries + 1} attempts)")
        if len(raw) > MAX_REPLY_BYTES:
            raise EndpointError(f"{where}: reply larger than {MAX_REPLY_BYTES} bytes (MAX_REPLY_BYTES); not stored")
        try:
            return _reply_text(json.loads(raw))
        except (ValueError, RecursionError) as e:  # not JSON, not UTF-8, nested past the parser, the wrong shape
            raise EndpointError(f"{where}: not a chat-completions reply ({self._redact(str(e))[:200]})") from None

    def _error_body(self, e: urllib.error.HTTPError) -> str:
        try:
            text = e.read(_ERROR_BODY_BYTES).decode(errors="replace")
        except (OSError, http.client.HTTPException):
            text = ""
        return " ".join(self._redact(text).split())[:300]

    def _redact(self, text: str) -> str:
        """`text` without this judge's credentials, nor any Authorization value or Bearer/Basic token in it."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        text = re.sub(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,;}]+", r"\1[redacted]", text)
        return re.sub(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;}]+", r"\1\2[redacted]", text)


class EndpointError(ConnectionError):  # an OSError: the scripts print it as one error line
    pass


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx then reaches EndpointJudge.ask as an HTTPError
        return None


def _read_capped(reply) -> bytes:
    """The reply's body, at most MAX_REPLY_BYTES + 1 bytes of it (more is the caller's error). A body that ends
    short of its Content-Length is http.client.IncompleteRead (a connection dropped mid-body): read(n) itself
    would return the part quietly."""
    raw = bytearray()
    while len(raw) <= MAX_REPLY_BYTES:
        chunk = reply.read(MAX_REPLY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) <= MAX_REPLY_BYTES and getattr(reply, "length", None):  # bytes still announced, none coming
        raise http.client.IncompleteRead(bytes(raw), reply.length)
    return bytes(raw)


def _reply_text(data) -> tuple[str, str | None]:
    """The text and finish_reason of a chat-completions reply; ValueError saying what is wrong with its shape."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices[0]")
    message, finish = choices[0].get("message"), choices[0].get("finish_reason")
    if not isinstance(message, dict):
        raise ValueError("choices[0] has no message")
    if finish is not None and not isinstance(finish, str):
        raise ValueError(f"choices[0].finish_reason is {_shown(finish)}, not a string")
    content = message.get("content")
    if content is None and finish == "length":  # cut before any text (a reasoning model): a cut reply
        return "", finish
    if not isinstance(content, str):
        raise ValueError(f"choices[0].message.content is {_shown(content)}, not a string")
    return content, finish


def _shown(value) -> str:
    return json.dumps(value)[:60]


def _target(url: str, headers) -> str:
    """Where a redirect leads, without credentials or query: scheme://host:port/path."""
    location = headers.get("Location") if headers is not None else None
    if not location:
        return "(no Location)"
    parts = urllib.parse.urlsplit(urllib.parse.urljoin(url, location))
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def public_url(url: str | None) -> str | None:
    """`url` without user:password@ (what settings, verdicts and messages show); otherwise exactly as given, so
    that settings recorded before stay equal. A string match, as urlsplit finds the host (up to the first /, ?
    or #, after the last @), so that even an address urlsplit refuses is shown without them."""
    return url and re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@", r"\1", url)


def flag_settings(args) -> dict | None:
    """What a script records of its --judge flags beside its output: None for the rule judge (left out, so that
    settings files written before the LLM judge existed still match)."""
    if args.judge == "rule":
        return None
    return {"judge": args.judge, "model": args.judge_model, "url": public_url(args.judge_url),
            "max_new_tokens": args.judge_max_new_tokens}  # not --judge-timeout: it changes no verdict


def require_named(kind: str, judge_model: str | None) -> None:
    """An LLM judge must be named (the scripts call this before loading any model): with no --judge-model the
    model being trained would judge itself, which the papers never do (they judge with Mixtral-8x7B or GPT-4)."""
    if kind != "rule" and not judge_model:
        raise ValueError(f"--judge {kind} needs --judge-model: a judge stronger than the model judged (an HF folder, "
                         "or with --judge-url the served model's name; SSR's paper used Mixtral-8x7B and GPT-4), "
                         "or --judge-model self to judge with the model being trained, adapters off")


def make_judge(kind: str, judge_model: str | None = None, judge_url: str | None = None, *, own=None,
               max_new_tokens: int = 256, batch_size: int = 8, device="cpu", dtype=None,
               timeout: float = DEFAULT_TIMEOUT):
    """The judge the scripts' flags ask for, or None for the rule judge. judge_model: an HF folder or the default
    model's name, or "self" (with `own` = (model, tok, its name): the model being trained, adapters off); with
    judge_url, the served model's name. It must be named: an LLM judge with no model named is an error, never
    the model being trained by default (the papers judge with a much stronger model: Mixtral-8x7B, GPT-4)."""
    if kind not in KINDS:
        raise ValueError(f"--judge {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "rule":
        return None
    require_named(kind, judge_model)
    if judge_url:
        if not judge_model or judge_model == "self":
            raise ValueError("--judge-url needs --judge-model: the name the endpoint serves its model under")
        judge = EndpointJudge(judge_url, judge_model, max_new_tokens=max_new_tokens, timeout=timeout)
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
    "unfit", "judge": the judge's settings, "judge_prompt": its prompt's name, "judge_output": its raw text,
    "judged": `judges.judged_digest`}, plus "rule": the rule judge's verdict when both must accept. Verdicts are
    appended as the judge's replies come, `chunk` requests at a time, so a killed run loses at most one chunk;
    an item the judge fails on is raised, naming it, after the rest of its chunk is appended, and Ctrl-C keeps
    the replies received, so a rerun resumes after them. A file holding verdicts of another judge is refused,
    naming both. The loop is `ssr.harness.records.resume_records`: under torchrun the chunks are dealt to the
    ranks, each answer judged once, and the verdicts merged in the one-process order."""
    existing = read_records(out_path)
    other = next((v.get("judge", {"judge": "rule"}) for v in existing if v.get("judge") != judge.settings), None)
    if other is not None:
        raise ValueError(f"{out_path} holds verdicts of another judge ({_named(other)}); this judge is "
                         f"{_named(judge.settings)}: use another output, or delete it to start over")

    def work(batch):  # one chunk of requests; replies as they come, an item refused raised after the others
        cases = [(examples[str(r["id"])], r["output"]) for r in batch]
        replies = judge.replies([judge_messages(example, output) for example, output in cases],
                                [example.id for example, _ in cases])
        return (_verdict(judge, batch[i], *cases[i], text, finish_reason) for i, text, finish_reason in replies)

    resume_records(out_path, judges.pending_records(examples, records), work, batch_size=chunk,
                   desc="LLM judging", progress=progress, settings={"judge": judge.settings},
                   stamp=lambda r: {"judged": judges.judged_digest(examples[str(r["id"])], r["output"])})
    return judges.verdicts_in_order(out_path, records)


def _verdict(judge, record: dict, example: Example, output: str, text: str, finish_reason: str | None) -> dict:
    verdict = parse_verdict(text, finish_reason, output)
    out = {"id": example.id, "mode": record.get("mode"), "task": example.task, "correct": verdict.correct,
           "kind": verdict.kind, "reason": verdict.reason, "unfit": judges.unfit_target(example.task, output),
           "judge": judge.settings, "judge_prompt": prompt_name(example.task), "judge_output": text,
           "judged": judges.judged_digest(example, output)}
    if judge.both:  # both must accept; the rule's verdict is kept beside the judge's
        rule = judges.judge(example, output)
        out["rule"] = {"correct": rule.correct, "kind": rule.kind, "reason": rule.reason}
        if not rule.correct:
            out.update(correct=False, kind=f"rule: {rule.kind}", reason=f"{verdict.reason}; rule: {rule.reason}")
    return out


def _named(settings: dict) -> str:
    if settings.get("judge", "rule") == "rule":
        return "the rule judge"
    where = f" at {public_url(settings['url'])}" if settings.get("url") else ""  # a file of before may hold them
    return f"--judge {settings['judge']} with model {settings.get('model')!r}{where}, " \
           f"max_new_tokens {settings.get('max_new_tokens')}"
