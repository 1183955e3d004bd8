"""Batches: index slices of interactions turned into feature tensors, with no per-row Python.

The training loop only ever sees :class:`Batch` (ids) and asks a :class:`FeatureStore` for the
feature dicts of users and items *in a given domain*. A streaming source therefore only has to
yield :class:`Batch` objects; models never know where the rows came from.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from adirec.data.dataset import HIST_ALL, HIST_DOMAIN, Interactions, MultiDomainData
from adirec.data.schema import Schema


@dataclass
class Batch:
    """A batch of interactions (ids only). ``timestamp`` places each row in its user's timeline:
    on data with time, a row's behaviour history holds only the positives before it."""

    user: torch.Tensor  # (B,) long
    item: torch.Tensor  # (B,) long
    domain: torch.Tensor  # (B,) long
    weight: torch.Tensor  # (B,) float
    timestamp: torch.Tensor  # (B,) long, 0 where the source has no time

    def __len__(self) -> int:
        return len(self.user)

    def to(self, device: torch.device | str) -> Batch:
        """The batch on ``device`` (itself when it is already there)."""
        if self.user.device == torch.device(device):
            return self
        return Batch(*(t.to(device, non_blocking=True) for t in
                       (self.user, self.item, self.domain, self.weight, self.timestamp)))

    @classmethod
    def from_interactions(cls, it: Interactions, index: np.ndarray | slice | None = None) -> Batch:
        if index is not None:
            it = it.take(index)
        return cls(torch.from_numpy(it.user), torch.from_numpy(it.item), torch.from_numpy(it.domain),
                   torch.from_numpy(it.weight), torch.from_numpy(it.timestamp))


