"""In-memory, columnar multi-domain data set.

:class:`MultiDomainData` mirrors the paper's Table 1: interactions (user, item, domain, weight,
timestamp) split into train/valid/test, user features, item features, user-domain features and
item-domain features, plus a :class:`~adirec.data.schema.Schema` declaring every field. All ids
are already encoded: users ``1..U`` and items ``1..I`` (index 0 = unknown, see ``schema.OOV``),
domains ``0..D-1``. Vocabularies come from the training split only.

Feature tables are indexed by id: a user table has ``U + 1`` rows, a user-domain table has shape
``(D, U + 1, ...)``; likewise for items. Behaviour histories are not stored as tables: they are
derived from the training positives by :class:`adirec.data.batches.FeatureStore`.
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field

import numpy as np

from adirec.data.schema import OOV, Schema

SPLITS = ("train", "valid", "test")

#: names of the derived behaviour-history fields (sequence of item ids)
HIST_ALL = "hist_all"  # the user's training positives in every domain
HIST_DOMAIN = "hist_domain"  # the user's training positives in the example's domain


@dataclass
class Interactions:
    """Columns of a set of interactions; every array has the same length ``n``."""

    user: np.ndarray  # (n,) int64, 0 = user unseen in train
    item: np.ndarray  # (n,) int64, 0 = item unseen in train
    domain: np.ndarray  # (n,) int64 in [0, D)
    weight: np.ndarray  # (n,) float32, label / sample weight (1 = positive)
    timestamp: np.ndarray  # (n,) int64; 0 where the source has no time

    def __post_init__(self) -> None:
        self.user = np.asarray(self.user, dtype=np.int64)
        self.item = np.asarray(self.item, dtype=np.int64)
        self.domain = np.asarray(self.domain, dtype=np.int64)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.timestamp = np.asarray(self.timestamp, dtype=np.int64)
        n = len(self.user)
        for name in ("item", "domain", "weight", "timestamp"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"interaction column {name!r} has {len(getattr(self, name))} rows, user has {n}"
                )
        if n and not np.all(np.isfinite(self.weight)):
            raise ValueError("interaction weights contain NaN or infinity")

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def empty(cls) -> Interactions:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z.astype(np.float32), z)

    def take(self, index: np.ndarray | slice) -> Interactions:
        return Interactions(
            self.user[index], self.item[index], self.domain[index],
            self.weight[index], self.timestamp[index],
        )

    @staticmethod
    def concat(parts: list[Interactions]) -> Interactions:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Interactions.empty()
        return Interactions(*(np.concatenate([getattr(p, c) for p in parts])
                              for c in ("user", "item", "domain", "weight", "timestamp")))


@dataclass
class Candidates:
    """Candidate lists of the ``sampled`` protocol (one row per (user, domain) query)."""

    user: np.ndarray  # (Q,) int64
    domain: np.ndarray  # (Q,) int64
    items: np.ndarray  # (Q, C) int64 encoded items, -1 = padding (list shorter than C)


@dataclass
class MultiDomainData:
    """A multi-domain data set, fully encoded; see the module docstring."""

    name: str
    domains: list[str]
    schema: Schema
    user_keys: np.ndarray  # (U + 1,) object, raw user ids; index 0 = "<unk>"
    item_keys: np.ndarray  # (I + 1,) object, raw item ids; index 0 = "<unk>"
    splits: dict[str, Interactions]
    user_table: dict[str, np.ndarray] = dc_field(default_factory=dict)  # (U + 1, ...)
    item_table: dict[str, np.ndarray] = dc_field(default_factory=dict)  # (I + 1, ...)
    user_domain_table: dict[str, np.ndarray] = dc_field(default_factory=dict)  # (D, U + 1, ...)
    item_domain_table: dict[str, np.ndarray] = dc_field(default_factory=dict)  # (D, I + 1, ...)
    corpus: list[np.ndarray] = dc_field(default_factory=list)  # per domain: item ids to rank
    candidates: dict[str, Candidates] = dc_field(default_factory=dict)  # split -> run file
    meta: dict = dc_field(default_factory=dict)  # source description (for reports)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ sizes
    @property
    def num_domains(self) -> int:
        return len(self.domains)

    @property
    def num_users(self) -> int:  # real users, index 0 excluded
        return len(self.user_keys) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_keys) - 1

    def domain_index(self, name: str) -> int:
        try:
            return self.domains.index(name)
        except ValueError:
            raise KeyError(f"unknown domain {name!r}; known domains: {self.domains}") from None

    # ------------------------------------------------------------- validation
    def validate(self) -> None:
        D, U1, I1 = self.num_domains, len(self.user_keys), len(self.item_keys)
        if D < 1:
            raise ValueError(f"{self.name}: no domains")
        if len(set(self.domains)) != D:
            raise ValueError(f"{self.name}: duplicate domain names {self.domains}")
        for s in SPLITS:
            self.splits.setdefault(s, Interactions.empty())
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"{self.name}: unknown splits {sorted(unknown)}; expected {SPLITS}")
        for s, it in self.splits.items():
            if len(it) == 0:
                continue
            if it.domain.min() < 0 or it.domain.max() >= D:
                raise ValueError(f"{self.name}: split {s!r} has domain ids outside [0, {D})")
            if it.user.min() < 0 or it.user.max() >= U1 or it.item.min() < 0 or it.item.max() >= I1:
                raise ValueError(f"{self.name}: split {s!r} has user or item ids outside the vocabulary")
        train = self.splits["train"]
        if len(train) == 0:
            raise ValueError(f"{self.name}: the training split is empty")
        if np.any(train.user == OOV) or np.any(train.item == OOV):
            raise ValueError(f"{self.name}: training interactions must have known users and items")
        counts = np.bincount(train.domain, minlength=D)
        empty = [self.domains[d] for d in range(D) if counts[d] == 0]
        if empty:
            raise ValueError(f"{self.name}: domains with no training interactions: {empty}")
        for name, t in self.user_table.items():
            if len(t) != U1:
                raise ValueError(f"{self.name}: user feature {name!r} has {len(t)} rows, expected {U1}")
        for name, t in self.item_table.items():
            if len(t) != I1:
                raise ValueError(f"{self.name}: item feature {name!r} has {len(t)} rows, expected {I1}")
        for name, t in self.user_domain_table.items():
            if t.shape[:2] != (D, U1):
                raise ValueError(f"{self.name}: user-domain feature {name!r} has shape {t.shape}, "
                                 f"expected ({D}, {U1}, ...)")
        for name, t in self.item_domain_table.items():
            if t.shape[:2] != (D, I1):
                raise ValueError(f"{self.name}: item-domain feature {name!r} has shape {t.shape}, "
                                 f"expected ({D}, {I1}, ...)")
        for table in (self.user_table, self.item_table, self.user_domain_table, self.item_domain_table):
            for name, t in table.items():
                if t.dtype.kind == "f" and not np.all(np.isfinite(t)):
                    raise ValueError(f"{self.name}: feature {name!r} contains NaN or infinity")
        if not self.corpus:
            self.corpus = [np.unique(train.item[train.domain == d]) for d in range(D)]
        if len(self.corpus) != D:
            raise ValueError(f"{self.name}: corpus has {len(self.corpus)} domains, expected {D}")
        for f in self.schema.fields:
            if f.name in (HIST_ALL, HIST_DOMAIN):
                continue
            table = {
                ("user", False): self.user_table, ("item", False): self.item_table,
                ("user", True): self.user_domain_table, ("item", True): self.item_domain_table,
            }[(f.side, f.per_domain)]
            if f.name not in table:
                raise ValueError(f"{self.name}: schema field {f.name!r} has no feature table")

    # -------------------------------------------------------------- summaries
    def summary(self) -> dict:
        """Rows, users and items per domain and split, and user/item overlap between domains
        (the paper's Tables 4 and 5)."""
        out: dict = {"name": self.name, "domains": {}, "overlap": {}}
        train = self.splits["train"]
        users = [set(np.unique(train.user[train.domain == d]).tolist()) for d in range(self.num_domains)]
        items = [set(np.unique(train.item[train.domain == d]).tolist()) for d in range(self.num_domains)]
        for d, name in enumerate(self.domains):
            row = {s: int((it.domain == d).sum()) for s, it in self.splits.items()}
            row.update(users=len(users[d]), items=len(items[d]), corpus=len(self.corpus[d]))
            out["domains"][name] = row
        all_users = set().union(*users)
        all_items = set().union(*items)
        multi_u = sum(1 for u in all_users if sum(u in s for s in users) >= 2)
        multi_i = sum(1 for i in all_items if sum(i in s for s in items) >= 2)
        pairs = {}
        for a in range(self.num_domains):
            for b in range(a + 1, self.num_domains):
                pairs[f"{self.domains[a]}&{self.domains[b]}"] = {
                    "users": len(users[a] & users[b]), "items": len(items[a] & items[b])}
        out["overlap"] = {
            "users_total": len(all_users), "items_total": len(all_items),
            "users_in_2plus_domains": multi_u, "items_in_2plus_domains": multi_i, "pairs": pairs,
        }
        out["loading"] = loading_lines(self.meta)
        return out


_ROW_COUNTS = (("read", "read"), ("zero_weight", "weight 0"), ("not_positive", "not positive"),
               ("outside_domains", "outside --domains"), ("duplicates_collapsed", "duplicates merged"),
               ("held_out_unknown_user_dropped", "held-out rows of unknown users dropped"),
               ("held_out_unknown_item", "held-out rows of unknown items"), ("kept", "kept"))


def loading_lines(meta: dict) -> list[str]:
    """What a source did to the rows it read (``meta`` written by the loaders), one line each:
    row counts, the order, the domain rule, the split rule and its result, notes."""
    lines = []
    rows = meta.get("rows") or {}
    if rows:
        lines.append("rows: " + ", ".join(f"{label} {rows[k]}" for k, label in _ROW_COUNTS if k in rows))
    if meta.get("domain_rule"):
        lines.append(f"domains: {meta['domain_rule']}")
    if meta.get("order"):
        lines.append(f"order: {meta['order']}")
    split = meta.get("split")
    if isinstance(split, dict):
        lines.append(f"split: {split.get('description', split.get('rule'))}; "
                     + ", ".join(f"{s} {split[s]}" for s in SPLITS if s in split))
    if meta.get("protocol"):
        lines.append(f"protocol: {meta['protocol']}")
    if meta.get("candidates"):
        lines.append("candidate lists: " + ", ".join(f"{s} {n}" for s, n in meta["candidates"].items()))
    for group, how in (meta.get("features") or {}).items():
        lines.append(f"{group} features: " + "; ".join(f"{c} {h}" for c, h in how.items()))
    lines += [f"note: {n}" for n in meta.get("notes", [])]
    return lines
