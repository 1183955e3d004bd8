"""Ranking metrics: Recall@N, NDCG@N, HitRate@N and MRR@N of each query's ranked list against
its relevant items, and catalogue coverage@N of a domain (the share of its corpus that appears in
anybody's top N)."""
from __future__ import annotations

import numpy as np

#: the best rank of an item that no query ranked within the cut-offs
NOT_RANKED = np.iinfo(np.int32).max


def ranking_metrics(hits: np.ndarray, num_relevant: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """Per-query metrics.

    Args:
        hits: (Q, K) bool, ``hits[q, r]`` = the item ranked ``r`` (0-based) for query ``q`` is relevant.
        num_relevant: (Q,) number of relevant items of each query (>= 1).
        ks: cut-offs, each <= K.
    Returns, per cut-off k, ``recall@k``, ``ndcg@k``, ``hitrate@k`` and ``mrr@k``, each (Q,):

    * Recall@k: relevant items in the top k divided by the number of relevant items;
    * NDCG@k: binary gains, divided by the ideal DCG of ``min(num_relevant, k)`` relevant items
      at the top;
    * HitRate@k: 1 when at least one relevant item is in the top k, else 0 (with one relevant
      item per query it equals Recall@k);
    * MRR@k: 1 / (rank of the first relevant item, counted from 1) when it is in the top k, else 0.
    """
    hits = np.asarray(hits, dtype=bool)
    num_relevant = np.asarray(num_relevant, dtype=np.float64)
    if hits.ndim != 2 or len(hits) != len(num_relevant):
        raise ValueError(f"hits must be (Q, K) with Q = len(num_relevant); got {hits.shape}, {num_relevant.shape}")
    if np.any(num_relevant < 1):
        raise ValueError("every query needs at least one relevant item")
    discounts = 1.0 / np.log2(np.arange(hits.shape[1]) + 2.0)  # (K,)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])  # (Q,) 0-based; K = none
    out: dict[str, np.ndarray] = {}
    for k in ks:
        if k < 1 or k > hits.shape[1]:
            raise ValueError(f"cut-off {k} outside [1, {hits.shape[1]}]")
        h = hits[:, :k]
        out[f"recall@{k}"] = h.sum(axis=1) / num_relevant
        dcg = (h * discounts[:k]).sum(axis=1)
        ideal = np.cumsum(discounts[:k])[np.minimum(num_relevant, k).astype(int) - 1]
        out[f"ndcg@{k}"] = dcg / ideal
        found = first_hit < k
        out[f"hitrate@{k}"] = found.astype(np.float64)
        out[f"mrr@{k}"] = np.where(found, 1.0 / (first_hit + 1.0), 0.0)
    return out


def coverage(best_rank: np.ndarray, ks: list[int]) -> dict[str, float]:
    """Catalogue coverage of one domain: ``{"coverage@k": share of the corpus in anybody's top k}``.

    ``best_rank`` holds, for every item of the domain's corpus, the best (lowest, 0-based) rank it
    reached in any query's list, or :data:`NOT_RANKED`.
    """
    best_rank = np.asarray(best_rank)
    if len(best_rank) == 0:
        raise ValueError("coverage of an empty corpus is undefined")
    return {f"coverage@{k}": float(np.mean(best_rank < k)) for k in ks}


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