def iterate_batches(
    it: Interactions,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield batches of ``it``; with ``world_size > 1`` each rank gets a disjoint, equally long
    share of one global permutation (ranks stay in step for collective ops)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(it)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    if world_size > 1:
        per_rank = n // world_size
        order = order[rank * per_rank:(rank + 1) * per_rank]
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield Batch.from_interactions(it, order[start:start + batch_size])


@dataclass
class SequenceBatch:
    """Windows of users' time-ordered training positives, every position a training row.

    Position t of a window holds the item ``window[:, t]``; the row at t is the prediction of the
    user's next positive ``target[:, t]`` (0 = no row), in that positive's ``domain[:, t]``, from
    the window's items up to t. Windows are right-aligned (left-padded with 0).
    """

    user: torch.Tensor  # (B,) long
    window: torch.Tensor  # (B, L) long, the items, oldest first
    window_domain: torch.Tensor  # (B, L) long, each item's domain
    target: torch.Tensor  # (B, L) long, the next positive after position t, 0 = none
    domain: torch.Tensor  # (B, L) long, the target's domain
    weight: torch.Tensor  # (B, L) float, the target's weight

    def __len__(self) -> int:  # training rows
        return int((self.target > 0).sum())

    def to(self, device: torch.device | str) -> SequenceBatch:
        if self.user.device == torch.device(device):
            return self
        return SequenceBatch(*(t.to(device, non_blocking=True) for t in
                               (self.user, self.window, self.window_domain, self.target, self.domain, self.weight)))


class SequenceBatches:
    """The training split as windows of every user's positives in the split order (time, then
    item id): a user with positives s_0..s_{n-1} gives the rows s_1..s_{n-1}, each predicted from
    the (at most ``length``) positives before it. Rows are cut into windows of ``length`` rows
    from the most recent backwards, so every row of the split is trained once per epoch and a
    window's first row sees one item, its last row ``length``. Batches hold whole windows,
    about ``batch_size`` rows each, in a seeded order per epoch; with several processes each rank
    takes a disjoint, equally long share of the windows.

    ``__call__(epoch=, batch_size=, rank=, world_size=, seed=)`` is the trainer's batch source.
    """

    def __init__(self, train: Interactions, num_users: int, length: int):
        if length < 1:
            raise ValueError(f"window length must be >= 1, got {length}")
        pos = train.weight > 0
        u, i, d, t, w = train.user[pos], train.item[pos], train.domain[pos], train.timestamp[pos], train.weight[pos]
        order = np.lexsort((i, t, u))
        self.items, self.domains, self.weights = i[order], d[order], w[order]
        users = u[order]
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        # window k of a user covers targets (end - (k+1) L, end - k L], never the user's first positive
        spans = []
        for s, e in zip(starts, ends, strict=True):
            stop = e
            while stop - 1 > s:
                spans.append((users[s], max(s + 1, stop - length), stop))
                stop -= length
        self.spans = np.array(spans, dtype=np.int64).reshape(-1, 3)  # (W, 3): user, first target, end
        self.length = length
        self.num_rows = int((self.spans[:, 2] - self.spans[:, 1]).sum())

    def __len__(self) -> int:
        return self.num_rows

    def __call__(self, *, epoch: int = 0, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> Iterator[SequenceBatch]:
        order = np.random.default_rng(seed).permutation(len(self.spans))
        if world_size > 1:
            per_rank = len(order) // world_size
            order = order[rank * per_rank:(rank + 1) * per_rank]
        per_batch = max(1, batch_size // self.length)
        for start in range(0, len(order), per_batch):
            yield self._batch(self.spans[order[start:start + per_batch]])

    def _batch(self, spans: np.ndarray) -> SequenceBatch:
        L = self.length
        first, end = spans[:, 1], spans[:, 2]
        # position t (0..L-1) of a window holds the item just before target slot t
        slot = end[:, None] - L + np.arange(L)  # (B, L) index of each target slot
        has_target = slot >= first[:, None]
        src = slot - 1  # the item at position t precedes the target at t
        has_item = (src >= 0) & (src >= first[:, None] - 1)

        def take(a: np.ndarray, idx: np.ndarray, ok: np.ndarray, fill: float = 0) -> np.ndarray:
            return np.where(ok, a[np.clip(idx, 0, len(a) - 1)], fill)

        window = take(self.items, src, has_item)
        window_domain = take(self.domains, src, has_item)
        target = take(self.items, slot, has_target)
        domain = take(self.domains, slot, has_target)
        weight = take(self.weights, slot, has_target, 0.0).astype(np.float32)
        return SequenceBatch(torch.from_numpy(spans[:, 0].copy()), *(torch.from_numpy(np.ascontiguousarray(a)) for a in
                                                              (window, window_domain, target, domain, weight)))


#: one history entry: its key (a user, or user * D + domain), time and item; sorted, the split order
ENTRY_DTYPE = np.dtype([("key", "<i8"), ("time", "<i8"), ("item", "<i8")])


def _order_keys(keys: np.ndarray, times: np.ndarray, items: np.ndarray) -> np.ndarray:
    out = np.empty(len(keys), dtype=ENTRY_DTYPE)
    out["key"], out["time"], out["item"] = keys, times, items
    return out


class _RecentPositives(Protocol):
    """Where the feature store finds behaviour histories: the training split's positives
    (:class:`PositiveHistories`, also as a Parquet layout stores them) or an older layout's windows
    of recent positives."""

    def recent(self, keys: np.ndarray, length: int, exclude: np.ndarray | None,
               before: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray: ...


class PositiveHistories:
    """Training positives grouped by key (CSR), in the split order: time, then item id.

    ``entries`` (P,) holds (key, time, item) sorted ascending, ``indptr`` (num_keys + 1,) where
    each key's entries start; :meth:`stored` takes both as written (a Parquet layout keeps them as
    memory-mapped arrays, so lookups read only the entries they need)."""

    def __init__(self, keys: np.ndarray, items: np.ndarray, times: np.ndarray, num_keys: int):
        order = np.lexsort((items, times, keys))
        self.sorted = _order_keys(keys[order], times[order], items[order])  # (P,) ascending
        self.values = self.sorted["item"]
        self.indptr = np.zeros(num_keys + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys, minlength=num_keys), out=self.indptr[1:])

    @classmethod
    def stored(cls, entries: np.ndarray, indptr: np.ndarray) -> PositiveHistories:
        """The histories of ``entries`` and ``indptr`` as :class:`PositiveHistories` makes them."""
        if entries.dtype != ENTRY_DTYPE or indptr.ndim != 1 or len(entries) != (indptr[-1] if len(indptr) else 0):
            raise ValueError(f"stored histories: entries of dtype {entries.dtype} and {len(entries)} rows do not "
                             f"match {ENTRY_DTYPE} and the offsets ({len(indptr)}, ending at "
                             f"{indptr[-1] if len(indptr) else None})")
        self = cls.__new__(cls)
        self.sorted, self.values, self.indptr = entries, entries["item"], indptr
        return self

    def _first_not_before(self, keys: np.ndarray, times: np.ndarray, items: np.ndarray,
                          hi: np.ndarray) -> np.ndarray:
        """Per query, the position of the first entry of its key's segment at or after (time,
        item): a binary search inside each segment, all queries at once, so that only the
        entries of the queried keys are read (pages of a memory-mapped file included)."""
        lo = np.array(self.indptr[keys], dtype=np.int64)
        hi = np.array(hi, dtype=np.int64)
        while True:
            active = lo < hi
            if not active.any():
                return lo
            mid = np.where(active, (lo + hi) // 2, 0)
            entry = self.sorted[mid]  # (B,) only valid where active, which implies a non-empty segment
            earlier = (entry["time"] < times) | ((entry["time"] == times) & (entry["item"] < items))
            lo = np.where(active & earlier, mid + 1, lo)
            hi = np.where(active & ~earlier, mid, hi)

    def recent(self, keys: np.ndarray, length: int, exclude: np.ndarray | None,
               before: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """(B, length) most recent items per key, 0-padded on the left, without ``exclude``.

        ``before = (time, item)``: only the entries that come strictly before that point of the
        split order (a row's own timeline position), so no history item is at or after the row.
        """
        end = np.asarray(self.indptr[keys + 1])
        if before is not None:
            # the first entry at or after (key, time, item) ends the visible part of the segment
            end = self._first_not_before(keys, np.asarray(before[0]), np.asarray(before[1]), end)
        window = length + 1  # one spare slot so dropping the target still leaves `length` items
        start = np.maximum(self.indptr[keys], end - window)
        pos = start[:, None] + np.arange(window)  # (B, L+1)
        valid = pos < end[:, None]
        if len(self.values) == 0:
            return np.zeros((len(keys), length), dtype=np.int64)
        vals = np.where(valid, self.values[np.minimum(pos, len(self.values) - 1)], 0)
        if exclude is not None:
            vals[vals == exclude[:, None]] = 0
        # push padding to the left (stable: keeps time order), keep the newest `length`
        order = np.argsort(vals != 0, axis=1, kind="stable")
        return np.take_along_axis(vals, order, axis=1)[:, -length:]


class FeatureStore:
    """Looks up the feature dicts that towers consume.

    ``user_features(user, domain, exclude_item, before=...)`` returns every user-side field of the
    schema for the given users as seen in the given domains (user-domain fields resolved to that
    domain). Behaviour histories are the user's training positives in the split order (time, then
    item id):

    * on data with time (``time_ordered``), a row placed in its user's timeline by
      ``before = (timestamp, item)`` sees only the positives strictly before it, the order that
      makes the validation and test rows (which come after every training positive, and are looked
      up without ``before``); ``exclude_item`` is then not needed and is ignored;
    * without time there is no "before": a row sees all the user's positives but its own target
      ``exclude_item``.
    ``item_features(item, domain)`` does the same for the item side.
    Lookups run on the host (NumPy); ``device`` says where the returned tensors go.
    """

    def __init__(self, data: MultiDomainData):
        self.schema: Schema = data.schema
        self.num_domains = data.num_domains
        self._user_table = data.user_table
        self._item_table = data.item_table
        self._user_domain_table = data.user_domain_table
        self._item_domain_table = data.item_domain_table
        train = data.splits["train"]
        pos = train.weight > 0
        u, i, d, t = train.user[pos], train.item[pos], train.domain[pos], train.timestamp[pos]
        self.time_ordered = bool(np.any(t != t[0])) if len(t) else False
        self._hist_all: _RecentPositives = PositiveHistories(u, i, t, data.num_users + 1)
        self._hist_domain: _RecentPositives = PositiveHistories(u * self.num_domains + d, i, t,
                                                         (data.num_users + 1) * self.num_domains)
        self._user_fields = self.schema.side("user")
        self._item_fields = self.schema.side("item")

    def user_features(self, user: torch.Tensor | np.ndarray, domain: torch.Tensor | np.ndarray,
                      exclude_item: torch.Tensor | np.ndarray | None = None,
                      device: torch.device | str | None = None, *,
                      before: tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray] | None = None,
                      ) -> dict[str, torch.Tensor]:
        u = _np(user)
        d = _np(domain)
        ex = None if exclude_item is None else _np(exclude_item)
        cut = None
        if before is not None and self.time_ordered:
            cut, ex = (_np(before[0]), _np(before[1])), None
        out: dict[str, torch.Tensor] = {}
        for f in self._user_fields:
            if f.name == HIST_ALL:
                v = self._hist_all.recent(u, f.dim, ex, cut)
            elif f.name == HIST_DOMAIN:
                v = self._hist_domain.recent(u * self.num_domains + d, f.dim, ex, cut)
            elif f.per_domain:
                v = self._user_domain_table[f.name][d, u]
            else:
                v = self._user_table[f.name][u]
            out[f.name] = _tensor(v, f.kind, device)
        return out

    def position_features(self, user: torch.Tensor | np.ndarray, domain: torch.Tensor | np.ndarray,
                          device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Every user-side field but the histories, per position of a batch of sequences:
        ``user`` (B,), ``domain`` (B, L) the rows' domains -> ``{field: (B, L, ...)}``."""
        u = _np(user)
        d = _np(domain)  # (B, L)
        out: dict[str, torch.Tensor] = {}
        for f in self._user_fields:
            if f.name in (HIST_ALL, HIST_DOMAIN):
                continue
            if f.per_domain:
                v = self._user_domain_table[f.name][d, u[:, None]]  # (B, L, ...)
            else:
                v = self._user_table[f.name][u]  # (B, ...)
                v = np.broadcast_to(v[:, None], (len(u), d.shape[1], *v.shape[1:]))
            out[f.name] = _tensor(v, f.kind, device)
        return out

    def item_features(self, item: torch.Tensor | np.ndarray, domain: torch.Tensor | np.ndarray | int,
                      device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        i = _np(item)
        d = np.broadcast_to(_np(domain), i.shape)
        out: dict[str, torch.Tensor] = {}
        for f in self._item_fields:
            if f.per_domain:
                v = self._item_domain_table[f.name][d, i]
            else:
                v = self._item_table[f.name][i]
            out[f.name] = _tensor(v, f.kind, device)
        return out


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.int64, copy=False)
    return np.asarray(x, dtype=np.int64)


def _tensor(v: np.ndarray, kind: str, device: torch.device | str | None) -> torch.Tensor:
    """A host array as a tensor on ``device`` (None: the CPU)."""
    if kind == "dense":
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        t = t.unsqueeze(-1) if t.dim() == 1 else t
    else:
        t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64))
    return t if device is None else t.to(device, non_blocking=True)
