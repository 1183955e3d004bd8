"""Sampled softmax with logQ correction (paper eq. 2-5).

The full softmax over the corpus (eq. 2-3) is approximated by a softmax over the batch's own
items plus extra negatives drawn from a proposal ``Q``. Frequent items show up as negatives more
often than the full softmax would weigh them, so each logit is corrected by ``- log Q(v)``
(eq. 5) — the log of how often ``v`` is expected among the negatives. Columns that hold the
row's own positive item (an accidental hit) are masked out.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sampled_softmax_loss(
    logits: torch.Tensor,  # (B, N) raw scores s(u_b, v_n)
    positive_column: torch.Tensor,  # (B,) long, column of each row's positive
    row_items: torch.Tensor,  # (B,) long, item id of each row's positive
    column_items: torch.Tensor,  # (N,) long, item id of each column
    log_q: torch.Tensor,  # (N,) log expected frequency of each column's item among negatives
    *,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,  # (B,) per-row weight
) -> torch.Tensor:
    """Weighted mean of ``-log softmax(s / temperature - log Q)[positive]`` over rows."""
    if logits.dim() != 2 or logits.shape != (len(positive_column), len(column_items)):
        raise ValueError(f"logits must be (B, N) = ({len(positive_column)}, {len(column_items)}), "
                         f"got {tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = logits / temperature - log_q.unsqueeze(0)  # (B, N), eq. 5
    hits = row_items.unsqueeze(1) == column_items.unsqueeze(0)  # (B, N)
    hits[torch.arange(len(z), device=z.device), positive_column] = False
    z = z.masked_fill(hits, float("-inf"))
    loss = F.cross_entropy(z, positive_column, reduction="none")  # (B,), eq. 4
    if weight is None:
        return loss.mean()
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def full_softmax_loss(
    user: torch.Tensor,  # (B, O) user vectors of rows of one domain
    items: torch.Tensor,  # (C, O) vectors of every item of that domain's corpus
    target: torch.Tensor,  # (B,) long, each row's positive as a row of ``items``
    *,
    temperature: float = 1.0,
    weight: torch.Tensor | None = None,  # (B,) per-row weight
    reduction: str = "mean",
) -> torch.Tensor:
    """Eq. 2-3 exactly: ``-log softmax(s / temperature)[positive]`` over the whole corpus, no
    sampling and hence no correction. ``reduction="sum"`` gives the weighted sum (for a caller
    that adds up several domains' rows)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if user.dim() != 2 or items.dim() != 2 or user.shape[1] != items.shape[1]:
        raise ValueError(f"user (B, O) and items (C, O) must share O; got {tuple(user.shape)}, {tuple(items.shape)}")
    # s / temperature with the division on the (B, O) side: the (B, C) logits are the large ones
    loss = F.cross_entropy((user / temperature) @ items.T, target, reduction="none")  # (B,), eq. 2-3
    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if weight is None:
        return loss.mean()
    return loss.sum() / weight.sum().clamp_min(1e-12)
