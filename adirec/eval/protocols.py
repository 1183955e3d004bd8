"""Evaluation protocols: ``full`` (rank the whole domain corpus, the user's training positives
removed) and ``sampled`` (rank each query's candidate list from a run file).

Anything with a ``score(users, domain, items) -> (n_users, n_items)`` method can be evaluated:
two-tower models and the non-neural references alike. A query is a (user, domain) pair with
relevant items in the evaluated split. :func:`evaluate` runs in four steps: check the request,
find each domain's queries, rank each batch of queries (:func:`rank_full` or
:func:`rank_candidates`) and collect the per-query metrics and each corpus item's best rank
(:class:`_Collector`). Per-query results are returned raw, so that several processes can gather
them before aggregating (:meth:`EvalResult.concatenate`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from adirec.data.dataset import Candidates, Interactions, MultiDomainData
from adirec.eval.metrics import NOT_RANKED, aggregate, coverage, ranking_metrics

PROTOCOLS = ("full", "sampled")


class Scorer(Protocol):
    def score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        """(n_users, n_items) scores of every user for every item, in ``domain``."""


@dataclass
class EvalResult:
    """Raw results of :func:`evaluate`.

    Attributes:
        per_query: metric name -> (Q,) value of each query.
        query_domain: (Q,) domain of each query.
        query_user: (Q,) user of each query.
        best_rank: per domain, (corpus size,) the best 0-based rank each corpus item reached in
            any query's list (``NOT_RANKED`` when none); None leaves coverage out.
        ks: the cut-offs evaluated.
    """

    per_query: dict[str, np.ndarray]
    query_domain: np.ndarray
    query_user: np.ndarray
    best_rank: list[np.ndarray] | None = None
    ks: tuple[int, ...] = ()

    def metrics(self, domains: list[str]) -> dict[str, dict[str, float]]:
        """``{metric: {domain: value, "mean": unweighted mean over domains}}`` over the domains that
        have queries: the per-query metrics' means and catalogue ``coverage@k``."""
        out = aggregate(self.per_query, self.query_domain, domains)
        if self.best_rank is None:
            return out
        rows: dict[str, dict[str, float]] = {f"coverage@{k}": {} for k in self.ks}
        for d, name in enumerate(domains):
            if len(self.best_rank[d]) and np.any(self.query_domain == d):
                for metric, value in coverage(self.best_rank[d], list(self.ks)).items():
                    rows[metric][name] = value
        for row in rows.values():
            row["mean"] = float(np.mean(list(row.values()))) if row else float("nan")
        return out | rows

    @classmethod
    def concatenate(cls, parts: list[EvalResult]) -> EvalResult:
        """One result of the results of disjoint sets of queries (e.g. one per process)."""
        if not parts:
            raise ValueError("no results to concatenate")
        ranks = [p.best_rank for p in parts if p.best_rank is not None]
        best = None
        if len(ranks) == len(parts):
            best = [np.minimum.reduce([r[d] for r in ranks]) for d in range(len(ranks[0]))]
        return cls({k: np.concatenate([p.per_query[k] for p in parts]) for k in parts[0].per_query},
                   np.concatenate([p.query_domain for p in parts]), np.concatenate([p.query_user for p in parts]),
                   best, parts[0].ks)


def evaluate(scorer: Scorer, data: MultiDomainData, *, split: str, protocol: str, ks: list[int],
             seen: SeenItems | None = None, batch_users: int = 512) -> EvalResult:
    """Rank items for every (user, domain) with relevant items in ``split``."""
    _check_request(data, split, protocol, ks)
    kmax = max(ks)
    candidates = _candidate_lists(data, split) if protocol == "sampled" else None
    collector = _Collector(data, ks)
    for d in range(data.num_domains):
        queries = _DomainQueries.of(data.splits[split], d)
        if queries is None:
            continue
        if candidates is None:
            _check_corpus_size(data, d, kmax)
        else:
            lists = _lists_of(candidates, queries, data, split, kmax)
        for start, users, t_row, t_item in queries.chunks(batch_users):
            with torch.no_grad():
                if candidates is None:
                    top_items = rank_full(scorer, data.corpus[d], users, d, kmax, seen)
                else:
                    top_items = rank_candidates(scorer, lists[start:start + len(users)], users, d, kmax)
            collector.add(d, users, top_items, t_row, t_item, queries.counts[start:start + len(users)])
    if not collector.domains:
        raise ValueError(f"{data.name}: split {split!r} has no positive interactions")
    return collector.result()


