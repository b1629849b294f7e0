"""What the four scripts share at the command line: flag types that check values where they are parsed, one
`error:` line instead of a traceback, Ctrl-C that says what was kept, and checks run before anything is written.

The trap avoided: a bad value found deep inside a run (a `random.sample` traceback for a negative --limit,
a settings file already written when the model path turns out to be a typo). Every flag value is checked by
its argparse type, every input (model, adapter, tokenizer, task records) is read before an output is
touched, and only then are the settings guard and the lock of ssr/runfiles.py taken.

Errors print as one line, `error: ...` (exit 1; a bad flag exits 2). SSR_DEBUG=1 in the environment shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

import torch

DEBUG_ENV = "SSR_DEBUG"


class Interrupted(Exception):
    """Raised from a KeyboardInterrupt by code that knows what was kept; `main` prints it as one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as one `error:` line (exit 2) rather than usage plus an error."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} -h)\n")


# ---------------------------------------------------------------------------------------------------------
# flag types: argparse names the flag in the message ("argument --limit: expected an integer >= 1, got '0'")


def _number(kind: Callable, text: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def int_at_least(low: int):
    def parse(text: str) -> int:
        value = _number(int, text)
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)  # --limit, batch sizes, --epochs, --max-new-tokens, --lora-r, ...
nonnegative_int = int_at_least(0)  # --top-k (0: all tokens), --save-every (0: at the end)


def float_in(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False):
    """A finite float in the interval; e.g. float_in(0, 1, low_open=True) is (0, 1]."""
    shown = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"

    def parse(text: str) -> float:
        value = _number(float, text)
        if value < low or value > high or (low_open and value == low) or (high_open and value == high):
            raise argparse.ArgumentTypeError(f"expected a number in {shown}, got {text!r}")
        return value
    parse.__name__ = f"number in {shown}"
    return parse


nonnegative_float = float_in(0)  # --temperature (0: greedy), --weight-decay, --max-grad-norm (0: off)
positive_float = float_in(0, low_open=True)  # --lr, --lora-alpha, --timeout
probability = float_in(0, 1, low_open=True)  # --top-p
fraction = float_in(0, 1, high_open=True)  # --warmup, --lora-dropout


# ---------------------------------------------------------------------------------------------------------
# checks of inputs, before anything is written


def device_and_dtype(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The scripts' one rule: device auto = cuda if present; dtype auto = bfloat16 on CUDA, float32 elsewhere
    (bf16 matmuls are slow on CPUs). LoRA weights and the loss are float32 whatever this says."""
    try:
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch sees no CUDA device (use --device cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here (use --device cpu)")
    if dtype == "auto":
        return dev, torch.bfloat16 if dev.type == "cuda" else torch.float32
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {dtype!r}: expected auto, float32, bfloat16 or float16")
    return dev, getattr(torch, dtype)


def require_chat_template(tok, model: str) -> None:
    """Scripts that prompt the model need a chat template: say which flag gives one."""
    from ssr.tokenizer import TEMPLATES
    if tok.chat_template is None:
        raise ValueError(f"--model {model}: its tokenizer has no chat template this project recognises; "
                         f"pass --chat-template, one of {', '.join(TEMPLATES)}")


def load_adapter(model, folder) -> None:
    """`lora.load_adapter` for the scripts' --adapter, with what it does not check named by file and field: an
    adapter_config.json whose r, lora_alpha or lora_dropout is null or not a number (PEFT writes null for
    "unset" elsewhere), and weights that are not finite (a diverged run's adapter would score as a model)."""
    from ssr import lora
    from ssr.checkpoint import read_json
    path = Path(folder) / lora.CONFIG_FILE
    cfg = read_json(path, "adapter config") if path.is_file() else {"r": 1, "lora_alpha": 1}  # missing: lora says so
    for key, low, zero_ok in (("r", 1, False), ("lora_alpha", 0, False), ("lora_dropout", 0, True)):
        value = cfg.get(key, 0.0 if zero_ok else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value < low or (value == low and not zero_ok) or (key == "r" and not isinstance(value, int)):
            raise ValueError(f"{path}: field {key!r} must be a {'whole ' if key == 'r' else ''}number "
                             f"{'>= 0' if zero_ok else '> 0'}, got {json.dumps(value)}")
    lora.load_adapter(model, folder)
    for name, tensor in lora.peft_tensors(model).items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{Path(folder) / lora.WEIGHTS_FILE}: tensor {name} holds NaN or infinite values "
                             "(a diverged training run?); this adapter cannot be scored or used")


def refuse_output_over_inputs(out, written, inputs: dict[str, object]) -> None:
    """Nothing a script writes may be one of its inputs or lie inside an input folder: `--out` equal to the task
    file would append answers to the questions, evaluate.py's results would replace a SQuAD .json, a run folder
    inside the model folder would mix with its files. written: every path the script writes for `--out` (the
    output, its settings and lock files, files beside it); inputs: {"--flag": path or None}, paths that do not
    exist (a model's name) being no files. Checked before anything is written; symlinks are followed."""
    sources = {flag: Path(str(value)).expanduser().resolve() for flag, value in inputs.items()
               if value is not None and Path(str(value)).expanduser().exists()}
    for path in written:
        target = Path(path).expanduser().resolve()
        for flag, source in sources.items():
            if target == source or (source.is_dir() and source in target.parents):
                shown = "" if Path(path) == Path(out) else f" ({Path(path).name}, written for it)"
                where = "is" if target == source else "lies inside"
                raise ValueError(f"--out {out}{shown} {where} {flag} {inputs[flag]}: writing it would destroy an "
                                 "input; choose an output that is no input")


# ---------------------------------------------------------------------------------------------------------
# running a script


def main(body: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a script's body: its exit code, or 1 after one `error:` line, or 130 after one `interrupted:` line.
    A bad flag (argparse) still exits by SystemExit(2). SSR_DEBUG=1 re-raises instead, with the traceback."""
    argv = sys.argv[1:] if argv is None else argv
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return body(argv)
    except (Interrupted, KeyboardInterrupt) as e:
        if debug:
            raise
        kept = str(e) if isinstance(e, Interrupted) else "nothing new was kept"
        print(f"interrupted: {kept}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001: the point is one line, whatever went wrong
        if debug:
            raise
        if isinstance(e, (ValueError, OSError, FloatingPointError)):  # a user's input or a file: the message says it
            message = str(e)
        else:  # a bug: keep where it happened, ask for the traceback
            frame = traceback.extract_tb(e.__traceback__)[-1]
            message = (f"internal error {type(e).__name__}: {e} (at {os.path.basename(frame.filename)}:{frame.lineno}); "
                       f"rerun with {DEBUG_ENV}=1 for the traceback")
        print(f"error: {message}", file=sys.stderr)
        return 1
