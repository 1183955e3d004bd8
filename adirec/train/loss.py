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
    if target.shape != (user.shape[0],) or target.dtype != torch.long:
        raise ValueError(f"target must be a ({user.shape[0]},) long tensor, got {tuple(target.shape)} {target.dtype}")
    if len(target) and (int(target.min()) < 0 or int(target.max()) >= len(items)):
        raise ValueError(f"target must index the {len(items)} corpus items, got values in "
                         f"[{int(target.min())}, {int(target.max())}]")
    # s / temperature with the division on the (B, O) side: the (B, C) logits are the large ones
    loss = _CorpusCrossEntropy.apply(user / temperature, items, target)  # (B,), eq. 2-3
    if weight is not None:
        loss = loss * weight
    if reduction == "sum":
        return loss.sum()
    if weight is None:
        return loss.mean()
    return loss.sum() / weight.sum().clamp_min(1e-12)


def _rows_per_block(user: torch.Tensor, corpus_size: int) -> int:
    """Rows per block: about 2**20 logits (4 MB, near a CPU core's cache) on a CPU, 2**26 on an
    accelerator, where larger matrix products pay and the (B, C) passes are not the bottleneck."""
    budget = 2 ** 20 if user.device.type == "cpu" else 2 ** 26
    return max(32, budget // max(1, corpus_size))


class _CorpusCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(user @ items.T, target, reduction="none")`` in blocks of rows, keeping
    only each row's log-partition between forward and backward.

    The full softmax is the hot path of the order-aware models: every position of a batch of
    sequences against the whole corpus, a (B, C) logit matrix of 8,192 x 3,706 floats on
    MovieLens. Autograd's cross entropy keeps the whole (B, C) log-softmax and allocates two more
    (B, C) gradients in backward, each pass streaming it through memory. Here each block of rows
    is scored, reduced and (in backward) scored again while it sits in cache: one more matrix
    product, a (rows, C) working set instead of three (B, C) tensors.
    """

    @staticmethod
    def forward(ctx, user: torch.Tensor, items: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # float32 at least, autocast or not: backward scores the blocks again and must get the
        # logits whose log-partition forward kept
        ctx.dtypes = user.dtype, items.dtype
        dtype = torch.promote_types(torch.promote_types(user.dtype, items.dtype), torch.float32)
        with torch.autocast(user.device.type, enabled=False):
            user, items = user.to(dtype), items.to(dtype)
            rows = _rows_per_block(user, len(items))
            log_z = user.new_empty(len(user))  # (B,) log sum_c exp(s_bc)
            positive = user.new_empty(len(user))  # (B,) s_b,target, from the same logits
            for start in range(0, len(user), rows):
                block = slice(start, start + rows)
                logits = user[block] @ items.T  # (rows, C)
                log_z[block] = torch.logsumexp(logits, dim=1)
                positive[block] = logits.gather(1, target[block].unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(user, items, target, log_z)
        return log_z - positive  # (B,), eq. 2-3, never below 0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        user, items, target, log_z = ctx.saved_tensors
        grad_loss = grad_loss.to(user.dtype)
        rows = _rows_per_block(user, len(items))
        grad_user = torch.empty_like(user) if ctx.needs_input_grad[0] else None  # (B, O)
        grad_items = torch.zeros_like(items) if ctx.needs_input_grad[1] else None  # (C, O)
        with torch.autocast(user.device.type, enabled=False):
            for start in range(0, len(user), rows):
                block = slice(start, start + rows)
                g = grad_loss[block].unsqueeze(1)  # (rows, 1)
                # d loss_b / d s_bc = softmax_bc - [c = target_b], scaled by the incoming gradient
                grad_s = (user[block] @ items.T).sub_(log_z[block].unsqueeze(1)).exp_().mul_(g)  # (rows, C)
                grad_s.scatter_add_(1, target[block].unsqueeze(1), -g)
                if grad_user is not None:
                    grad_user[block] = grad_s @ items
                if grad_items is not None:
                    grad_items.addmm_(grad_s.T, user[block])
        user_dtype, items_dtype = ctx.dtypes
        return (None if grad_user is None else grad_user.to(user_dtype),
                None if grad_items is None else grad_items.to(items_dtype), None)