# ------------------------------------------------------------------ step 1: the request
def _check_request(data: MultiDomainData, split: str, protocol: str, ks: list[int]) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if split not in data.splits or len(data.splits[split]) == 0:
        raise ValueError(f"{data.name}: split {split!r} is empty; nothing to evaluate")
    if not ks or min(ks) < 1:
        raise ValueError(f"cut-offs must be positive integers, got {ks}")


def _candidate_lists(data: MultiDomainData, split: str) -> Candidates:
    cands = data.candidates.get(split)
    if cands is None:
        raise ValueError(f"{data.name}: no candidate lists for split {split!r}; use --protocol full")
    return cands


def _check_corpus_size(data: MultiDomainData, domain: int, kmax: int) -> None:
    size = len(data.corpus[domain])
    if kmax > size:
        raise ValueError(f"cut-off {kmax} exceeds the {size} items of domain {data.domains[domain]!r}")


# ------------------------------------------------------------------ step 2: a domain's queries
@dataclass
class _DomainQueries:
    """The queries of one domain: the users with relevant items in the split (sorted), and each
    relevant item with the row of its query."""

    domain: int
    users: np.ndarray  # (Q,)
    target_row: np.ndarray  # (T,) query row of each relevant (user, item) pair
    target_item: np.ndarray  # (T,)
    counts: np.ndarray  # (Q,) relevant items per query

    @classmethod
    def of(cls, split: Interactions, domain: int) -> _DomainQueries | None:
        m = (split.domain == domain) & (split.weight > 0)
        if not m.any():
            return None
        users, row = np.unique(split.user[m], return_inverse=True)
        return cls(domain, users, row, split.item[m], np.bincount(row, minlength=len(users)))

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(first row, users, target rows relative to the chunk, target items) of each chunk."""
        for start in range(0, len(self.users), size):
            users = self.users[start:start + size]
            inside = (self.target_row >= start) & (self.target_row < start + len(users))
            yield start, users, self.target_row[inside] - start, self.target_item[inside]


def _lists_of(cands: Candidates, queries: _DomainQueries, data: MultiDomainData, split: str,
              kmax: int) -> np.ndarray:
    """(Q, C) candidate list of each query of ``queries``' domain."""
    domain = queries.domain
    sel = cands.domain == domain
    row_of = {u: j for j, u in enumerate(cands.user[sel].tolist())}
    missing = sum(u not in row_of for u in queries.users.tolist())
    if missing:
        raise ValueError(f"{data.name}: {missing} users of domain {data.domains[domain]!r} in split "
                         f"{split!r} have no candidate list")
    lists = cands.items[sel][[row_of[u] for u in queries.users.tolist()]]
    if kmax > lists.shape[1]:
        raise ValueError(f"cut-off {kmax} exceeds the {lists.shape[1]} candidates per query")
    return lists


# ------------------------------------------------------------------ step 3: ranking
def rank_full(scorer: Scorer, corpus: np.ndarray, users: np.ndarray, domain: int, kmax: int,
              seen: SeenItems | None) -> np.ndarray:
    """(n, kmax) item ids: each user's top ``kmax`` of the domain's corpus, training positives
    removed when ``seen`` is given."""
    s = _scores(scorer.score(users, domain, corpus)).clone()
    if seen is not None:
        seen.mask(s, users, domain)
    top = torch.topk(s, kmax, dim=1).indices.cpu().numpy()
    return corpus[top]


