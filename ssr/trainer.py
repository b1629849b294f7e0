"""LoRA training: the loss, batches, one optimizer step, and the loop.

Read it top to bottom: `TrainConfig`; `loss`, the one function to edit to change what training optimises
(docs/loss.md has worked variants); conversations -> (ids, mask, source) -> micro-batches; `train_step`; `train`.

One optimizer step takes `grad_accum` micro-batches. Which samples go into which micro-batch of which
step is a pure function of the sample lengths and the seed, and the learning rate one of the step, so
the step number alone says where a run stands: that is what lets a run resume exactly. The loop has
hooks and nothing else: `start` and `opt` to continue a run, `on_step` to log and save, `world` to sum
over processes. ssr/harness/training.py builds resumable training on them (checkpoints, a metrics log,
several processes); a learner never needs it.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ssr import lora


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
    save_every: int = 100  # steps between checkpoints, which ssr/harness/training.py writes; 0: only at the end
    checkpointing: bool = False  # activation checkpointing: recompute each block in backward, to save memory
    bf16: bool = True  # bf16 autocast on CUDA; CPU always computes in float32


# ---------------------------------------------------------------------------------------------------------
# the loss


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded token ids
    loss_mask: torch.Tensor  # (B, T) 1 where the token is a target: the response and its end-of-turn token
    sources: list[str] = field(default_factory=list)  # per row, where its response came from: gold, self, ...


def loss(model, batch: Batch, n_tokens: int) -> torch.Tensor:
    """Summed cross-entropy of the supervised tokens, divided by n_tokens: the supervised tokens of the whole
    optimizer step (all its micro-batches), so that k micro-batches give the gradient of one big batch.
    Averaging each micro-batch on its own instead would weight a token of a short answer more than a
    token of a long one.

    Position t predicts token t + 1, so the hidden state *before* each supervised token is scored, and
    lm_head runs only on those rows: the prompt and padding never cost a (T, vocab) logits tensor.
    Right padding needs no attention mask: a real token never sees the padding after it.
    """
    hidden = model.hidden_states(batch.input_ids)  # (B, T, C)
    keep = batch.loss_mask[:, 1:].bool()  # (B, T-1): is token t+1 supervised
    logits = model.lm_head(hidden[:, :-1][keep]).float()  # (N, V), in float32 whatever the weights' dtype
    labels = batch.input_ids[:, 1:][keep]  # (N,) the next tokens
    return F.cross_entropy(logits, labels, reduction="sum") / n_tokens


# ---------------------------------------------------------------------------------------------------------
# data: conversations -> samples -> micro-batches
#
# A micro-batch holds at most `micro_batch` sequences and `batch_tokens` tokens counted after padding
# (rows x longest row). Batches are length-grouped: the epoch's shuffled order is cut into windows, each
# window is sorted by length and packed, then the batches are shuffled again, so rows of one batch have
# similar lengths (little padding) while the order of the data stays random. Sorting the whole data set
# by length instead would feed all short answers first and all long ones last, a biased gradient.

GROUP_WINDOW = 64  # batches' worth of examples sorted together by length


@dataclass
class Sample:
    ids: list[int]
    mask: list[int]  # 1 where the token is a target: every assistant token and the end-of-turn token after it
    source: str = "gold"  # where the response came from (see ssr.methods.SOURCES)


def encode(tok, conversations: list, max_len: int, sources: list[str] | None = None) -> tuple[list[Sample], dict]:
    """Tokenise conversations with the chat template; returns the samples and counts of what was cut: a
    conversation longer than max_len is truncated from the right, one left with no supervised token dropped.

    An item may also be a pair (prompt ids, response ids): those very ids, the response supervised. That is how a
    self-generated target is trained, as the ids the model generated and its end-of-turn token, never decoded
    and encoded again (re-encoding need not give them back)."""
    samples, truncated, dropped = [], 0, 0
    for i, item in enumerate(conversations):
        if isinstance(item, tuple):
            prompt, response = item
            ids, mask = prompt + response, [0] * len(prompt) + [1] * len(response)
        else:
            ids, mask = tok.apply_chat_template(item, return_mask=True)
        if len(ids) > max_len:
            ids, mask, truncated = ids[:max_len], mask[:max_len], truncated + 1
        if sum(mask[1:]) == 0:  # the first token is never a target: nothing predicts it
            dropped += 1
            continue
        samples.append(Sample(ids, mask, sources[i] if sources else "gold"))
    return samples, {"truncated": truncated, "dropped": dropped}


def epoch_batches(lengths: list[int], batch_tokens: int, max_seqs: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's micro-batches as lists of sample indices; a pure function of (lengths, seed, epoch)."""
    if max(lengths) > batch_tokens:
        raise ValueError(f"a sample has {max(lengths)} tokens, more than batch_tokens={batch_tokens}: "
                         "raise batch_tokens or lower max_len")
    rng = random.Random(f"{seed}/{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = GROUP_WINDOW * max_seqs
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)
        batch, longest = [], 0
        for i in chunk:
            if batch and (len(batch) == max_seqs or (len(batch) + 1) * max(longest, lengths[i]) > batch_tokens):
                batches.append(batch)
                batch, longest = [], 0
            batch.append(i)
            longest = max(longest, lengths[i])
        batches.append(batch)
    rng.shuffle(batches)
    return batches


