"""In-process recommendations from a loaded bundle; the CLI and the HTTP app both call this.

A request names a user and a domain. A known user is scored exactly as offline evaluation
scores it: ``TwoTowerModel.user_embedding(FeatureStore.user_features(user, domain), domain)``
against the domain's item vectors, by inner product, through the domain's FAISS index (exact
for small corpora), with the user's training positives removed when ``exclude_seen`` is set
(the ``full`` protocol's ``SeenItems``). An unknown user is scored from the features given in
the request (behaviour history as item keys, profile fields by name) or, without any, gets the
domain's most popular training items; the response says which path answered.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path

import numpy as np
import torch

from adirec.data.dataset import HIST_ALL, HIST_DOMAIN
from adirec.data.schema import OOV
from adirec.serve.bundle import Bundle, DomainIndex, load_bundle

#: sources of a recommendation
FROM_MODEL = "model"  # a known user, scored from the stored features
FROM_REQUEST = "request_features"  # an unknown user, scored from the request's features
FROM_POPULAR = "popular"  # an unknown user without features: the domain's popular items

DEFAULT_K = 100
HISTORY = "history"  # request feature: the user's recent items (raw item keys, oldest first)
MAX_HISTORY = 1000


class RequestError(ValueError):
    """The request is wrong (bad k, bad feature value); HTTP 422."""


class UnknownDomainError(KeyError):
    """The request names a domain the bundle does not serve; HTTP 404."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Recommendation:
    user_id: str | int
    domain: str
    items: list  # raw item keys, best first
    scores: list[float]  # inner products (popularity counts for FROM_POPULAR)
    model_version: str
    user_known: bool
    source: str
    notes: list[str] = dc_field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class Recommender:
    """Top-K per domain from a bundle. Thread-safe for concurrent reads (FAISS and torch
    inference do not mutate shared state); swap a whole Recommender to reload."""

    def __init__(self, bundle: Bundle, *, max_k: int = 1000, max_batch: int = 1000):
        if max_k < 1 or max_batch < 1:
            raise ValueError(f"max_k and max_batch must be >= 1, got {max_k}, {max_batch}")
        self.bundle, self.max_k, self.max_batch = bundle, max_k, max_batch
        schema = bundle.data.schema
        self._user_fields = {f.name: f for f in schema.side("user")}
        # fields a request may set directly; ids and histories are derived, not given
        self.request_fields = {n: f for n, f in self._user_fields.items()
                               if n not in ("user_id", HIST_ALL, HIST_DOMAIN)}

    @classmethod
    def from_path(cls, path: str | Path, **kw) -> "Recommender":
        return cls(load_bundle(path), **kw)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    # --------------------------------------------------------------------- public
    def recommend(self, user_id: str | int, domain: str, k: int | None = None, exclude_seen: bool = True,
                  features: dict | None = None) -> Recommendation:
        d = self._domain(domain)
        k = self._check_k(k, d)
        uid = int(self.bundle.users.encode([user_id])[0])
        notes: list[str] = []
        extra_seen = np.zeros(0, dtype=np.int64)
        if features:
            feats, extra_seen = self._request_features(uid, d, features, notes)
        elif uid == OOV:
            notes.append(f"user {user_id!r} is unknown and the request has no features: "
                         f"the domain's most popular items")
            return self._popular(user_id, d, k, notes)
        else:
            feats = self._stored_features(np.array([uid]), d)
        if uid == OOV:
            notes.append(f"user {user_id!r} is unknown: ranked from the request's features")
        query = self._embed(feats, d)  # (1, O)
        excluded = [self._excluded(uid, d.position, extra_seen if exclude_seen else None, exclude_seen)]
        ids, scores = self._search(d, query, k, excluded)[0]
        if len(ids) < k:
            notes.append(f"only {len(ids)} unseen items were found for k={k}")
        return Recommendation(user_id, d.name, self.bundle.items.decode(ids), scores.tolist(),
                              self.model_version, uid != OOV, FROM_REQUEST if uid == OOV else FROM_MODEL,
                              notes)

    def recommend_batch(self, user_ids: list, domain: str, k: int | None = None,
                        exclude_seen: bool = True) -> list[Recommendation]:
        """One user-tower pass and one index search for all known users; unknown ones get the
        popular items."""
        d = self._domain(domain)
        k = self._check_k(k, d)
        if len(user_ids) > self.max_batch:
            raise RequestError(f"at most {self.max_batch} users per batch, got {len(user_ids)}")
        uids = self.bundle.users.encode(user_ids)
        known = np.flatnonzero(uids != OOV)
        out: list[Recommendation | None] = [None] * len(user_ids)
        if len(known):
            query = self._embed(self._stored_features(uids[known], d), d)  # (B, O)
            excluded = [self._excluded(int(u), d.position, None, exclude_seen) for u in uids[known]]
            found = self._search(d, query, k, excluded)
            for (ids, scores), j in zip(found, known):
                notes = [] if len(ids) == k else [f"only {len(ids)} unseen items were found for k={k}"]
                out[j] = Recommendation(user_ids[j], d.name, self.bundle.items.decode(ids),
                                        scores.tolist(), self.model_version, True, FROM_MODEL, notes)
        for j in np.flatnonzero(uids == OOV):
            out[j] = self._popular(user_ids[j], d, k, [f"user {user_ids[j]!r} is unknown: the domain's most popular items"])
        return out

    def domain_size(self, domain: str) -> int:
        """Items in the domain's corpus; UnknownDomainError for a domain not served."""
        return self._domain(domain).size

    def metadata(self) -> dict:
        m = self.bundle.manifest
        return {
            "model": m["model"], "model_version": m["model_version"], "format_version": m["format_version"],
            "created_at": m["created_at"], "data": m.get("data"),
            "domains": {d.name: {"items": d.size, "index": d.index_info} for d in self.bundle.domains},
            "num_users": m.get("num_users"), "num_items": m.get("num_items"),
            "embedding_dim": m.get("embedding_dim"), "max_k": self.max_k, "max_batch": self.max_batch,
            "request_features": {HISTORY: f"list of item keys, oldest first (at most {MAX_HISTORY})",
                                 **{n: _describe(f, self.bundle.data.schema) for n, f in self.request_fields.items()}},
        }

    # ------------------------------------------------------------------- helpers
    def _domain(self, name: str) -> DomainIndex:
        for d in self.bundle.domains:
            if d.name == name:
                return d
        raise UnknownDomainError(f"unknown domain {name!r}; known domains: {self.bundle.domain_names}")

    def _check_k(self, k, d: DomainIndex) -> int:
        """k itself, or without one ``DEFAULT_K`` capped by the server limit and the corpus."""
        limit = min(self.max_k, d.size)
        if k is None:
            return min(DEFAULT_K, limit)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise RequestError(f"k must be an integer, got {k!r}")
        if not 1 <= k <= limit:
            raise RequestError(f"k must be in [1, {limit}] for domain {d.name!r} "
                               f"({d.size} items, server limit {self.max_k}), got {k}")
        return int(k)

    def _stored_features(self, uids: np.ndarray, d: DomainIndex) -> dict[str, torch.Tensor]:
        dom = np.full(len(uids), self.bundle.domain_names.index(d.name))
        return self.bundle.store.user_features(uids, dom)

    @torch.inference_mode()
    def _embed(self, feats: dict[str, torch.Tensor], d: DomainIndex) -> np.ndarray:
        n = len(next(iter(feats.values())))
        dom = torch.full((n,), self.bundle.domain_names.index(d.name), dtype=torch.long)
        return self.bundle.model.user_embedding(feats, dom).numpy().astype(np.float32, copy=False)

    def _excluded(self, uid: int, position: np.ndarray, extra: np.ndarray | None, exclude_seen: bool) -> np.ndarray:
        """Index rows to drop from this user's ranking: training positives (and request history)."""
        if not exclude_seen:
            return np.zeros(0, dtype=np.int64)
        items = self.bundle.seen(uid) if uid != OOV else np.zeros(0, dtype=np.int64)
        if extra is not None and len(extra):
            items = np.concatenate([items, extra])
        rows = position[items]
        return np.unique(rows[rows >= 0])

    def _search(self, d: DomainIndex, query: np.ndarray, k: int,
                excluded: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query row: (item ids, scores), best first, at most k. Over-fetches by the number
        of excluded rows, so an exact index returns exactly the top k of what remains."""
        fetch = min(d.size, k + max(len(e) for e in excluded))
        scores, rows = d.index.search(np.ascontiguousarray(query, dtype=np.float32), fetch)  # (B, fetch)
        B = len(query)
        drop = rows < 0  # an ANN index may find fewer than `fetch` candidates
        if any(len(e) for e in excluded):
            owner = np.repeat(np.arange(B), [len(e) for e in excluded])
            key = np.arange(B)[:, None] * d.size + rows
            drop |= np.isin(key, owner * d.size + np.concatenate(excluded))
        # keep the first k survivors of each row (stable sort keeps the index's order)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        keep_rows = np.take_along_axis(rows, order, axis=1)
        keep_scores = np.take_along_axis(scores, order, axis=1)
        counts = (~np.take_along_axis(drop, order, axis=1)).sum(axis=1)
        ids = d.item_ids[np.maximum(keep_rows, 0)]
        return [(ids[b, :counts[b]], keep_scores[b, :counts[b]]) for b in range(B)]

    def _popular(self, user_id, d: DomainIndex, k: int, notes: list[str]) -> Recommendation:
        return Recommendation(user_id, d.name, self.bundle.items.decode(d.popular_ids[:k]),
                              d.popular_counts[:k].astype(float).tolist(), self.model_version, False,
                              FROM_POPULAR, notes)

    def _request_features(self, uid: int, d: DomainIndex, features: dict,
                          notes: list[str]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The user's feature dict (1 row) with the request's values applied; also the encoded
        history items (excluded from the ranking like training positives)."""
        if not isinstance(features, dict):
            raise RequestError(f"features must be an object, got {type(features).__name__}")
        unknown = sorted(set(features) - set(self.request_fields) - {HISTORY})
        if unknown:
            raise RequestError(f"unknown feature(s) {unknown}; allowed: {[HISTORY, *self.request_fields]}")
        feats = self._stored_features(np.array([uid]), d)
        history = np.zeros(0, dtype=np.int64)
        if features.get(HISTORY) is not None:
            raw = features[HISTORY]
            if not isinstance(raw, list) or not all(_is_key(x) for x in raw):
                raise RequestError(f"features.{HISTORY} must be a list of item keys (strings or integers)")
            if len(raw) > MAX_HISTORY:
                raise RequestError(f"features.{HISTORY} holds {len(raw)} items; at most {MAX_HISTORY}")
            enc = self.bundle.items.encode(raw)
            missing = [raw[j] for j in np.flatnonzero(enc == OOV)]
            if missing:
                notes.append(f"{len(missing)} history item(s) unknown to the model were ignored: {missing[:10]}")
            history = enc[enc != OOV]
            for name in (HIST_ALL, HIST_DOMAIN):
                if name in feats:
                    feats[name] = _append_history(feats[name], history)
        for name, value in features.items():
            if name == HISTORY:
                continue
            feats[name] = self._field_value(name, value)
        return feats, history

    def _field_value(self, name: str, value) -> torch.Tensor:
        f = self.request_fields[name]
        if f.kind == "dense":
            vals = value if isinstance(value, list) else [value]
            if len(vals) != f.dim or not all(_is_number(v) and math.isfinite(v) for v in vals):
                raise RequestError(f"feature {name!r} is dense: give {f.dim} finite number(s), got {value!r}")
            return torch.tensor([vals], dtype=torch.float32)  # (1, dim)
        size = self.bundle.data.schema.vocab_sizes[f.vocab_name]
        if f.kind == "categorical":
            if not _is_int(value) or not 0 <= value < size:
                raise RequestError(f"feature {name!r} is categorical: give its encoded value, an integer "
                                   f"in [0, {size}) (0 = unknown), got {value!r}")
            return torch.tensor([value], dtype=torch.long)  # (1,)
        if not isinstance(value, list) or len(value) > f.dim or not all(_is_int(v) and 0 <= v < size for v in value):
            raise RequestError(f"feature {name!r} is a sequence: give at most {f.dim} encoded values, "
                               f"integers in [0, {size}), got {value!r}")
        row = [0] * (f.dim - len(value)) + list(value)
        return torch.tensor([row], dtype=torch.long)  # (1, L)


def _append_history(current: torch.Tensor, new: np.ndarray) -> torch.Tensor:
    """(1, L) left-padded history with ``new`` appended as the most recent items."""
    L = current.shape[1]
    old = current[0][current[0] != OOV]
    seq = torch.cat([old, torch.as_tensor(new, dtype=torch.long)])[-L:]
    return torch.cat([torch.zeros(L - len(seq), dtype=torch.long), seq]).unsqueeze(0)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_key(v) -> bool:
    return isinstance(v, str) or _is_int(v)


def _describe(f, schema) -> str:
    if f.kind == "dense":
        return f"dense: {f.dim} number(s) (standardised scale)"
    size = schema.vocab_sizes[f.vocab_name]
    if f.kind == "categorical":
        return f"categorical: encoded value in [0, {size})"
    return f"sequence: up to {f.dim} encoded values in [0, {size})"
