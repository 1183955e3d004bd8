"""Evaluation protocols: ``full`` (rank the whole domain corpus, the user's training positives
removed) and ``sampled`` (rank each query's candidate list from a run file).

Anything with a ``score(users, domain, items) -> (n_users, n_items)`` method can be evaluated:
two-tower models and the non-neural references alike. Per-query results are returned raw, so
that several processes can gather them before aggregating.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from adirec.data.dataset import Interactions, MultiDomainData
from adirec.eval.metrics import aggregate, ranking_metrics

PROTOCOLS = ("full", "sampled")


class Scorer(Protocol):
    def score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        """(n_users, n_items) scores of every user for every item, in ``domain``."""


@dataclass
class EvalResult:
    per_query: dict[str, np.ndarray]  # metric -> (Q,)
    query_domain: np.ndarray  # (Q,)
    query_user: np.ndarray  # (Q,)

    def metrics(self, domains: list[str]) -> dict[str, dict[str, float]]:
        return aggregate(self.per_query, self.query_domain, domains)


def _targets(split: Interactions, domain: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users with relevant items in ``domain`` and the (row, item) pairs of those items."""
    m = (split.domain == domain) & (split.weight > 0)
    u, i = split.user[m], split.item[m]
    users, row = np.unique(u, return_inverse=True)
    return users, row, i


def _hits_from_topk(top_items: np.ndarray, target_row: np.ndarray, target_item: np.ndarray,
                    n_items_key: int) -> np.ndarray:
    """(Q, K) bool: is top_items[q, r] among the targets of query q (item 0 never matches)."""
    q = np.arange(len(top_items))[:, None]
    keys = q * n_items_key + top_items
    tkeys = target_row * n_items_key + target_item
    tkeys = tkeys[target_item > 0]
    return np.isin(keys, tkeys) & (top_items > 0)


def evaluate(scorer: Scorer, data: MultiDomainData, *, split: str, protocol: str, ks: list[int],
             seen: "SeenItems | None" = None, batch_users: int = 512) -> EvalResult:
    """Rank items for every (user, domain) with relevant items in ``split``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if split not in data.splits or len(data.splits[split]) == 0:
        raise ValueError(f"{data.name}: split {split!r} is empty; nothing to evaluate")
    if not ks or min(ks) < 1:
        raise ValueError(f"cut-offs must be positive integers, got {ks}")
    target_split = data.splits[split]
    n_key = data.num_items + 1
    per_query: dict[str, list[np.ndarray]] = {}
    q_domain, q_user = [], []
    kmax = max(ks)
    if protocol == "sampled":
        cands = data.candidates.get(split)
        if cands is None:
            raise ValueError(f"{data.name}: no candidate lists for split {split!r}; use --protocol full")
    for d in range(data.num_domains):
        users, trow, titem = _targets(target_split, d)
        if len(users) == 0:
            continue
        counts = np.bincount(trow, minlength=len(users))
        if protocol == "full":
            corpus = data.corpus[d]
            if kmax > len(corpus):
                raise ValueError(f"cut-off {kmax} exceeds the {len(corpus)} items of domain {data.domains[d]!r}")
            cand_mat = None
        else:
            sel = cands.domain == d
            cand_users, cand_mat_all = cands.user[sel], cands.items[sel]
            pos = {u: j for j, u in enumerate(cand_users.tolist())}
            keep = np.array([u in pos for u in users.tolist()], dtype=bool)
            missing = int((~keep).sum())
            if missing:
                raise ValueError(f"{data.name}: {missing} users of domain {data.domains[d]!r} in split "
                                 f"{split!r} have no candidate list")
            cand_mat = cand_mat_all[[pos[u] for u in users.tolist()]]
            if kmax > cand_mat.shape[1]:
                raise ValueError(f"cut-off {kmax} exceeds the {cand_mat.shape[1]} candidates per query")
        for start in range(0, len(users), batch_users):
            ub = users[start:start + batch_users]
            in_chunk = (trow >= start) & (trow < start + len(ub))
            t_row, t_item = trow[in_chunk] - start, titem[in_chunk]
            with torch.no_grad():
                if protocol == "full":
                    s = _scores(scorer.score(ub, d, corpus)).clone()
                    if seen is not None:
                        seen.mask(s, ub, d)
                    top = torch.topk(s, kmax, dim=1).indices.cpu().numpy()
                    top_items = corpus[top]
                else:
                    cm = cand_mat[start:start + len(ub)]
                    uniq, inv = np.unique(np.where(cm < 0, 0, cm), return_inverse=True)
                    s_all = _scores(scorer.score(ub, d, uniq))
                    dev = s_all.device  # a scorer may score on a GPU
                    s = torch.gather(s_all, 1, torch.from_numpy(inv.reshape(cm.shape)).to(dev))
                    s = s.masked_fill(torch.from_numpy(cm < 0).to(dev), float("-inf"))
                    top = torch.topk(s, kmax, dim=1).indices.cpu().numpy()
                    top_items = np.take_along_axis(cm, top, axis=1)
            hits = _hits_from_topk(top_items, t_row, t_item, n_key)
            for name, v in ranking_metrics(hits, counts[start:start + len(ub)], ks).items():
                per_query.setdefault(name, []).append(v)
            q_domain.append(np.full(len(ub), d))
            q_user.append(ub)
    if not q_domain:
        raise ValueError(f"{data.name}: split {split!r} has no positive interactions")
    return EvalResult({k: np.concatenate(v) for k, v in per_query.items()},
                      np.concatenate(q_domain), np.concatenate(q_user))


def _scores(s) -> torch.Tensor:
    """A scorer's output as float32, left on the device it was computed on."""
    if isinstance(s, torch.Tensor):
        return s.to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))


class SeenItems:
    """Masks each user's training positives (all domains) out of a full-corpus ranking."""

    def __init__(self, data: MultiDomainData):
        tr = data.splits["train"]
        pos = tr.weight > 0
        order = np.argsort(tr.user[pos], kind="stable")
        self._items = tr.item[pos][order]
        self._indptr = np.zeros(data.num_users + 2, dtype=np.int64)
        np.cumsum(np.bincount(tr.user[pos], minlength=data.num_users + 1), out=self._indptr[1:])
        self._corpus_pos = []
        for corpus in data.corpus:
            p = np.full(data.num_items + 1, -1, dtype=np.int64)
            p[corpus] = np.arange(len(corpus))
            self._corpus_pos.append(p)

    def mask(self, scores: torch.Tensor, users: np.ndarray, domain: int) -> None:
        start, end = self._indptr[users], self._indptr[users + 1]
        lengths = end - start
        rows = np.repeat(np.arange(len(users)), lengths)
        idx = np.repeat(start, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        cols = self._corpus_pos[domain][self._items[idx]]
        ok = cols >= 0
        r, c = (torch.from_numpy(np.ascontiguousarray(a[ok])).to(scores.device) for a in (rows, cols))
        scores[r, c] = float("-inf")
