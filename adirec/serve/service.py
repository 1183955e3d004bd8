"""In-process recommendations from a loaded bundle; the CLI and the HTTP app both call this.

A request names a user and a domain. A known user is scored exactly as offline evaluation
scores it: ``TwoTowerModel.user_embedding(FeatureStore.user_features(user, domain), domain)``
against the domain's item vectors, by inner product, through the domain's FAISS index (exact
for small corpora), with the user's training positives removed when ``exclude_seen`` is set
(the ``full`` protocol's ``SeenItems``). An unknown user is scored from the features given in
the request (behaviour history as item keys, profile fields by name) or, without any, gets the
domain's most popular training items; the response says which path answered.

A request's user key is the key the training data stored, or, in a bundle whose keys are scoped
by domain (``user_key_scope == "domain"``: XMRec stores ``<market>:<userId>``), also the user's
own id, which is looked up as ``<domain>:<id>`` in the request's domain.

Every input is bounded before it costs anything: keys are at most :data:`MAX_KEY_CHARS` characters
(or the bundle's longest key), dense request features lie in [-DENSE_BOUND, DENSE_BOUND] (their
standardised scale), a user vector or score that is not finite is never ranked. Filters (items
to exclude, an allowed set, item attribute values) are applied before the top K is cut.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path
from typing import cast

import faiss
import numpy as np
import torch

from adirec.data.dataset import HIST_ALL, HIST_DOMAIN
from adirec.data.schema import OOV
from adirec.serve.bundle import DOMAIN_KEY_SEPARATOR, Bundle, DomainIndex, load_bundle

#: sources of a recommendation
FROM_MODEL = "model"  # a known user, scored from the stored features
FROM_REQUEST = "request_features"  # an unknown user, scored from the request's features
FROM_POPULAR = "popular"  # an unknown user without features: the domain's popular items

DEFAULT_K = 100
HISTORY = "history"  # request feature: the user's recent items (raw item keys, oldest first)
MAX_HISTORY = 1000
#: longest user or item key a request may name (a bundle whose own keys are longer allows those)
MAX_KEY_CHARS = 256
#: request dense features are in the standardised scale of training; beyond this bound they are
#: not a user but an attack on the tower's arithmetic
DENSE_BOUND = 100.0
#: most item keys in a filter list
MAX_FILTER_ITEMS = 10_000
#: a filter that leaves at most this many items is ranked exactly by a direct product
BRUTE_FORCE_MAX = 50_000
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


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
    user_key: str | int | None = None  # the stored key the request resolved to
    item_features: list[dict] | None = None  # per item, when asked for

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Filters:
    """Request-time restrictions of a domain's ranking, applied before the top K is cut.

    Attributes:
        exclude_items: item keys never returned.
        allow_items: when given, only these item keys may be returned.
        attributes: item field -> allowed encoded values: a categorical field matches when its
            value is one of them, a sequence field when any of its values is.
    """

    exclude_items: list = dc_field(default_factory=list)
    allow_items: list | None = None
    attributes: dict[str, list[int]] = dc_field(default_factory=dict)

    @classmethod
    def parse(cls, raw) -> Filters | None:
        """From a request's ``filters`` object (None stays None); RequestError on bad values."""
        if raw is None or isinstance(raw, Filters):
            return raw
        if not isinstance(raw, dict):
            raise RequestError(f"filters must be an object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {"exclude_items", "allow_items", "attributes"})
        if unknown:
            raise RequestError(f"unknown filter(s) {unknown}; allowed: exclude_items, allow_items, attributes")
        out = cls()
        for name in ("exclude_items", "allow_items"):
            value = raw.get(name)
            if value is None:
                continue
            if not isinstance(value, list) or not all(_is_key(x) for x in value):
                raise RequestError(f"filters.{name} must be a list of item keys (strings or integers)")
            if len(value) > MAX_FILTER_ITEMS:
                raise RequestError(f"filters.{name} holds {len(value)} keys; at most {MAX_FILTER_ITEMS}")
            setattr(out, name, list(value))
        attributes = raw.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise RequestError("filters.attributes must map item fields to a value or a list of values")
        for field, values in attributes.items():
            values = values if isinstance(values, list) else [values]
            if not values or len(values) > MAX_FILTER_ITEMS or not all(_is_int(v) for v in values):
                raise RequestError(f"filters.attributes.{field} must be an encoded value (integer) or a "
                                   f"non-empty list of at most {MAX_FILTER_ITEMS} of them, got {attributes[field]!r}")
            out.attributes[field] = values
        return out


@dataclass
class _Compiled:
    """A domain's filters as index rows: ``allowed`` (sorted rows, None = every row) and
    ``excluded`` (rows never returned)."""

    allowed: np.ndarray | None
    excluded: np.ndarray


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
        self.item_fields = {f.name: f for f in schema.side("item") if f.name != "item_id"}
        #: item fields a filter may name (one value or a sequence of values per item)
        self.filter_fields = {n: f for n, f in self.item_fields.items()
                              if f.kind in ("categorical", "sequence") and not f.per_domain}
        self.max_key_chars = max(MAX_KEY_CHARS, bundle.users.longest, bundle.items.longest)
        tr = bundle.data.splits["train"]
        activity = np.bincount(tr.user[tr.weight > 0], minlength=bundle.data.num_users + 1)
        self.example_users = bundle.users.decode(np.argsort(-activity[1:], kind="stable")[:20] + 1)

    @classmethod
    def from_path(cls, path: str | Path, **kw) -> Recommender:
        return cls(load_bundle(path), **kw)

    @property
    def model_version(self) -> str:
        return self.bundle.model_version

    # --------------------------------------------------------------------- public
    def recommend(self, user_id: str | int, domain: str, k: int | None = None, exclude_seen: bool = True,
                  features: dict | None = None, filters: Filters | dict | None = None,
                  include_features: bool = False) -> Recommendation:
        d = self._domain(domain)
        k = self._check_k(k, d)
        uid = int(self.resolve_users([user_id], d.name)[0])
        notes: list[str] = []
        filt = self._compile(d, Filters.parse(filters), notes)
        extra_seen = np.zeros(0, dtype=np.int64)
        if features:
            feats, extra_seen = self._request_features(uid, d, features, notes)
        elif uid == OOV:
            notes.append(f"user {user_id!r} is unknown and the request has no features: "
                         f"the domain's most popular items")
            return self._popular(user_id, d, k, notes, filt, include_features)
        else:
            feats = self._stored_features(np.array([uid]), d)
        if uid == OOV:
            notes.append(f"user {user_id!r} is unknown: ranked from the request's features")
        query = self._embed(feats, d)  # (1, O)
        if not np.all(np.isfinite(query)):
            if features:
                raise RequestError("the user tower gave a non-finite vector for this request's features; "
                                   "nothing can be ranked from it (check the dense feature values)")
            notes.append("the user's vector is not finite (a defect of the bundle): the domain's most popular items")
            return self._popular(user_id, d, k, notes, filt, include_features, uid)
        excluded = [self._excluded(uid, d.position, extra_seen if exclude_seen else None, exclude_seen, filt)]
        ids, scores = self._search(d, query, k, excluded, filt.allowed, notes)[0]
        if len(ids) < k:
            notes.append(f"only {len(ids)} items remain for k={k} after excluding seen and filtered items")
        return self._result(user_id, d, ids, scores.tolist(), uid, FROM_REQUEST if uid == OOV else FROM_MODEL,
                            notes, include_features)

    def recommend_batch(self, user_ids: list, domain: str, k: int | None = None, exclude_seen: bool = True,
                        filters: Filters | dict | None = None, include_features: bool = False) -> list[Recommendation]:
        """One user-tower pass and one index search for all known users; unknown ones get the
        popular items."""
        d = self._domain(domain)
        k = self._check_k(k, d)
        if len(user_ids) > self.max_batch:
            raise RequestError(f"at most {self.max_batch} users per batch, got {len(user_ids)}")
        uids = self.resolve_users(user_ids, d.name)
        shared_notes: list[str] = []
        filt = self._compile(d, Filters.parse(filters), shared_notes)
        known = np.flatnonzero(uids != OOV)
        out: list[Recommendation | None] = [None] * len(user_ids)
        if len(known):
            query = self._embed(self._stored_features(uids[known], d), d)  # (B, O)
            finite = np.all(np.isfinite(query), axis=1)
            for j in known[~finite]:
                out[j] = self._popular(user_ids[j], d, k, [*shared_notes, "the user's vector is not finite (a defect "
                                       "of the bundle): the domain's most popular items"], filt, include_features,
                                       int(uids[j]))
            known, query = known[finite], query[finite]
        if len(known):
            excluded = [self._excluded(int(u), d.position, None, exclude_seen, filt) for u in uids[known]]
            found = self._search(d, query, k, excluded, filt.allowed, shared_notes)
            for (ids, scores), j in zip(found, known, strict=True):
                notes = list(shared_notes)
                if len(ids) < k:
                    notes.append(f"only {len(ids)} items remain for k={k} after excluding seen and filtered items")
                out[j] = self._result(user_ids[j], d, ids, scores.tolist(), int(uids[j]), FROM_MODEL, notes,
                                      include_features)
        for j in np.flatnonzero(uids == OOV):
            out[j] = self._popular(user_ids[j], d, k, [*shared_notes, f"user {user_ids[j]!r} is unknown: the "
                                   f"domain's most popular items"], filt, include_features)
        return cast(list[Recommendation], out)  # every user is either known or unknown: no row left None

    def resolve_users(self, user_ids: list, domain: str) -> np.ndarray:
        """(n,) encoded ids of request keys in ``domain`` (0 = unknown). A key is looked up as
        given; in a bundle with domain-scoped keys, failing that, as ``<domain>:<key>``."""
        for u in user_ids:
            self.check_key(u, "user_id")
        users = self.bundle.users
        ids = users.encode(user_ids)
        if self.bundle.user_key_scope == "domain":
            for j in np.flatnonzero(ids == OOV):
                ids[j] = users.get(f"{domain}{DOMAIN_KEY_SEPARATOR}{user_ids[j]}")
        return ids

    def check_key(self, key, what: str) -> None:
        """RequestError unless ``key`` is a string or an integer that could be a stored key."""
        if _is_int(key):
            if not INT64_MIN <= key <= INT64_MAX:
                raise RequestError(f"{what} {_short(key)} is outside the 64-bit integer range of keys")
        elif not isinstance(key, str):
            raise RequestError(f"{what} must be a string or an integer, got {type(key).__name__}")
        elif len(key) > self.max_key_chars:
            raise RequestError(f"{what} is {len(key)} characters long; keys are at most {self.max_key_chars}")

    def user_history(self, user_id: str | int, domain: str, limit: int = 50) -> dict:
        """The user's training positives in every domain, newest first, with their item features."""
        d = self._domain(domain)
        if not _is_int(limit) or not 1 <= limit <= MAX_HISTORY:
            raise RequestError(f"limit must be an integer in [1, {MAX_HISTORY}], got {limit!r}")
        uid = int(self.resolve_users([user_id], d.name)[0])
        rows = self.bundle.seen_rows[self.bundle.seen_indptr[uid]:self.bundle.seen_indptr[uid + 1]][::-1][:limit]
        if uid == OOV:
            rows = rows[:0]
        tr = self.bundle.data.splits["train"]
        items, domains = tr.item[rows], tr.domain[rows]
        features = [self.item_features(items[j:j + 1], int(domains[j]))[0] for j in range(len(rows))]
        names = self.bundle.domain_names
        return {"user_id": user_id, "user_key": self.bundle.users.decode([uid])[0] if uid else None,
                "user_known": uid != OOV, "items": self.bundle.items.decode(items),
                "domains": [names[j] for j in domains], "timestamps": tr.timestamp[rows].tolist(),
                "item_features": features}

    def item_features(self, ids: np.ndarray, domain: int) -> list[dict]:
        """Per item: its stored features (encoded values: vocabulary indices and standardised
        numbers; sequences without padding; per-domain fields in ``domain``)."""
        data = self.bundle.data
        out: list[dict] = [{} for _ in range(len(ids))]
        for name, f in self.item_fields.items():
            table = data.item_domain_table[name][domain] if f.per_domain else data.item_table[name]
            values = table[np.asarray(ids, dtype=np.int64)]
            for row, v in zip(out, values, strict=True):
                if f.kind == "categorical":
                    row[name] = int(v)
                elif f.kind == "sequence":
                    row[name] = [int(x) for x in v if x != OOV]
                else:
                    row[name] = float(v[0]) if f.dim == 1 else [float(x) for x in v]
        return out

    def domain_size(self, domain: str) -> int:
        """Items in the domain's corpus; UnknownDomainError for a domain not served."""
        return self._domain(domain).size

    def metadata(self) -> dict:
        m = self.bundle.manifest
        schema = self.bundle.data.schema
        return {
            "model": m["model"], "model_version": m["model_version"], "format_version": m["format_version"],
            "revision": m.get("revision", 0), "created_at": m["created_at"], "data": m.get("data"),
            "domains": {d.name: {"items": d.size, "index": d.index_info} for d in self.bundle.domains},
            "domain_names": self.bundle.domain_names,
            "num_users": m.get("num_users"), "num_items": m.get("num_items"), "model_items": m.get("model_items"),
            "embedding_dim": m.get("embedding_dim"), "max_k": self.max_k, "max_batch": self.max_batch,
            "user_key_scope": self.bundle.user_key_scope,
            "user_key": ("the user's id as in the training data, or the stored '<domain>:<id>'"
                         if self.bundle.user_key_scope == "domain" else "the user's id as in the training data"),
            "max_key_chars": self.max_key_chars,
            "example_users": self.example_users,
            "request_features": {HISTORY: f"list of item keys, oldest first (at most {MAX_HISTORY})",
                                 **{n: _describe(f, schema) for n, f in self.request_fields.items()}},
            "item_features": {n: _describe(f, schema) for n, f in self.item_fields.items()},
            "feature_values": "encoded: categorical and sequence values are vocabulary indices (0 = unknown), "
                              "dense values standardised; the bundle keeps no raw feature values",
            "filter_fields": {n: _describe(f, schema) for n, f in self.filter_fields.items()},
        }

    # ------------------------------------------------------------------- helpers
    def _domain(self, name: str) -> DomainIndex:
        for d in self.bundle.domains:
            if d.name == name:
                return d
        raise UnknownDomainError(f"unknown domain {_short(name)}; known domains: {self.bundle.domain_names}")

    def _check_k(self, k, d: DomainIndex) -> int:
        """k itself, or without one ``DEFAULT_K`` capped by the server limit and the corpus."""
        limit = min(self.max_k, d.size)
        if k is None:
            return min(DEFAULT_K, limit)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise RequestError(f"k must be an integer, got {_short(k)}")
        if not 1 <= k <= limit:
            raise RequestError(f"k must be in [1, {limit}] for domain {d.name!r} "
                               f"({d.size} items, server limit {self.max_k}), got {_short(k)}")
        return int(k)

    def _stored_features(self, uids: np.ndarray, d: DomainIndex) -> dict[str, torch.Tensor]:
        dom = np.full(len(uids), self.bundle.domain_names.index(d.name))
        return self.bundle.store.user_features(uids, dom)

    @torch.inference_mode()
    def _embed(self, feats: dict[str, torch.Tensor], d: DomainIndex) -> np.ndarray:
        n = len(next(iter(feats.values())))
        dom = torch.full((n,), self.bundle.domain_names.index(d.name), dtype=torch.long)
        return self.bundle.model.user_embedding(feats, dom).numpy().astype(np.float32, copy=False)

    def _item_ids(self, keys: list, what: str, notes: list[str]) -> np.ndarray:
        """Encoded ids of request item keys (unknown ones dropped, with a note)."""
        for key in keys:
            self.check_key(key, what)
        ids = self.bundle.items.encode(keys)
        missing = [keys[j] for j in np.flatnonzero(ids == OOV)]
        if missing:
            notes.append(f"{len(missing)} {what} key(s) unknown to the bundle were ignored: "
                         f"{[_short(m) for m in missing[:10]]}")
        return ids[ids != OOV]

    def _compile(self, d: DomainIndex, filters: Filters | None, notes: list[str]) -> _Compiled:
        """The request's filters as rows of ``d``'s index."""
        if filters is None:
            return _Compiled(None, np.zeros(0, dtype=np.int64))
        rows = d.position[self._item_ids(filters.exclude_items, "filters.exclude_items", notes)]
        excluded = np.unique(rows[rows >= 0])
        allowed = None
        if filters.allow_items is not None:
            mask = np.zeros(d.size, dtype=bool)
            rows = d.position[self._item_ids(filters.allow_items, "filters.allow_items", notes)]
            mask[rows[rows >= 0]] = True
            allowed = mask
        for name, values in filters.attributes.items():
            f = self.filter_fields.get(name)
            if f is None:
                raise RequestError(f"filters.attributes: {_short(name)} is not a filterable item field; "
                                   f"allowed: {sorted(self.filter_fields)}")
            column = self.bundle.data.item_table[name][d.item_ids]  # (n,) or (n, L)
            hits = np.isin(column, np.asarray(values, dtype=np.int64))
            match = cast(np.ndarray, hits.any(axis=1)) if hits.ndim == 2 else hits  # (n,) either way
            allowed = match if allowed is None else allowed & match
        return _Compiled(None if allowed is None else np.flatnonzero(allowed), excluded)

    def _excluded(self, uid: int, position: np.ndarray, extra: np.ndarray | None, exclude_seen: bool,
                  filt: _Compiled) -> np.ndarray:
        """Index rows to drop from this user's ranking: training positives (and request history)
        and the request's excluded items."""
        if not exclude_seen:
            return filt.excluded
        items = self.bundle.seen(uid) if uid != OOV else np.zeros(0, dtype=np.int64)
        if extra is not None and len(extra):
            items = np.concatenate([items, extra])
        rows = position[items]
        return np.union1d(rows[rows >= 0], filt.excluded)

    def _search(self, d: DomainIndex, query: np.ndarray, k: int, excluded: list[np.ndarray],
                allowed: np.ndarray | None, notes: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query row: (item ids, scores), best first, at most k, never an excluded row, only
        allowed rows (None = all). A small allowed set is ranked exactly by a direct product;
        otherwise the index searches (restricted to the allowed rows by a FAISS selector) and
        over-fetches by the number of excluded rows, so an exact index returns exactly the top k
        of what remains. Items whose score is not finite are dropped."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        B = len(query)
        if allowed is not None and len(allowed) <= BRUTE_FORCE_MAX:
            scores = query @ d.embeddings[allowed].T  # (B, m)
            fetch = min(len(allowed), k + max(len(e) for e in excluded))
            top = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
            rows = allowed[top]
            scores = np.take_along_axis(scores, top, axis=1)
        else:
            fetch = min(d.size if allowed is None else len(allowed), k + max(len(e) for e in excluded))
            params, _keep = self._selector(d, allowed)
            scores, rows = d.index.search(query, max(fetch, 1), params=params)  # (B, fetch)
        drop = (rows < 0) | ~np.isfinite(scores)  # an ANN index may find fewer than `fetch` candidates
        bad = int((~np.isfinite(scores) & (rows >= 0)).sum())
        if bad:
            notes.append(f"{bad} item score(s) were not finite and were dropped")
        if any(len(e) for e in excluded):
            owner = np.repeat(np.arange(B), [len(e) for e in excluded])
            key = np.arange(B)[:, None] * d.size + rows
            drop |= np.isin(key, owner * d.size + np.concatenate(excluded))
        # keep the first k survivors of each row (stable sort keeps the ranking's order)
        order = np.argsort(drop, axis=1, kind="stable")[:, :k]
        keep_rows = np.take_along_axis(rows, order, axis=1)
        keep_scores = np.take_along_axis(scores, order, axis=1)
        counts = (~np.take_along_axis(drop, order, axis=1)).sum(axis=1)
        ids = d.item_ids[np.maximum(keep_rows, 0)]
        return [(ids[b, :counts[b]], keep_scores[b, :counts[b]]) for b in range(B)]

    @staticmethod
    def _selector(d: DomainIndex, allowed: np.ndarray | None):
        """FAISS search parameters restricting a search to ``allowed`` rows, keeping the index's
        own probe settings; also the buffer the selector reads (it must outlive the search)."""
        if allowed is None:
            return None, None
        mask = np.zeros(d.size, dtype=bool)
        mask[allowed] = True
        bits = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(d.size, faiss.swig_ptr(bits))
        kind = d.index_info.get("kind")
        # faiss's stubs know neither SearchParametersHNSW nor the keyword arguments that its Python
        # wrapper gives the search-parameter classes (which also keep `sel` referenced)
        params: faiss.SearchParameters
        if kind == "ivf":
            nprobe = int(faiss.extract_index_ivf(d.index).nprobe)
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)  # type: ignore[call-arg]
        elif kind == "hnsw":
            ef_search = int(cast(faiss.IndexHNSW, faiss.downcast_index(d.index)).hnsw.efSearch)
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef_search)  # type: ignore[attr-defined]
        else:
            params = faiss.SearchParameters(sel=sel)  # type: ignore[call-arg]
        return params, (bits, sel)

    def _popular(self, user_id, d: DomainIndex, k: int, notes: list[str], filt: _Compiled,
                 include_features: bool, uid: int = OOV) -> Recommendation:
        ids, counts = d.popular_ids, d.popular_counts
        if filt.allowed is not None or len(filt.excluded):
            rows = d.position[ids]
            keep = ~np.isin(rows, filt.excluded)
            if filt.allowed is not None:
                keep &= np.isin(rows, filt.allowed)
            ids, counts = ids[keep], counts[keep]
        if len(ids) < k:
            notes.append(f"only {len(ids)} items remain for k={k} after the filters")
        rec = self._result(user_id, d, ids[:k], counts[:k].astype(float).tolist(), uid, FROM_POPULAR, notes,
                           include_features)
        rec.user_known = bool(uid != OOV)
        return rec

    def _result(self, user_id, d: DomainIndex, ids: np.ndarray, scores: list[float], uid: int, source: str,
                notes: list[str], include_features: bool) -> Recommendation:
        return Recommendation(
            user_id, d.name, self.bundle.items.decode(ids), scores, self.model_version, bool(uid != OOV), source, notes,
            user_key=self.bundle.users.decode([uid])[0] if uid != OOV else None,
            item_features=self.item_features(ids, self.bundle.domain_names.index(d.name)) if include_features else None)

    def _request_features(self, uid: int, d: DomainIndex, features: dict,
                          notes: list[str]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        """The user's feature dict (1 row) with the request's values applied; also the encoded
        history items (excluded from the ranking like training positives)."""
        if not isinstance(features, dict):
            raise RequestError(f"features must be an object, got {type(features).__name__}")
        unknown = sorted(set(features) - set(self.request_fields) - {HISTORY})
        if unknown:
            raise RequestError(f"unknown feature(s) {[_short(u) for u in unknown[:10]]}; "
                               f"allowed: {[HISTORY, *self.request_fields]}")
        feats = self._stored_features(np.array([uid]), d)
        history = np.zeros(0, dtype=np.int64)
        if features.get(HISTORY) is not None:
            raw = features[HISTORY]
            if not isinstance(raw, list) or not all(_is_key(x) for x in raw):
                raise RequestError(f"features.{HISTORY} must be a list of item keys (strings or integers)")
            if len(raw) > MAX_HISTORY:
                raise RequestError(f"features.{HISTORY} holds {len(raw)} items; at most {MAX_HISTORY}")
            history = self._item_ids(raw, f"features.{HISTORY}", notes)
            # items added after training have no embedding row: they count as seen only
            known = history[history <= self.bundle.model_items]
            for name in (HIST_ALL, HIST_DOMAIN):
                if name in feats:
                    feats[name] = _append_history(feats[name], known)
        for name, value in features.items():
            if name == HISTORY:
                continue
            feats[name] = self._field_value(name, value)
        return feats, history

    def _field_value(self, name: str, value) -> torch.Tensor:
        f = self.request_fields[name]
        if f.kind == "dense":
            vals = value if isinstance(value, list) else [value]
            if len(vals) != f.dim or not all(_is_number(v) and math.isfinite(v) and abs(v) <= DENSE_BOUND
                                             for v in vals):
                raise RequestError(f"feature {name!r} is dense, in the standardised scale of training: give "
                                   f"{f.dim} finite number(s) in [-{DENSE_BOUND:g}, {DENSE_BOUND:g}], "
                                   f"got {_short(value)}")
            return torch.tensor([vals], dtype=torch.float32)  # (1, dim)
        size = self.bundle.data.schema.vocab_sizes[f.id_vocab]
        if f.kind == "categorical":
            if not _is_int(value) or not 0 <= value < size:
                raise RequestError(f"feature {name!r} is categorical: give its encoded value, an integer "
                                   f"in [0, {size}) (0 = unknown), got {_short(value)}")
            return torch.tensor([value], dtype=torch.long)  # (1,)
        if not isinstance(value, list) or len(value) > f.dim or not all(_is_int(v) and 0 <= v < size for v in value):
            raise RequestError(f"feature {name!r} is a sequence: give at most {f.dim} encoded values, "
                               f"integers in [0, {size}), got {_short(value)}")
        row = [0] * (f.dim - len(value)) + list(value)
        return torch.tensor([row], dtype=torch.long)  # (1, L)


def _append_history(current: torch.Tensor, new: np.ndarray) -> torch.Tensor:
    """(1, L) left-padded history with ``new`` appended as the most recent items."""
    L = current.shape[1]
    old = current[0][current[0] != OOV]
    seq = torch.cat([old, torch.as_tensor(new, dtype=torch.long)])[-L:]
    return torch.cat([torch.zeros(L - len(seq), dtype=torch.long), seq]).unsqueeze(0)


def _short(value, limit: int = 80) -> str:
    """repr of a request value, cut so that an error message never echoes a huge input."""
    huge = isinstance(value, int) and abs(value) > 10 ** 40
    text = f"<{value.bit_length()}-bit integer>" if huge else repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_key(v) -> bool:
    return isinstance(v, str) or _is_int(v)


def _describe(f, schema) -> str:
    if f.kind == "dense":
        scope = ", per domain" if f.per_domain else ""
        return f"dense: {f.dim} number(s) (standardised scale, [-{DENSE_BOUND:g}, {DENSE_BOUND:g}]{scope})"
    size = schema.vocab_sizes[f.vocab_name]
    if f.kind == "categorical":
        return f"categorical: encoded value in [0, {size})"
    return f"sequence: up to {f.dim} encoded values in [0, {size})"
