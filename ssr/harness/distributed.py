"""Data parallel under torchrun: the same job on N processes, each with its share of the work.

    torchrun --nproc_per_node 4 train.py ...          # 4 GPUs (NCCL); CPU processes use gloo

torchrun starts the processes and gives each RANK, WORLD_SIZE and LOCAL_RANK in its environment; `init`
joins them into one process group. Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) nothing here does
anything: rank 0 of a world of 1, the same files, the same bytes.

What is shared, and how:
- generation, judging, scoring: the work items are dealt round-robin to the ranks; each rank appends its
  records to its own part file (OUT.rank{r}.jsonl), and when all are done rank 0 merges the parts into OUT
  in the order one process would have written them (`merge_parts`). A killed run leaves the parts; the
  rerun skips what any part holds, so it resumes whatever the number of ranks.
- training: every rank holds the model and all the data; a step's micro-batches are dealt to the ranks,
  and the LoRA gradients are summed over them (`all_reduce_grads`) - see ssr/trainer.py.
- only rank 0 prints (the others' stdout goes to /dev/null; errors on stderr stay) and writes shared files.

The trap avoided: a hang. A process that dies leaves the others blocked in a collective; torchrun (its
default --max-restarts 0) notices the dead worker within a second and ends the others, and the process
group's timeout ends a wait for a rank that is alive but stuck. Ranks also finish their shares at
different times, so the timeout must outlast that skew: it is long, and dying is torchrun's to detect.
"""
from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from ssr.harness import runfiles
from ssr.harness.runfiles import append_records, read_records

TIMEOUT = timedelta(minutes=30)  # a collective waiting longer than this fails (a rank stuck, not dead)


def init(device: torch.device) -> torch.device:
    """Join torchrun's process group (NCCL on CUDA, gloo on CPU); returns the device this rank computes on:
    cuda:LOCAL_RANK under torchrun on CUDA, else `device` unchanged. A no-op without torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {device} under torchrun: each process uses cuda:LOCAL_RANK; "
                             "pass --device cuda (or auto)")
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"--device {device}: torchrun runs on cuda (NCCL) or cpu (gloo)")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                            device_id=device if device.type == "cuda" else None)
    if rank() != 0:
        sys.stdout = open(os.devnull, "w")  # only rank 0 prints; every rank's errors still reach stderr
    return device


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def _device() -> torch.device:  # where collectives' tensors live: NCCL needs them on the GPU
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_sum(x: int | float) -> int | float:
    """x summed over the ranks (x itself in one process)."""
    if world() == 1:
        return x
    t = torch.tensor(x, dtype=torch.float64, device=_device())  # float64: counts stay exact
    dist.all_reduce(t)
    return type(x)(t.item())


def all_sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """The tensor summed over the ranks (t itself in one process)."""
    if world() == 1:
        return t
    out = t.to(_device())
    dist.all_reduce(out)
    return out.to(t.device)


def all_reduce_grads(params: list[torch.Tensor]) -> None:
    """Sum the parameters' gradients over the ranks, in place (one flat buffer, one message). A rank that had
    no micro-batch in the step adds zeros."""
    if world() == 1:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    dist.all_reduce(flat)
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad = g.view_as(p)


def all_gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (any picklable object)."""
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


class Ranks:
    """The trainer's `World` under torchrun (ssr.trainer.World's interface): sums over every rank."""

    @property
    def index(self) -> int:
        return rank()

    @property
    def size(self) -> int:
        return world()

    def sum(self, x):
        return all_sum(x)

    def sum_grads(self, params) -> None:
        all_reduce_grads(params)


@contextmanager
def hold_lock(out):
    """`runfiles.hold_lock` for the whole job: rank 0 holds the output's lock while every rank works, so a
    second job on the same output is refused, and the ranks of one job do not refuse each other."""
    if is_main():
        with runfiles.hold_lock(out):
            yield
    else:
        yield


@contextmanager
def main_first():
    """Rank 0 runs the block first, then the others: rank 0 checks and writes a settings file, and the
    others find it written and only read it (one writer). An error on rank 0 ends the job (torchrun)."""
    if rank() != 0:
        barrier()
    yield
    if rank() == 0:
        barrier()


# ---------------------------------------------------------------------------------------------------------
# per-rank part files of an append-only JSONL output


def own_part(path) -> Path:
    """The file this rank appends to: OUT itself in one process, OUT.rank{r}.jsonl under torchrun."""
    path = Path(path)
    return path if world() == 1 else path.with_name(f"{path.stem}.rank{rank()}{path.suffix}")


def _parts(path: Path) -> list[Path]:
    pattern = re.compile(re.escape(path.stem) + r"\.rank\d+" + re.escape(path.suffix))
    return sorted(p for p in path.parent.glob(f"{path.stem}.rank*{path.suffix}") if pattern.fullmatch(p.name))


def part_records(path, settings: dict | None = None) -> list[dict]:
    """The records of every part file of OUT (left by this run or by an interrupted one, with any number of
    ranks), read by every rank before any rank appends: the ranks must agree on what is left to do.

    `settings`: what the records are made with (generation's max_new_tokens, the judge...). Parts left by an
    interrupted run are used only if they were made with the same settings (OUT.parts.json, beside them, which
    rank 0 writes before any rank appends): else a refusal naming them, never 100-token records merged with
    20-token ones."""
    if world() == 1:
        return []
    path = Path(path)
    parts, sidecar = _parts(path), path.with_name(f"{path.stem}.parts.json")
    if parts and settings is not None:
        saved = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        if saved != json.loads(json.dumps(settings)):
            changed = "no record of their settings" if saved is None else "; ".join(
                f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in json.loads(json.dumps(settings)).items()
                if saved.get(k) != v) or "other settings"
            raise ValueError(f"{path}: the part files {', '.join(p.name for p in parts)} of an interrupted run were "
                             f"made with other settings ({changed}); delete them (and {sidecar.name}) to start "
                             "over, or rerun with the settings they were made with")
    records = [r for p in parts for r in read_records(p)]
    barrier()
    if is_main() and settings is not None and not parts:
        runfiles.write_atomic(sidecar, json.dumps(settings))
    barrier()
    return records


def merge_parts(path, order: list, key) -> None:
    """When every rank is done, rank 0 appends the parts' records to OUT, those whose key(record) is in
    `order` first and in its order (one process's order), then any others, skipping what OUT already holds
    (a merge killed halfway is redone), and deletes the parts. Every rank returns once OUT is whole."""
    if world() == 1:
        return
    barrier()
    path = Path(path)
    if is_main():
        have = {key(r) for r in read_records(path)}
        parts = {key(r): r for p in _parts(path) for r in read_records(p) if key(r) not in have}
        rank_of = {k: i for i, k in enumerate(order)}
        if parts:
            append_records(path, sorted(parts.values(), key=lambda r: rank_of.get(key(r), len(order))))
        for p in _parts(path):
            p.unlink()
        path.with_name(f"{path.stem}.parts.json").unlink(missing_ok=True)
    barrier()
