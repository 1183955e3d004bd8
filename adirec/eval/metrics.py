"""Recall@N and NDCG@N of ranked lists against sets of relevant items."""
from __future__ import annotations

import numpy as np


def ranking_metrics(hits: np.ndarray, num_relevant: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """Per-query metrics.

    Args:
        hits: (Q, K) bool, ``hits[q, r]`` = the item ranked ``r`` (0-based) for query ``q`` is relevant.
        num_relevant: (Q,) number of relevant items of each query (>= 1).
        ks: cut-offs, each <= K.
    Returns ``{"recall@k": (Q,), "ndcg@k": (Q,)}``. Recall@k = relevant items in the top k divided
    by the number of relevant items; NDCG@k uses binary gains and the ideal DCG of
    ``min(num_relevant, k)`` relevant items at the top.
    """
    hits = np.asarray(hits, dtype=bool)
    num_relevant = np.asarray(num_relevant, dtype=np.float64)
    if hits.ndim != 2 or len(hits) != len(num_relevant):
        raise ValueError(f"hits must be (Q, K) with Q = len(num_relevant); got {hits.shape}, {num_relevant.shape}")
    if np.any(num_relevant < 1):
        raise ValueError("every query needs at least one relevant item")
    discounts = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)  # (K,)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1 or k > hits.shape[1]:
            raise ValueError(f"cut-off {k} outside [1, {hits.shape[1]}]")
        h = hits[:, :k]
        out[f"recall@{k}"] = h.sum(axis=1) / num_relevant
        dcg = (h * discounts[:k]).sum(axis=1)
        ideal = np.cumsum(discounts[:k])[np.minimum(num_relevant, k).astype(int) - 1]
        out[f"ndcg@{k}"] = dcg / ideal
    return out


def aggregate(per_query: dict[str, np.ndarray], query_domain: np.ndarray,
              domains: list[str]) -> dict[str, dict[str, float]]:
    """Mean of each metric per domain, and the unweighted mean over domains that have queries."""
    out: dict[str, dict[str, float]] = {}
    for name, values in per_query.items():
        row: dict[str, float] = {}
        for d, dname in enumerate(domains):
            mask = query_domain == d
            if mask.any():
                row[dname] = float(values[mask].mean())
        row["mean"] = float(np.mean(list(row.values()))) if row else float("nan")
        out[name] = row
    return out
