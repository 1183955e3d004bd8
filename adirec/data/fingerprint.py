"""A fingerprint of a loaded data set, so that a run can tell whether it is given its own data.

The fingerprint does not depend on the order of the rows in the source files: the interactions of
each split are hashed after sorting, the vocabularies (which are order-independent) by their keys,
and the feature tables (indexed by those ids) as they are. Any change to the rows, the keys, the
domains or the features changes it.
"""
from __future__ import annotations

import hashlib

import numpy as np

from adirec.data.dataset import MultiDomainData


def _update_array(h, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())


def _update_keys(h, keys: np.ndarray) -> None:
    h.update("\x1f".join(str(k) for k in keys).encode())


def fingerprint(data: MultiDomainData) -> dict:
    """``{"rows": {split: n}, "users": U, "items": I, "domains": [...], "sha256": hex}``."""
    h = hashlib.sha256()
    h.update("\x1f".join(data.domains).encode())
    _update_keys(h, data.user_keys)
    _update_keys(h, data.item_keys)
    rows = {}
    for name in sorted(data.splits):
        it = data.splits[name]
        rows[name] = len(it)
        order = np.lexsort((it.weight, it.timestamp, it.domain, it.item, it.user))
        for col in (it.user, it.item, it.domain, it.weight, it.timestamp):
            _update_array(h, col[order])
    for table in (data.user_table, data.item_table, data.user_domain_table, data.item_domain_table):
        for name in sorted(table):
            h.update(name.encode())
            _update_array(h, table[name])
    for name in sorted(data.candidates):
        c = data.candidates[name]
        order = np.lexsort((c.domain, c.user))
        for col in (c.user[order], c.domain[order], np.sort(c.items[order], axis=1)):
            _update_array(h, col)
    return {"rows": rows, "users": data.num_users, "items": data.num_items, "domains": list(data.domains),
            "sha256": h.hexdigest()}


def describe_difference(stored: dict, now: dict) -> str:
    """What differs between two fingerprints, in words."""
    parts = []
    for split in sorted(set(stored.get("rows", {})) | set(now.get("rows", {}))):
        a, b = stored.get("rows", {}).get(split), now.get("rows", {}).get(split)
        if a != b:
            parts.append(f"{split} rows {a} -> {b}")
    for key in ("users", "items", "domains"):
        if stored.get(key) != now.get(key):
            parts.append(f"{key} {stored.get(key)} -> {now.get(key)}")
    if not parts:
        parts.append(f"same sizes, different content (sha256 {stored.get('sha256', '')[:12]} -> {now['sha256'][:12]})")
    return "; ".join(parts)
