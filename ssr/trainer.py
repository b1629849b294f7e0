"""The LoRA training loop: AdamW on the adapters, warmup then cosine, accumulation, checkpoints, exact resume.

One optimizer step takes `grad_accum` micro-batches (ssr/data.py packs them by token budget). The
whole run's plan, which samples go into which micro-batch of which step, is a pure function of the
sample lengths and the seed, so the step number alone says where the data stands; the learning rate
is a pure function of the step too. A checkpoint holds the adapter (PEFT format), AdamW's state and
every RNG state (LoRA dropout draws from torch's), and is swapped in atomically.
The trap avoided: a resumed run that silently differs from an uninterrupted one. Everything that
decides the next step is restored, the metrics file is cut back to the checkpoint's step, and a
resume with other data or other hyperparameters is refused, so killing and resuming a run ends
with the same adapter as never stopping.

Outputs under out_dir: metrics.jsonl (one line a step), checkpoint/ (the latest), adapter/ (the final one).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ssr import lora
from ssr.data import Sample, collate, epoch_batches
from ssr.jsonl import atomic_dir, read_records, write_records
from ssr.loss import masked_cross_entropy


@dataclass
class TrainConfig:
    epochs: int = 3
    lr: float = 1e-4
    warmup: float = 0.03  # fraction of all steps spent in linear warmup
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    micro_batch: int = 2  # sequences per micro-batch, at most
    batch_tokens: int = 8192  # tokens per micro-batch after padding, at most
    grad_accum: int = 4  # micro-batches per optimizer step
    seed: int = 0
    save_every: int = 100  # steps between checkpoints (one is always written at the end); 0: only at the end
    checkpointing: bool = False  # activation checkpointing: recompute each block in backward, to save memory
    bf16: bool = True  # bf16 autocast on CUDA; CPU always computes in float32


RESUMABLE_CHANGES = ("save_every", "checkpointing")  # config fields a resumed run may change


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the LoRA matrices only: the base model is frozen and never handed to the optimizer."""
    return torch.optim.AdamW(lora.lora_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_plan(lengths: list[int], cfg: TrainConfig) -> list[tuple[int, list[list[int]]]]:
    """[(epoch, micro-batches)] per optimizer step, for the whole run; the last step of an epoch may be short."""
    plan = []
    for epoch in range(cfg.epochs):
        batches = epoch_batches(lengths, cfg.batch_tokens, cfg.micro_batch, cfg.seed, epoch)
        plan += [(epoch, batches[i:i + cfg.grad_accum]) for i in range(0, len(batches), cfg.grad_accum)]
    return plan


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio. `step` counts from 0."""
    warmup = round(cfg.warmup * total)
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def train_step(model, opt, batches, lr: float, max_grad_norm: float, amp=nullcontext()) -> dict:
    """One optimizer step over micro-batches [(input_ids, loss_mask)]; raises FloatingPointError before
    applying a step whose loss or gradient is not finite."""
    n_tokens = sum(int(mask[:, 1:].sum()) for _, mask in batches)  # the window's normaliser, before any backward
    loss = 0.0
    for ids, mask in batches:
        with amp:
            hidden = model.hidden_states(ids)  # (B, T, C); right padding needs no attention mask
            micro = masked_cross_entropy(hidden, model.lm_head, ids, mask, n_tokens)
        micro.backward()
        loss += micro.detach()
    loss = float(loss)
    params = [p for group in opt.param_groups for p in group["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf")))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        opt.zero_grad(set_to_none=True)
        raise FloatingPointError(f"the loss is {loss} (gradient norm {grad_norm})")
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": loss, "grad_norm": grad_norm, "tokens": n_tokens}


def train(model, samples: list[Sample], cfg: TrainConfig, out_dir, resume: bool = False,
          progress: bool = True) -> list[dict]:
    """Fine-tune the model's LoRA adapters on samples; returns this call's per-step metrics.

    With resume=True a run continues from out_dir/checkpoint (or starts, if there is none yet).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = model.lm_head.weight.device
    opt = make_optimizer(model, cfg)
    plan = make_plan([len(s.ids) for s in samples], cfg)
    fingerprint = data_fingerprint(samples)
    metrics_file = out_dir / "metrics.jsonl"

    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds a run (checkpoint at {ckpt}): continue it "
                              "(resume=True; rerunning train.py does), or choose another output folder")
    start = 0
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, opt, cfg, fingerprint)
        cut_metrics(metrics_file, start)
        print(f"resuming {out_dir} after step {start} of {len(plan)}")
    else:
        if resume:
            print(f"no checkpoint in {out_dir}: starting a new run")
        seed_everything(cfg.seed)
        metrics_file.unlink(missing_ok=True)

    model.train()
    model.checkpointing = cfg.checkpointing
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    history, saved_at = [], start if ckpt is not None else None  # saved_at: the last checkpoint's step
    bar = tqdm(total=len(plan), initial=start, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    t_start = time.perf_counter()
    with open(metrics_file, "a") as log:
        for step in range(start, len(plan)):
            epoch, window = plan[step]
            batches = [tuple(t.to(device) for t in collate([samples[i] for i in idx])) for idx in window]
            lr = lr_at(step, len(plan), cfg)
            t0 = time.perf_counter()
            try:
                stats = train_step(model, opt, batches, lr, cfg.max_grad_norm, amp)
            except FloatingPointError as e:
                bar.close()
                last = (f"the last good checkpoint is {out_dir / 'checkpoint'} (step {saved_at})" if saved_at
                        else "no checkpoint had been written yet")
                raise FloatingPointError(f"step {step + 1}: {e}; stopped without applying it, {last}") from None
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            input_tokens = sum(len(samples[i].ids) for idx in window for i in idx)
            row = {"step": step + 1, "epoch": epoch, "loss": stats["loss"], "lr": lr, "grad_norm": stats["grad_norm"],
                   "tokens": stats["tokens"], "input_tokens": input_tokens, "tokens_per_s": input_tokens / seconds,
                   "elapsed_s": time.perf_counter() - t_start}
            log.write(json.dumps(row) + "\n")
            log.flush()
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
            if step + 1 == len(plan) or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                position = {"step": step + 1, "epoch": epoch,
                            "step_in_epoch": sum(e == epoch for e, _ in plan[:step + 1])}
                save_checkpoint(out_dir, model, opt, position, cfg, fingerprint)
                saved_at = step + 1
            if os.environ.get("SSR_TEST_KILL_AFTER_STEP") == str(step + 1):  # tests: a crash mid-run
                os.kill(os.getpid(), signal.SIGKILL)
    bar.close()
    model.eval()
    with atomic_dir(out_dir / "adapter") as tmp:
        lora.save_adapter(model, tmp)
    return history


# ---- checkpoints -------------------------------------------------------------------------------------------


def latest_checkpoint(out_dir: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):
        if (out_dir / name / "state.json").is_file():
            return out_dir / name
    return None


def data_fingerprint(samples: list[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps([s.ids, s.mask]).encode())
    return h.hexdigest()


def save_checkpoint(out_dir: Path, model, opt, position: dict, cfg: TrainConfig, fingerprint: str) -> None:
    """position: steps done, and the epoch and step within it they end in (the data order of an epoch is a
    function of the seed and the epoch, so this is where the data stand)."""
    with atomic_dir(out_dir / "checkpoint") as tmp:
        lora.save_adapter(model, tmp / "adapter")
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        rng = {"python": random.getstate(), "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
               "torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        torch.save({"optimizer": opt.state_dict(), "rng": rng}, tmp / "trainer_state.pt")
        state = {**position, "config": asdict(cfg), "data_fingerprint": fingerprint}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))


def load_checkpoint(ckpt: Path, model, opt, cfg: TrainConfig, fingerprint: str) -> int:
    """Restore adapter, optimizer and RNG states from a checkpoint; returns the number of steps done."""
    state = json.loads((ckpt / "state.json").read_text())
    changed = [f"{k}: {v!r} -> {getattr(cfg, k)!r}" for k, v in state["config"].items()
               if k not in RESUMABLE_CHANGES and getattr(cfg, k) != v]
    if changed:
        raise ValueError(f"cannot resume {ckpt} with other settings ({'; '.join(changed)})")
    if state["data_fingerprint"] != fingerprint:
        raise ValueError(f"cannot resume {ckpt}: the training data differ from the checkpoint's (same file, "
                         "same tokenizer, same max length?)")
    lora.load_adapter(model, ckpt / "adapter")
    trainer_state = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=True)
    opt.load_state_dict(trainer_state["optimizer"])
    rng = trainer_state["rng"]
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state["step"]


def cut_metrics(path: Path, last_step: int) -> None:
    """Drop the metrics lines after last_step: a resumed run logs those steps again."""
    if path.is_file():  # read_records leaves out a line cut short by the crash
        write_records(path, [r for r in read_records(path) if r["step"] <= last_step])