def rank_candidates(scorer: Scorer, lists: np.ndarray, users: np.ndarray, domain: int, kmax: int) -> np.ndarray:
    """(n, kmax) item ids: each user's top ``kmax`` of its candidate list (-1 = padding, never
    ranked above a real candidate)."""
    uniq, inv = np.unique(np.where(lists < 0, 0, lists), return_inverse=True)
    s_all = _scores(scorer.score(users, domain, uniq))
    dev = s_all.device  # a scorer may score on a GPU
    s = torch.gather(s_all, 1, torch.from_numpy(inv.reshape(lists.shape)).to(dev))
    s = s.masked_fill(torch.from_numpy(lists < 0).to(dev), float("-inf"))
    top = torch.topk(s, kmax, dim=1).indices.cpu().numpy()
    return np.take_along_axis(lists, top, axis=1)


def _scores(s) -> torch.Tensor:
    """A scorer's output as float32, left on the device it was computed on."""
    if isinstance(s, torch.Tensor):
        return s.to(torch.float32)
    return torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32))


# ------------------------------------------------------------------ step 4: collecting
def hits_of(top_items: np.ndarray, target_row: np.ndarray, target_item: np.ndarray, n_items_key: int) -> np.ndarray:
    """(Q, K) bool: is ``top_items[q, r]`` among the targets of query q (item 0, the unknown item,
    and padding never match)."""
    q = np.arange(len(top_items))[:, None]
    keys = q * n_items_key + top_items
    tkeys = target_row * n_items_key + target_item
    tkeys = tkeys[target_item > 0]
    return np.isin(keys, tkeys) & (top_items > 0)


class _Collector:
    """Per-query metrics of every batch, and the best rank each corpus item reached."""

    def __init__(self, data: MultiDomainData, ks: list[int]):
        self.ks, self.n_key = list(ks), data.num_items + 1
        self.per_query: dict[str, list[np.ndarray]] = {}
        self.domains: list[np.ndarray] = []
        self.users: list[np.ndarray] = []
        self.best_rank = [np.full(len(c), NOT_RANKED, dtype=np.int32) for c in data.corpus]
        self._order = [np.argsort(c, kind="stable") for c in data.corpus]
        self._sorted = [np.asarray(c)[o] for c, o in zip(data.corpus, self._order, strict=True)]

    def add(self, domain: int, users: np.ndarray, top_items: np.ndarray, target_row: np.ndarray,
            target_item: np.ndarray, counts: np.ndarray) -> None:
        hits = hits_of(top_items, target_row, target_item, self.n_key)
        for name, v in ranking_metrics(hits, counts, self.ks).items():
            self.per_query.setdefault(name, []).append(v)
        self.domains.append(np.full(len(users), domain))
        self.users.append(users)
        self._record_ranks(domain, top_items)

    def _record_ranks(self, domain: int, top_items: np.ndarray) -> None:
        """Lower each listed corpus item's best rank to its rank in these lists (items outside
        the corpus, the unknown item and padding are not counted)."""
        sorted_corpus = self._sorted[domain]
        if len(sorted_corpus) == 0:
            return
        ranks = np.broadcast_to(np.arange(top_items.shape[1], dtype=np.int32), top_items.shape).ravel()
        items = top_items.ravel()
        at = np.minimum(np.searchsorted(sorted_corpus, items), len(sorted_corpus) - 1)
        inside = (sorted_corpus[at] == items) & (items > 0)
        np.minimum.at(self.best_rank[domain], self._order[domain][at[inside]], ranks[inside])

    def result(self) -> EvalResult:
        return EvalResult({k: np.concatenate(v) for k, v in self.per_query.items()}, np.concatenate(self.domains),
                          np.concatenate(self.users), self.best_rank, tuple(self.ks))


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
