"""Order-aware encoders of a behaviour history: adirec's extension of the paper's mean pooling (eq. 7).

A history arrives as item embeddings ``e`` (B, L, E), left-padded and oldest first, with
``mask`` (B, L) True where there is an item. An encoder answers two questions:

* ``last(e, mask) -> (B, E)``: the summary of the whole history (a row's user vector input);
* ``causal(e, mask) -> (B, L, E)``: at every position t the summary of the items up to and
  including t, computed in one pass, so that one user's sequence trains every position at once
  (a row whose history ends at t sees exactly what ``last`` would see of the same items).

Encoders:

* ``"mean"``: the paper's eq. 7, the mean of the items.
* ``"recency"``: a weighted mean whose weights are learned per recency rank (0 = the most recent
  item), softmax-normalised over the items present: position-aware pooling at the cost of L
  numbers. It starts as the plain mean.
* ``"transformer"``: a small causal Transformer (SASRec-like: learned absolute positions of the
  right-aligned window, pre-norm blocks of single- or multi-head self-attention and a feed-forward
  layer, dropout); the output at the last position summarises the history.

Shapes: B batch, L history length, E embedding width.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from adirec.models.layers import Dropout, dropout as dropout_of

HISTORY_ENCODERS = ("mean", "recency", "transformer")


class HistoryEncoder(nn.Module):
    """Base and ``"mean"``: eq. 7, the mean over the items present (an empty history gives 0)."""

    def last(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(e.dtype)  # (B, L, 1)
        return (e * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, E), eq. 7

    def causal(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(e.dtype)  # (B, L, 1)
        return (e * m).cumsum(dim=1) / m.cumsum(dim=1).clamp(min=1.0)  # (B, L, E)


class RecencyEncoder(HistoryEncoder):
    """Weighted mean with a learned weight per recency rank: ``sum_j a_j e_j`` with
    ``a_j = softmax_j(w[rank_j])`` over the items present, rank 0 = the most recent."""

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.rank_logits = nn.Parameter(torch.zeros(max_len))  # (L,), zeros: the plain mean

    def _pool(self, e: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return weights @ e  # (B, Q, L) @ (B, L, E) -> (B, Q, E)

    def _weights(self, rank: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        logits = self.rank_logits[rank.clamp(0, self.max_len - 1)]  # (.., L)
        logits = logits.masked_fill(~allowed, float("-inf"))
        w = torch.softmax(logits, dim=-1)
        return torch.nan_to_num(w, nan=0.0)  # a query with no allowed item pools nothing

    def last(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = e.shape[1]
        rank = torch.arange(L - 1, -1, -1, device=e.device).expand(e.shape[0], L)  # (B, L): 0 = newest
        w = self._weights(rank, mask)  # (B, L)
        return (w.unsqueeze(-1) * e).sum(dim=1)  # (B, E)

    def causal(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        L = e.shape[1]
        pos = torch.arange(L, device=e.device)
        rank = pos[:, None] - pos[None, :]  # (L, L): query t, key j -> rank t - j
        allowed = (rank >= 0) & mask[:, None, :]  # (B, L, L)
        w = self._weights(rank.expand(e.shape[0], L, L), allowed)  # (B, L, L)
        return self._pool(e, w)  # (B, L, E)


class TransformerEncoder(HistoryEncoder):
    """A small causal Transformer over the history (SASRec-like).

    The window is right-aligned (the most recent item at position L - 1), each item gets the
    learned embedding of its position, and every position attends to itself and the items before
    it. ``last`` is the output at position L - 1; ``causal`` every position's output.
    """

    def __init__(self, dim: int, max_len: int, layers: int = 2, heads: int = 1, dropout: float = 0.2):
        super().__init__()
        if dim % heads:
            raise ValueError(f"the embedding width {dim} must be a multiple of the attention heads {heads}")
        self.max_len, self.heads, self.dim = max_len, heads, dim
        self.position = nn.Embedding(max_len, dim)  # (L, E)
        self.dropout = Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def causal(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, E = e.shape
        if L > self.max_len:
            raise ValueError(f"history of length {L} is longer than the encoder's {self.max_len} positions")
        pos = self.position.weight[self.max_len - L:]  # (L, E): right-aligned positions
        keep = mask.unsqueeze(-1).to(e.dtype)  # (B, L, 1)
        x = self.dropout(e * math.sqrt(E) + pos) * keep  # (B, L, E)
        idx = torch.arange(L, device=e.device)
        # query t may attend to key j <= t that holds an item, and always to itself (no empty rows)
        allowed = (idx[None, :, None] >= idx[None, None, :]) & mask[:, None, :]  # (B, L, L)
        allowed = allowed | torch.eye(L, dtype=torch.bool, device=e.device)
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.norm(x)  # (B, L, E)

    def last(self, e: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.causal(e, mask)[:, -1]  # (B, E)
        return out * mask[:, -1:].to(out.dtype)  # an empty history summarises to 0


class _Block(nn.Module):
    """Pre-norm self-attention and feed-forward, each with a residual connection."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), Dropout(dropout), nn.Linear(dim, dim))
        self.dropout = Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        B, L, E = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, L, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_dropout if self.training else 0.0
        if p > 0 and x.device.type == "cpu":  # layers.dropout's mask: faster on the CPU than SDPA's
            a = written_out_attention(q, k, v, allowed[:, None], p)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], dropout_p=p)
        x = x + self.dropout(self.proj(a.transpose(1, 2).reshape(B, L, E)))  # a: (B, H, L, E/H)
        return x + self.dropout(self.ff(self.norm2(x)))


def written_out_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor,
                          p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)`` computed step
    by step, with the attention weights dropped by :func:`adirec.models.layers.dropout`.
    q, k, v: (B, H, L, E/H); allowed: (B, 1, L, L), True where query t may attend to key j. Every
    query must allow at least one key (the encoder always allows the query's own position);
    a row with none would be NaN."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, L, L)
    weights = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return dropout_of(weights, p, training=True) @ v  # (B, H, L, E/H)


def make_history_encoder(kind: str, dim: int, max_len: int, *, layers: int = 2, heads: int = 1,
                         dropout: float = 0.2) -> HistoryEncoder:
    if kind == "mean":
        return HistoryEncoder()
    if kind == "recency":
        return RecencyEncoder(max_len)
    if kind == "transformer":
        return TransformerEncoder(dim, max_len, layers, heads, dropout)
    raise ValueError(f"unknown history encoder {kind!r}; known: {HISTORY_ENCODERS}")
