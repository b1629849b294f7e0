"""The training loss: token cross-entropy on the supervised tokens only, in float32.

Position t predicts token t + 1, so the hidden state *before* each supervised token is scored.
lm_head runs only on those rows: the prompt and padding never cost a (T, vocab) logits tensor.
The trap avoided: with gradient accumulation, averaging each micro-batch on its own weights a token
of a short answer more than a token of a long one. The sum is divided by `n_tokens`, the number of
supervised tokens in the whole accumulation window, so k micro-batches give the gradient of one batch.
"""
import torch
import torch.nn.functional as F


def masked_cross_entropy(hidden, lm_head, input_ids, loss_mask, n_tokens: int) -> torch.Tensor:
    """Summed cross-entropy of the tokens marked in loss_mask, divided by n_tokens.

    hidden (B, T, C): the model's final hidden states; input_ids, loss_mask (B, T).
    """
    keep = loss_mask[:, 1:].bool()  # (B, T-1): is token t+1 supervised
    h = hidden[:, :-1][keep]  # (N, C)
    logits = lm_head(h).float()  # (N, V)
    targets = input_ids[:, 1:][keep]  # (N,)
    return F.cross_entropy(logits, targets, reduction="sum") / n_tokens
