"""Files that survive being killed. Append-only JSONL is the output format of every resumable step (generate,
judge): a step skips the ids already there and appends the rest, one whole flushed line per record. Files
written whole (targets, results, settings) replace the old one at once, and `check_settings` ties every output
to the settings that made it, and `hold_lock` lets one process at a time write an output.

The trap avoided: a run killed mid-write leaves half a line at the end of the file, and appending after it
would glue the next record onto the fragment and corrupt both. So readers ignore an unterminated last line,
and the writer cuts it off (or terminates it, if it is a complete record) before appending. Only the writer
touches the file: a reader may run while the writer is still busy.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable

from ssr.checkpoint import atomic_dir  # noqa: F401  (the harness imports it from here)


def read_records(path: str | Path, *, partial_tail: bool = True) -> list[dict]:
    """All records of a JSONL file ([] if it does not exist), the one JSONL reader of the project.

    partial_tail (outputs being appended to): an unterminated last line counts only if it is valid JSON. With
    partial_tail=False (task files, written by people) every line must be valid. A malformed line, or one that
    is not a JSON object, is an error naming the file and its 1-based line.
    """
    return [record for _, record in numbered_records(path, partial_tail=partial_tail)]


def numbered_records(path: str | Path, *, partial_tail: bool = True) -> list[tuple[int, dict]]:
    """(1-based line number, record) pairs of a JSONL file: what read_records reads, with where it stands."""
    path = Path(path)
    if not path.exists():
        return []
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a JSONL file")
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop() if partial_tail else b""  # after the last newline: b"" when the file ends cleanly
    records = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                record = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise ValueError(f"{path}:{n}: JSON nested too deeply to read") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: expected a JSON object, got {type(record).__name__}")
            if b"\\u" in line and (field := lone_surrogate(record)) is not None:
                raise ValueError(f"{path}:{n}: field {field!r} holds a lone surrogate (a \\ud800-\\udfff escape "
                                 "without its pair), which is no text: it could not be written back as UTF-8")
            records.append((n, record))
    if tail.strip():
        try:
            record = json.loads(tail)
        except (ValueError, RecursionError):  # a fragment left by a killed writer (bad JSON, or cut inside a UTF-8 character)
            record = None
        if isinstance(record, dict):
            records.append((len(lines) + 1, record))
    return records


def lone_surrogate(value, name: str = "") -> str | None:
    """The name of the first field (a path like "messages[0].content") whose text holds a lone UTF-16 surrogate,
    which json.loads lets through from a "\\ud83d" escape and UTF-8 cannot encode; None if there is none."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return name or "(the value)"
    elif isinstance(value, dict):
        return next((f for k, v in value.items() if (f := lone_surrogate(k, name) or lone_surrogate(
            v, f"{name}.{k}" if name else str(k))) is not None), None)
    elif isinstance(value, list):
        return next((f for i, v in enumerate(value) if (f := lone_surrogate(v, f"{name}[{i}]")) is not None), None)
    return None


def append_records(path: str | Path, records: Iterable[dict]) -> int:
    """Append records (a generator may produce them as work finishes), flushing every line so that a killed
    run loses at most the line being written; fsync at the end. Returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(path)
    count = 0
    with open(path, "a", encoding="utf-8") as f:
        for record in records:  # outside the try: an error of the records' producer is its own
            try:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
                f.flush()
            except OSError as e:  # a full disk: the half line written is cut off by the next append (_repair_tail)
                raise OSError(e.errno, f"{path}: could not be appended to ({e.strerror or e}) after {count} new "
                                       "record(s); free some space and rerun to continue") from None
            count += 1
        os.fsync(f.fileno())
    return count


def write_atomic(path: str | Path, text: str) -> None:
    """Replace the file's content all at once: written beside it, synced, then renamed into place. A write that
    fails (a full disk) removes its temporary file and names the file and the cause."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: two writers never share it
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"{path}: could not be written ({e.strerror or e}); it is unchanged") from None


def content_digest(path: str | Path) -> str:
    """sha256 of what a file holds, or of a model or adapter folder's weights, configs and tokenizer files (each
    file's name and bytes; *.safetensors, *.bin, *.json, *.model, *.txt, *.tiktoken at its top level). What a
    cached result is tied to, rather than a path: a model retrained in place, or another file at the same
    path, gives another digest. Size and modification time are not enough (a retrained adapter has the same
    size, and a copy keeps the time), so the bytes are read: about a second per GB."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".model",
                                                                    ".txt", ".tiktoken"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0".encode())
        with open(file, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


def data_digest(items) -> str:
    """sha256 of the records a step uses (dataclasses or dicts, in order): what its cached result depends on."""
    rows = [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else i for i in items]
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False, sort_keys=True).encode("utf-8", "surrogatepass")
                          ).hexdigest()


def write_records(path: str | Path, records: Iterable[dict]) -> None:
    """A whole JSONL file, written atomically (for appending as work finishes, see append_records)."""
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def check_settings(path: str | Path, settings: dict, what: str, may_change: tuple[str, ...] = ()) -> None:
    """The one settings guard: record in `path` the settings that make `what` (a run folder, an output file);
    on a rerun, refuse other settings by name, so that a resumed step never mixes in outputs made another way.
    Keys in `may_change` (e.g. how often to checkpoint) may differ; the file then records the new values."""
    path = Path(path)
    settings = json.loads(json.dumps(settings))  # as it reads back: tuples become lists
    if path.is_file():
        saved = json.loads(path.read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v and k not in may_change}
        if changed:
            shown = lambda v: repr(v[:12] + "...") if isinstance(v, str) and len(v) == 64 else repr(v)  # noqa: E731 (a digest)
            diff = "; ".join(f"{k}: {shown(old)} -> {shown(new)}" for k, (old, new) in changed.items())
            raise ValueError(f"{what} holds results made with other settings ({diff}); use another output, "
                             "or delete it to start over")
        if saved == settings:
            return
    write_atomic(path, json.dumps(settings, indent=2))


@contextmanager
def hold_lock(out: str | Path):
    """Hold `{out}.lock` while the block runs, so that one process at a time writes `out` (a file or a run
    folder); a second is refused naming the holder. flock is dropped by the kernel when its process dies, so a
    killed run never leaves a stale lock: the lock file may stay, the lock does not."""
    path = Path(f"{out}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise FileExistsError(f"{out} is being written by another process ({holder}, holding {path}); "
                                  "wait for it to finish, or choose another output") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield path
    finally:
        f.close()  # releases the lock


def _repair_tail(path: Path) -> None:
    """Make the file end in a newline: cut off a partial last line, or terminate a complete one."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()  # the rare repair only: find where the last line starts
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            f.write(b"\n")  # a complete record: terminate it (the read left us at the end)
        except ValueError:
            f.truncate(start)
