"""Turns raw, key-addressed columns into an encoded :class:`MultiDomainData`.

Every source (XMRec, RecBole, table, synthetic, Parquet) hands raw keys (strings or ints) to
:func:`build_dataset`; vocabularies, feature standardisation and the derived fields (ids,
behaviour histories, per-domain popularity) are computed here, from the training split only,
so that every source gets the same treatment.

The encoded data set is a function of the rows, not of their order: every vocabulary (users,
items, feature values) numbers its keys in sorted order, and the rows of each split are put in
one canonical order (user key, time, item key, domain, weight). Reordering a data file after
training therefore gives the same ids, tables and rows, and a trained model stays valid.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field as dc_field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adirec.data.dataset import (
    HIST_ALL, HIST_DOMAIN, Candidates, Interactions, MultiDomainData,
)
from adirec.data.schema import Field, Schema

UNK = "<unk>"

#: more domains than this draw a warning (each domain has its own parameters and statistics)
DOMAIN_WARN = 100
#: more domains than this are refused: per-domain tables hold (domains x users) rows
DOMAIN_LIMIT = 1000


class DataWarning(UserWarning):
    """Something about the input data that changes what is loaded (rows dropped or collapsed,
    an order chosen); the same text is kept in the data set's ``meta["notes"]``."""


def note(meta: dict, text: str) -> None:
    """Record ``text`` in ``meta["notes"]`` (shown by ``adirec data inspect``) and warn with it."""
    meta.setdefault("notes", []).append(text)
    warnings.warn(text, DataWarning, stacklevel=2)


def check_domain_count(count: int, rule: str, meta: dict | None = None) -> None:
    """Warn above :data:`DOMAIN_WARN` domains, refuse more than :data:`DOMAIN_LIMIT`; ``rule`` says
    where the domains came from (e.g. ``--domain-by item.genre``)."""
    if count > DOMAIN_LIMIT:
        raise ValueError(f"{rule} gives {count} domains, more than the limit of {DOMAIN_LIMIT} (every domain "
                         f"has its own parameters and (domains x users) feature tables); use a coarser rule "
                         f"(bucket edges, another attribute) or keep some domains with --domains")
    if count > DOMAIN_WARN:
        text = (f"{rule} gives {count} domains (more than {DOMAIN_WARN}); each has its own parameters and "
                f"statistics, so small domains train poorly; --domains keeps a few")
        if meta is None:
            warnings.warn(text, DataWarning, stacklevel=2)
        else:
            note(meta, text)


@dataclass
class RawInteractions:
    """Interactions with raw user/item keys; ``domain`` is already an index into the domain list."""

    user: np.ndarray
    item: np.ndarray
    domain: np.ndarray
    weight: np.ndarray | None = None
    timestamp: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.user)


@dataclass
class RawColumn:
    """One raw feature column: ``kind`` as in :class:`Field`; categorical values are tokens,
    sequence values are lists of tokens, dense values are floats ``(n,)`` or ``(n, k)``."""

    kind: str
    values: np.ndarray | list
    max_len: int = 8  # sequences only


@dataclass
class RawTable:
    """Features of users or items, one row per key."""

    keys: np.ndarray
    columns: dict[str, RawColumn] = dc_field(default_factory=dict)


@dataclass
class RawCandidates:
    user: np.ndarray  # raw user keys (Q,)
    domain: np.ndarray  # (Q,) domain index
    items: list  # Q lists of raw item keys


class Vocabulary:
    """Keys -> 1..n in sorted order (numbers by value, text by code point); unknown keys -> 0.

    Sorted, not numbered by first appearance, so that the ids do not depend on row order."""

    def __init__(self, keys):
        arr = _arrow(keys)
        unique = pc.unique(arr.drop_null())
        self._keys = unique.take(pc.array_sort_indices(unique))

    def __len__(self) -> int:  # index 0 included
        return len(self._keys) + 1

    def encode(self, keys) -> np.ndarray:
        arr = _arrow(keys)
        if arr.type != self._keys.type and len(arr):
            arr = arr.cast(self._keys.type)
        idx = pc.index_in(arr, value_set=self._keys)
        return idx.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1

    def keys(self) -> np.ndarray:
        return np.concatenate([np.array([UNK], dtype=object),
                               np.array(self._keys.to_pylist(), dtype=object)])


