"""Splits derived from a data set after loading: the validation hold-out taken from training,
candidate lists drawn like a run file, and one domain cut out of a multi-domain data set."""
from __future__ import annotations

import dataclasses

import numpy as np

from adirec.data.build import derived_count_tables
from adirec.data.dataset import Candidates, Interactions, MultiDomainData


def holdout_split(data: MultiDomainData, fraction: float, seed: int) -> tuple[MultiDomainData, Interactions]:
    """Move the last training positive of a random ``fraction`` of users with >= 3 positives out
    of train: on data with time the last in the split's order (timestamp, then item id), the order
    behaviour histories follow, so every training row of its user comes before it; without time a
    random one. Returns (reduced data, held-out rows); the reduced data's count
    features (activity, popularity) are recomputed without those rows."""
    tr = data.splits["train"]
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(len(tr))  # drawn either way: the users chosen below do not depend on time
    if len(tr) and np.any(tr.timestamp != tr.timestamp[0]):
        tiebreak = tr.item
    order = np.lexsort((tiebreak, tr.timestamp, tr.user))
    users = tr.user[order]
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    counts = np.diff(np.r_[-1, last])
    eligible = last[counts >= 3]
    chosen = rng.random(len(eligible)) < fraction
    held = order[eligible[chosen]]
    keep = np.ones(len(tr), dtype=bool)
    keep[held] = False
    splits = dict(data.splits)
    splits["train"] = tr.take(np.flatnonzero(keep))
    # the count features must not count the rows validated on
    counts = derived_count_tables(data, splits["train"])
    reduced = dataclasses.replace(
        data, splits=splits,
        user_domain_table={**data.user_domain_table,
                           **{k: v for k, v in counts.items() if k in data.user_domain_table}},
        item_domain_table={**data.item_domain_table,
                           **{k: v for k, v in counts.items() if k in data.item_domain_table}})
    return reduced, tr.take(held)


def sample_candidates(data: MultiDomainData, queries: Interactions, width: int, *, seed: int) -> Candidates:
    """Candidate lists like a ``sampled`` run file: each query's positive plus ``width - 1``
    items drawn uniformly without replacement from its domain's corpus, excluding every item the
    user interacted with in training or in ``queries``."""
    rng = np.random.default_rng(seed)
    key = data.num_items + 1
    tr = data.splits["train"]
    seen = np.unique(np.concatenate([tr.user * key + tr.item, queries.user * key + queries.item]))
    rows = np.full((len(queries), width), -1, dtype=np.int64)
    rows[:, 0] = queries.item
    for d in range(data.num_domains):
        q = np.flatnonzero(queries.domain == d)
        if len(q) == 0:
            continue
        corpus = data.corpus[d]
        draw = corpus[rng.integers(0, len(corpus), (len(q), 3 * width))]  # (n, 3W), with repeats
        ok = ~np.isin(queries.user[q, None] * key + draw, seen)
        order = np.argsort(draw, axis=1, kind="stable")
        srt = np.take_along_axis(draw, order, axis=1)
        repeat = np.zeros_like(ok)
        np.put_along_axis(repeat, order[:, 1:], srt[:, 1:] == srt[:, :-1], axis=1)
        ok &= ~repeat  # keep the first draw of each item
        slot = np.cumsum(ok, axis=1)  # 1-based position among kept draws
        keep = ok & (slot < width)
        r, c = np.nonzero(keep)
        rows[q[r], slot[r, c]] = draw[r, c]
    return Candidates(queries.user.copy(), queries.domain.copy(), rows)


def restrict_to_domain(data: MultiDomainData, domain: int) -> MultiDomainData:
    """Domain ``domain`` of ``data`` alone, as a one-domain data set (its domain index is 0).

    Keeps that domain's rows of every split, its candidate lists, its corpus and its slice of
    the per-domain feature tables; ids, vocabularies, schema and the user / item tables are
    unchanged, so a model trained on it reads the same features as on the full data.
    """
    if not 0 <= domain < data.num_domains:
        raise ValueError(f"{data.name}: domain index {domain} outside [0, {data.num_domains})")
    splits = {}
    for name, it in data.splits.items():
        part = it.take(np.flatnonzero(it.domain == domain))
        part.domain = np.zeros(len(part), dtype=np.int64)
        splits[name] = part
    candidates = {}
    for name, c in data.candidates.items():
        sel = c.domain == domain
        candidates[name] = Candidates(c.user[sel], np.zeros(int(sel.sum()), dtype=np.int64), c.items[sel])
    dname = data.domains[domain]
    return MultiDomainData(
        name=f"{data.name}[{dname}]", domains=[dname], schema=data.schema,
        user_keys=data.user_keys, item_keys=data.item_keys, splits=splits,
        user_table=data.user_table, item_table=data.item_table,
        user_domain_table={k: v[domain:domain + 1] for k, v in data.user_domain_table.items()},
        item_domain_table={k: v[domain:domain + 1] for k, v in data.item_domain_table.items()},
        corpus=[data.corpus[domain]], candidates=candidates,
        meta={**data.meta, "restricted_to": dname},
    )


#: what a user's history holds when a split is evaluated: the training positives only (the
#: protocols of the shared benchmarks), or, for the test split, also the validation positives
#: that precede it (leave-one-out as published sequential recommenders evaluate: the model sees
#: every interaction before the one it must predict)
EVAL_HISTORIES = ("train", "train+valid")


def history_view(data: MultiDomainData, split: str, history: str = "train") -> MultiDomainData:
    """``data`` as seen when ``split`` is evaluated under ``history`` (:data:`EVAL_HISTORIES`): its
    training split holds every interaction a user's history (and the removal of seen items) may
    use. With ``"train+valid"`` and ``split == "test"`` the validation rows join the training rows
    (but those naming an item or user never trained on, id 0, which no history can hold);
    otherwise ``data`` itself."""
    if history not in EVAL_HISTORIES:
        raise ValueError(f"history must be one of {EVAL_HISTORIES}, got {history!r}")
    if history == "train" or split != "test" or not len(data.splits["valid"]):
        return data
    valid = data.splits["valid"]
    valid = valid.take(np.flatnonzero((valid.item != 0) & (valid.user != 0)))
    seen = Interactions.concat([data.splits["train"], valid])
    return dataclasses.replace(data, splits={**data.splits, "train": seen, "valid": Interactions.empty()})
