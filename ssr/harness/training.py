"""Training in a run folder: `ssr.trainer.train` with checkpoints, a metrics log, exact resume and torchrun.

Outputs under out_dir: train.json (the settings and data the run belongs to), metrics.jsonl (one line a
step), checkpoint/ (the latest), adapter/ (the final one). The trap avoided: a resumed run that silently
differs from an uninterrupted one. A checkpoint (swapped in atomically) holds the adapter, AdamW's state
and torch's RNG (LoRA dropout draws from it); the metrics file is cut back to its step; a resume with other
data, settings or loss is refused. Under torchrun each step's micro-batches are dealt to the ranks and
their LoRA gradients summed (`distributed.Ranks`): the same steps as one process; rank 0 writes.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch

from ssr import lora, trainer
from ssr.harness import distributed
from ssr.harness.runfiles import atomic_dir, check_settings, read_records, write_records
from ssr.trainer import Sample, TrainConfig

RESUMABLE_CHANGES = ("save_every", "checkpointing")  # config fields a resumed run may change


def loss_identity() -> str:
    """Which loss trains: its name and a hash of its source. Run folders record it, so that a rerun with
    another (or an edited) loss is refused rather than mixed into the same adapter."""
    try:
        source = inspect.getsource(trainer.loss)
    except (OSError, TypeError):  # defined where no source is kept (an interactive session)
        source = ""
    return f"{trainer.loss.__module__}.{trainer.loss.__qualname__} {hashlib.sha256(source.encode()).hexdigest()[:12]}"


def train(model, samples: list[Sample], cfg: TrainConfig, out_dir, resume: bool = False,
          progress: bool = True) -> list[dict]:
    """Fine-tune the model's LoRA adapters on samples into out_dir; returns this call's per-step metrics. With
    resume=True a run continues from out_dir/checkpoint (or starts, if there is none yet)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    opt = trainer.make_optimizer(model, cfg)
    plan = trainer.make_plan([len(s.ids) for s in samples], cfg)
    metrics_file = out_dir / "metrics.jsonl"
    fingerprint = hashlib.sha256(b"".join(json.dumps([s.ids, s.mask, s.source]).encode() for s in samples)).hexdigest()

    # the latest checkpoint; checkpoint.old is the previous one, left by a crash in the middle of a swap
    ckpt = next((out_dir / name for name in ("checkpoint", "checkpoint.old")
                 if (out_dir / name / "state.json").is_file()), None)
    if ckpt is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds a run (checkpoint at {ckpt}): continue it "
                              "(resume=True; rerunning train.py does), or choose another output folder")
    main = distributed.is_main()  # under torchrun, rank 0 alone writes the run's files
    with distributed.main_first():
        check_settings(out_dir / "train.json", {**asdict(cfg), "loss": loss_identity(),
                                                "data_fingerprint": fingerprint},
                       f"training run {out_dir}", may_change=RESUMABLE_CHANGES)
    start = 0
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, opt)
        if metrics_file.is_file() and main:  # drop the steps after the checkpoint: they are logged again
            write_records(metrics_file, [r for r in read_records(metrics_file) if r["step"] <= start])
        print(f"resuming {out_dir} after step {start} of {len(plan)}")
    else:
        if resume:
            print(f"no checkpoint in {out_dir}: starting a new run")
        torch.manual_seed(cfg.seed + distributed.rank())  # LoRA dropout draws from torch's RNG, its own on each rank
        if main:
            metrics_file.unlink(missing_ok=True)

    saved_at = start  # the step of the last checkpoint written, 0 if none
    with open(metrics_file, "a") if main else nullcontext() as log:
        def on_step(step: int, row: dict) -> None:
            nonlocal saved_at
            if main:
                print(json.dumps(row), file=log, flush=True)
            if step == len(plan) or (cfg.save_every and step % cfg.save_every == 0):
                epoch = plan[step - 1][0]
                save_checkpoint(out_dir, model, opt, {"step": step, "epoch": epoch,
                                                      "step_in_epoch": sum(e == epoch for e, _ in plan[:step])})
                saved_at = step

        world = distributed.Ranks() if distributed.world() > 1 else trainer.ONE_PROCESS
        try:
            history = trainer.train(model, samples, cfg, opt=opt, start=start, on_step=on_step, world=world,
                                    progress=progress)
        except FloatingPointError as e:
            last = (f"the last good checkpoint is {out_dir / 'checkpoint'} (step {saved_at})" if saved_at
                    else "no checkpoint had been written yet")
            raise FloatingPointError(f"{e}, {last}") from None
    if main:
        with atomic_dir(out_dir / "adapter") as tmp:
            lora.save_adapter(model, tmp)
    distributed.barrier()  # every rank returns once the adapter is on disk
    return history




def save_checkpoint(out_dir: Path, model, opt, position: dict) -> None:
    """position: steps done, and the epoch and step within it they end in (where the data stand). Under torchrun
    every rank calls it and rank 0 writes it: the adapter and AdamW state are the same on all ranks, the RNG
    states (LoRA dropout) are each rank's own, so it keeps them all, and the world size they belong to."""
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if distributed.world() > 1:
        rng, position = distributed.all_gather(rng), {**position, "world_size": distributed.world()}
    if not distributed.is_main():
        return
    with atomic_dir(out_dir / "checkpoint") as tmp:
        lora.save_adapter(model, tmp / "adapter")
        torch.save({"optimizer": opt.state_dict(), "rng": rng}, tmp / "trainer_state.pt")
        (tmp / "state.json").write_text(json.dumps(position, indent=2))


def load_checkpoint(ckpt: Path, model, opt) -> int:
    """Restore adapter, optimizer and RNG states from a checkpoint; returns the number of steps done."""
    position = json.loads((ckpt / "state.json").read_text())
    if position.get("world_size", 1) != distributed.world():  # each rank's dropout RNG continues on that rank
        raise ValueError(f"{ckpt} was written by {position.get('world_size', 1)} process(es) and this run has "
                         f"{distributed.world()} (WORLD_SIZE): continue it with the same number of processes "
                         "(torchrun --nnodes x --nproc_per_node), or train into another folder")
    lora.load_adapter(model, ckpt / "adapter")
    state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(state["optimizer"])
    rng = state["rng"][distributed.rank()] if isinstance(state["rng"], list) else state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return position["step"]
