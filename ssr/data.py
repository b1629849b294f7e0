"""Training data: conversations -> (ids, loss mask) -> micro-batches by token budget, right-padded.

A micro-batch holds at most `max_seqs` sequences and at most `batch_tokens` tokens counted after
padding (rows x longest row). Batches are length-grouped: the epoch's shuffled order is cut into
windows, each window is sorted by length and packed, then the batches are shuffled again, so rows of
one batch have similar lengths (little padding) while the order of the data stays random.
The trap avoided: sorting the whole data set by length would feed all short answers first and all
long ones last, a biased gradient; grouping only within shuffled windows keeps the order random.

Right padding needs no attention mask: under causal attention a real token never sees the padding
after it, and padded positions are never scored (their mask is 0).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

GROUP_WINDOW = 64  # batches' worth of examples sorted together by length


@dataclass
class Sample:
    ids: list[int]
    mask: list[int]  # 1 where the token is a target: every assistant token and the end-of-turn token after it


def encode(tok, conversations: list[list[dict]], max_len: int) -> tuple[list[Sample], dict]:
    """Tokenise conversations with the chat template; returns the samples and counts of what was cut.

    A conversation longer than max_len is truncated from the right; one that keeps no supervised
    token is dropped.
    """
    samples, truncated, dropped = [], 0, 0
    for messages in conversations:
        ids, mask = tok.apply_chat_template(messages, return_mask=True)
        if len(ids) > max_len:
            ids, mask, truncated = ids[:max_len], mask[:max_len], truncated + 1
        if sum(mask[1:]) == 0:  # the first token is never a target: nothing predicts it
            dropped += 1
            continue
        samples.append(Sample(ids, mask))
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


def collate(samples: list[Sample], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sample: (input_ids, loss_mask), both (B, T) int64.

    The pad id does not matter: no real token attends to a pad, and no pad is scored.
    """
    T = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(samples), T, dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, :len(s.ids)] = torch.tensor(s.ids)
        mask[row, :len(s.mask)] = torch.tensor(s.mask)
    return ids, mask