def _arrow(keys) -> pa.Array:
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        return keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    a = np.asarray(keys)
    if a.dtype.kind in "iu":
        return pa.array(a.astype(np.int64))
    return pa.array(a.astype(str) if a.dtype.kind != "O" else a, type=pa.string())


def _encode_interactions(raw: RawInteractions, users: Vocabulary, items: Vocabulary) -> Interactions:
    """Encoded rows in the canonical order (user key, time, item key, domain, weight)."""
    n = len(raw)
    it = Interactions(
        users.encode(raw.user), items.encode(raw.item), np.asarray(raw.domain, dtype=np.int64),
        np.ones(n, np.float32) if raw.weight is None else raw.weight,
        np.zeros(n, np.int64) if raw.timestamp is None else raw.timestamp,
    )
    # sort by the raw keys' ranks, so that keys unknown to the vocabulary (id 0) are ordered too
    user_rank, item_rank = Vocabulary(raw.user).encode(raw.user), Vocabulary(raw.item).encode(raw.item)
    order = np.lexsort((it.weight, it.domain, item_rank, it.timestamp, user_rank))
    return it.take(order)


def _feature_table(raw: RawTable, side: str, vocab: Vocabulary, train_ids: np.ndarray,
                   fields: list[Field], vocab_sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Encode ``raw`` into tables indexed by encoded id (row 0 and rows without data = unknown).

    Value vocabularies and dense statistics use only the rows of entities seen in training."""
    n_rows = len(vocab)
    ids = vocab.encode(raw.keys)
    keep = ids > 0  # entities never seen in train cannot be looked up anyway
    ids_kept = ids[keep]
    in_train = np.zeros(n_rows, dtype=bool)
    in_train[train_ids] = True
    fit_rows = in_train[ids_kept]
    tables: dict[str, np.ndarray] = {}
    for name, col in raw.columns.items():
        if len(col.values) != len(raw.keys):
            raise ValueError(f"{side} feature {name!r} has {len(col.values)} values for {len(raw.keys)} keys")
        if col.kind == "categorical":
            tokens = _tokens(np.asarray(col.values, dtype=object)[keep])
            v = Vocabulary(tokens.filter(pa.array(fit_rows)))
            t = np.zeros(n_rows, dtype=np.int64)
            t[ids_kept] = v.encode(tokens)
            fields.append(Field(name, side, "categorical"))
            vocab_sizes[name] = max(len(v), 2)
        elif col.kind == "sequence":
            seqs = [list(col.values[j] or [])[:col.max_len] for j in np.flatnonzero(keep)]
            lengths = np.array([len(s) for s in seqs], dtype=np.int64)
            tokens = _tokens(np.array([x for s in seqs for x in s], dtype=object))
            fit_tok = np.repeat(fit_rows, lengths)
            v = Vocabulary(tokens.filter(pa.array(fit_tok)))
            t = np.zeros((n_rows, col.max_len), dtype=np.int64)
            rows = np.repeat(ids_kept, lengths)
            cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            t[rows, cols] = v.encode(tokens)
            fields.append(Field(name, side, "sequence", dim=col.max_len))
            vocab_sizes[name] = max(len(v), 2)
        elif col.kind == "dense":
            vals = np.asarray(col.values, dtype=np.float64)[keep]
            vals = vals[:, None] if vals.ndim == 1 else vals
            if not np.all(np.isfinite(vals)):
                bad = int((~np.isfinite(vals)).any(axis=1).sum())
                raise ValueError(f"{side} feature {name!r}: {bad} rows hold NaN or infinity")
            t = np.zeros((n_rows, vals.shape[1]), dtype=np.float32)
            t[ids_kept] = standardize(vals, vals[fit_rows])
            fields.append(Field(name, side, "dense", dim=vals.shape[1]))
        else:
            raise ValueError(f"{side} feature {name!r}: unknown kind {col.kind!r}")
        tables[name] = t
    return tables


def _tokens(values: np.ndarray) -> pa.Array:
    return pa.array([None if (x is None or (isinstance(x, float) and x != x)) else str(x)
                     for x in values], type=pa.string())


def standardize(values: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance with statistics of ``fit`` (constant columns are only centred)."""
    if len(fit) == 0:
        fit = values
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((values - mean) / std).astype(np.float32)


def build_dataset(
    name: str,
    domains: list[str],
    train: RawInteractions,
    valid: RawInteractions | None = None,
    test: RawInteractions | None = None,
    *,
    users: RawTable | None = None,
    items: RawTable | None = None,
    user_domain_dense: dict[str, np.ndarray] | None = None,
    item_domain_dense: dict[str, np.ndarray] | None = None,
    candidates: dict[str, RawCandidates] | None = None,
    history_len: int = 50,
    corpus: str = "domain",
    meta: dict | None = None,
) -> MultiDomainData:
    """Encode raw columns into a :class:`MultiDomainData`.

    Args:
        domains: domain names; ``RawInteractions.domain`` indexes this list.
        users / items: raw user and item feature tables.
        user_domain_dense / item_domain_dense: per-domain dense features (e.g. an item's CTR or
            price in each domain), name -> ``(D, n_keys)`` or ``(D, n_keys, k)`` aligned to the keys
            of ``users`` / ``items``; standardised on the rows of training entities.
        history_len: length ``L`` of the behaviour-history fields.
        corpus: ``"domain"`` ranks, for each domain, the items trained on in that domain;
            ``"all"`` ranks every training item in every domain (domains defined on users).
    Derived fields: ``user_id``, ``item_id``, ``hist_all`` and ``hist_domain`` (training positives,
    vocabulary ``item_id``), ``user_domain_activity`` (log count of the user's training
    interactions in the domain) and ``item_domain_popularity`` (log count of the item's training
    interactions in the domain), both standardised.
    """
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    if corpus not in ("domain", "all"):
        raise ValueError(f"corpus must be 'domain' or 'all', got {corpus!r}")
    D = len(domains)
    if len(train) == 0:
        raise ValueError(f"{name}: the training split is empty")
    counts = np.bincount(np.asarray(train.domain, dtype=np.int64), minlength=D)
    if len(counts) > D:
        raise ValueError(f"{name}: training rows name domain index {len(counts) - 1}, only {D} domains")
    empty = [domains[d] for d in range(D) if counts[d] == 0]
    if empty:
        raise ValueError(f"{name}: domains with no training interactions: {empty}")
    user_vocab, item_vocab = Vocabulary(train.user), Vocabulary(train.item)
    splits = {"train": _encode_interactions(train, user_vocab, item_vocab)}
    for s, raw in (("valid", valid), ("test", test)):
        if raw is not None and len(raw):
            splits[s] = _encode_interactions(raw, user_vocab, item_vocab)
    tr = splits["train"]
    U1, I1 = len(user_vocab), len(item_vocab)
    vocab_sizes = {"user_id": U1, "item_id": I1}
    timed = bool(len(tr) and np.any(tr.timestamp != tr.timestamp[0]))  # histories in time order
    fields = [
        Field("user_id", "user", "categorical"),
        Field(HIST_ALL, "user", "sequence", vocab="item_id", dim=history_len, ordered=timed),
        Field(HIST_DOMAIN, "user", "sequence", vocab="item_id", per_domain=True, dim=history_len, ordered=timed),
        Field("user_domain_activity", "user", "dense", per_domain=True),
    ]
    user_table = {"user_id": np.arange(U1, dtype=np.int64)}
    if users is not None:
        user_table |= _feature_table(users, "user", user_vocab, tr.user, fields, vocab_sizes)
    fields += [Field("item_id", "item", "categorical"),
               Field("item_domain_popularity", "item", "dense", per_domain=True)]
    item_table = {"item_id": np.arange(I1, dtype=np.int64)}
    if items is not None:
        item_table |= _feature_table(items, "item", item_vocab, tr.item, fields, vocab_sizes)
    user_domain_table = {"user_domain_activity": _log_count_table(tr.domain, tr.user, D, U1)}
    item_domain_table = {"item_domain_popularity": _log_count_table(tr.domain, tr.item, D, I1)}
    for side, features, vocab, ids, table in (("user", users, user_vocab, tr.user, user_domain_table),
                                              ("item", items, item_vocab, tr.item, item_domain_table)):
        extra = user_domain_dense if side == "user" else item_domain_dense
        if extra:
            if features is None:
                raise ValueError(f"{name}: {side}-domain features need the {side} table's keys")
            table |= _domain_dense_tables(extra, features.keys, side, vocab, ids, D, fields)
    if corpus == "domain":
        corp = [np.unique(tr.item[tr.domain == d]) for d in range(D)]
    else:
        corp = [np.unique(tr.item)] * D
    cands = {}
    for s, rc in (candidates or {}).items():
        width = max((len(x) for x in rc.items), default=0)
        mat = np.full((len(rc.items), width), -1, dtype=np.int64)
        lengths = np.array([len(x) for x in rc.items], dtype=np.int64)
        flat = item_vocab.encode(_arrow(np.array([k for x in rc.items for k in x], dtype=object)))
        rows = np.repeat(np.arange(len(rc.items)), lengths)
        cols = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mat[rows, cols] = flat
        cands[s] = Candidates(user_vocab.encode(rc.user), np.asarray(rc.domain, np.int64), mat)
    return MultiDomainData(
        name=name, domains=list(domains), schema=Schema(fields, vocab_sizes),
        user_keys=user_vocab.keys(), item_keys=item_vocab.keys(), splits=splits,
        user_table=user_table, item_table=item_table,
        user_domain_table=user_domain_table, item_domain_table=item_domain_table,
        corpus=corp, candidates=cands, meta=dict(meta or {}),
    )


def _domain_dense_tables(extra: dict[str, np.ndarray], keys: np.ndarray, side: str, vocab: Vocabulary,
                         train_ids: np.ndarray, D: int, fields: list[Field]) -> dict[str, np.ndarray]:
    """(D, n_ids, k) standardised tables from per-domain values aligned to ``keys``."""
    ids = vocab.encode(keys)
    keep = ids > 0
    fit = np.isin(ids[keep], train_ids)
    out = {}
    for fname, values in extra.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[..., None] if v.ndim == 2 else v
        if v.ndim != 3 or v.shape[:2] != (D, len(keys)):
            raise ValueError(f"{side}-domain feature {fname!r} has shape {v.shape}, expected ({D}, {len(keys)}[, k])")
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{side}-domain feature {fname!r} holds NaN or infinity")
        kept = v[:, keep]  # (D, n, k)
        flat = kept.reshape(-1, v.shape[2])
        t = np.zeros((D, len(vocab), v.shape[2]), dtype=np.float32)
        t[:, ids[keep]] = standardize(flat, kept[:, fit].reshape(-1, v.shape[2])).reshape(kept.shape)
        fields.append(Field(fname, side, "dense", per_domain=True, dim=v.shape[2]))
        out[fname] = t
    return out


def _log_count_table(domain: np.ndarray, ids: np.ndarray, D: int, n: int) -> np.ndarray:
    """(D, n, 1) standardised log(1 + count) of training rows per (domain, id)."""
    return log_count_features(np.bincount(domain * n + ids, minlength=D * n).reshape(D, n))


def derived_count_tables(data: MultiDomainData, train: Interactions | None = None) -> dict[str, np.ndarray]:
    """The derived count features of ``data`` recomputed from ``train`` (default: its training
    split): ``{"user_domain_activity": (D, U + 1, 1), "item_domain_popularity": (D, I + 1, 1)}``.

    A trainer that holds training rows out (for early stopping) recomputes them without those
    rows, so that the features do not count the rows it validates on."""
    tr = data.splits["train"] if train is None else train
    D, U1, I1 = data.num_domains, data.num_users + 1, data.num_items + 1
    return {"user_domain_activity": _log_count_table(tr.domain, tr.user, D, U1),
            "item_domain_popularity": _log_count_table(tr.domain, tr.item, D, I1)}


def log_count_features(counts: np.ndarray) -> np.ndarray:
    """(D, n, 1) standardised log(1 + count) from a (D, n) count table.

    Statistics come from the (domain, id) pairs with a count; every other pair, and the unknown
    id (column 0, e.g. a candidate never seen in training), gets the standardised value of a
    count of 0: below every seen id, never the mean."""
    logc = np.log1p(counts.astype(np.float64))
    seen = counts > 0
    if not seen.any():
        return np.zeros((*counts.shape, 1), np.float32)
    mean, std = logc[seen].mean(), logc[seen].std() or 1.0
    return ((logc - mean) / std).astype(np.float32)[..., None]