def collate(samples: list[Sample], device="cpu", pad_id: int = 0) -> Batch:
    """Right-pad to the longest sample. The pad id does not matter: no real token attends to a pad, and no
    pad is scored."""
    T = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, :len(s.ids)] = torch.tensor(s.ids)
        mask[row, :len(s.mask)] = torch.tensor(s.mask)
    return Batch(ids.to(device), mask.to(device), [s.source for s in samples])


def make_plan(lengths: list[int], cfg: TrainConfig) -> list[tuple[int, list[list[int]]]]:
    """[(epoch, micro-batches)] per optimizer step, for the whole run; the last step of an epoch may be short."""
    plan = []
    for epoch in range(cfg.epochs):
        batches = epoch_batches(lengths, cfg.batch_tokens, cfg.micro_batch, cfg.seed, epoch)
        plan += [(epoch, batches[i:i + cfg.grad_accum]) for i in range(0, len(batches), cfg.grad_accum)]
    return plan


# ---------------------------------------------------------------------------------------------------------
# the loop


def make_optimizer(model, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the LoRA matrices only: the base model is frozen and never handed to the optimizer."""
    return torch.optim.AdamW(lora.lora_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * min_lr_ratio. `step` counts from 0."""
    warmup = round(cfg.warmup * total)
    if step < warmup:
        return cfg.lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class World:
    """The processes that train together: one, here. The harness passes one whose sums run over several
    processes; `train_step` and `train` need nothing else from it."""
    index, size = 0, 1  # this process's number among `size`

    def sum(self, x: float) -> float:  # a number summed over processes
        return x

    def sum_grads(self, params: list[torch.Tensor]) -> None:  # gradients summed over processes, in place
        pass


ONE_PROCESS = World()


def train_step(model, opt, batches: list[Batch], lr: float, max_grad_norm: float, amp=nullcontext(),
               world: World = ONE_PROCESS) -> dict:
    """One optimizer step over micro-batches; raises FloatingPointError before applying a step whose loss or
    gradient is not finite.

    With several processes `batches` are this one's share of the step, and what they exchange is small: the
    supervised-token count before any backward (the normaliser is the whole step's, in all processes, so a token
    weighs the same wherever it was computed), then the LoRA gradients, summed (the frozen base has none),
    and the loss for the log. Every process then clips the same summed gradient and applies the same update: the
    one-process step for the same global batch. (DistributedDataParallel would average instead of sum, and
    hide the exchange in backward hooks that accumulation must switch off.)"""
    n_tokens = world.sum(sum(int(b.loss_mask[:, 1:].sum()) for b in batches))  # before any backward
    total = 0.0
    for batch in batches:
        with amp:
            micro = loss(model, batch, n_tokens)
        micro.backward()
        total += micro.detach()
    total = world.sum(float(total))
    params = [p for group in opt.param_groups for p in group["params"]]
    world.sum_grads(params)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf")))
    if not (math.isfinite(total) and math.isfinite(grad_norm)):
        opt.zero_grad(set_to_none=True)
        raise FloatingPointError(f"the loss is {total} (gradient norm {grad_norm})")
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": total, "grad_norm": grad_norm, "tokens": n_tokens}


def train(model, samples: list[Sample], cfg: TrainConfig, *, opt=None, start: int = 0, on_step=None,
          world: World = ONE_PROCESS, progress: bool = True) -> list[dict]:
    """Fine-tune the model's LoRA adapters on samples, steps `start` to the end of the plan; returns the
    per-step metrics. `opt`: an AdamW to continue (else a new one); on_step(step, row) runs after each step
    (1-based step), e.g. to log or save a checkpoint. Raises FloatingPointError, naming the step, before
    applying a step whose loss or gradient is not finite."""
    device = model.lm_head.weight.device
    opt = opt or make_optimizer(model, cfg)
    plan = make_plan([len(s.ids) for s in samples], cfg)
    model.train()
    model.checkpointing = cfg.checkpointing
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    history, t_start = [], time.perf_counter()
    bar = tqdm(total=len(plan), initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not (progress and world.index == 0))
    for step in range(start, len(plan)):
        epoch, window = plan[step]
        mine = window[world.index::world.size]  # the step's micro-batches, dealt to the processes
        batches = [collate([samples[i] for i in idx], device) for idx in mine]
        lr = lr_at(step, len(plan), cfg)
        t0 = time.perf_counter()
        try:
            stats = train_step(model, opt, batches, lr, cfg.max_grad_norm, amp, world)
        except FloatingPointError as e:
            bar.close()
            raise FloatingPointError(f"step {step + 1}: {e}; stopped without applying it") from None
        if device.type == "cuda":
            torch.cuda.synchronize()  # honest timings
        seconds = time.perf_counter() - t0
        input_tokens = sum(len(samples[i].ids) for idx in window for i in idx)
        row = {"step": step + 1, "epoch": epoch, "loss": stats["loss"], "lr": lr, "grad_norm": stats["grad_norm"],
               "tokens": stats["tokens"], "input_tokens": input_tokens, "tokens_per_s": input_tokens / seconds,
               "elapsed_s": time.perf_counter() - t_start}
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
        if on_step is not None:
            on_step(step + 1, row)
    bar.close()
    model.eval()
    return history
