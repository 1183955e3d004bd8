"""Streaming training batches from Parquet: one row group at a time, a bounded shuffle buffer.

The interaction files of a layout (:mod:`adirec.data.parquet`) are cut into *units*, one per
row group (or, when a file has fewer row groups than readers, equal slices of a row group). Each
epoch the units are put in one seeded order that every reader computes alike, and reader ``s``
of ``S`` takes units ``s, s + S, s + 2S, ...``; a reader is one (data-parallel rank, loader
worker) pair, ``s = rank * num_workers + worker``. Every row of the file therefore goes to
exactly one reader: no duplicates, no gaps. Readers may end up with a few thousand rows more or
less than each other; the trainer lets ranks that run out first wait (``torch.distributed``'s
``Join``) instead of dropping rows.

Within a reader, rows pass through a shuffle buffer of ``shuffle_buffer`` rows: once it is
full, each incoming row replaces a buffered row drawn uniformly at random, which is emitted.
Memory is bounded by the buffer plus one row group, whatever the size of the file. The output is the same
:class:`~adirec.data.batches.Batch` the in-memory :func:`~adirec.data.batches.iterate_batches`
yields; without shuffling and with a single reader the batches are identical to it.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as pds
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from adirec.data.batches import Batch

DEFAULT_SHUFFLE_BUFFER = 262_144
_COLUMNS = ("user", "item", "domain", "weight", "timestamp")
_DTYPES = (np.int64, np.int64, np.int64, np.float32, np.int64)


@dataclass(frozen=True)
class Unit:
    """Slice ``part`` of ``parts`` equal slices of one row group."""

    file: str
    row_group: int
    rows: int  # rows of the whole row group
    part: int = 0
    parts: int = 1

    @property
    def bounds(self) -> tuple[int, int]:
        return self.rows * self.part // self.parts, self.rows * (self.part + 1) // self.parts


def _fragments(path: str | Path) -> list:
    dataset = pds.dataset(str(path), format="parquet")
    return sorted(dataset.get_fragments(), key=lambda f: f.path)


def row_group_units(path: str | Path, num_readers: int = 1) -> list[Unit]:
    """The units of a Parquet file or directory, in file order. Row groups are sliced only when
    there are fewer of them than readers, so that every reader gets a share."""
    groups = [(f.path, rg.id, rg.num_rows) for f in _fragments(path) for rg in f.row_groups]
    parts = max(1, math.ceil(num_readers / max(len(groups), 1)))
    return [Unit(p, g, n, k, parts) for p, g, n in groups for k in range(parts)]


def shard_units(units: list[Unit], reader: int, num_readers: int, *, shuffle: bool, seed: int) -> list[Unit]:
    """Units of reader ``reader``: a seeded order shared by all readers, then every
    ``num_readers``-th unit."""
    if not 0 <= reader < num_readers:
        raise ValueError(f"reader must be in [0, {num_readers}), got {reader}")
    order = np.random.default_rng(seed).permutation(len(units)) if shuffle else np.arange(len(units))
    return [units[i] for i in order[reader::num_readers]]


class _Reader:
    """Reads units (one row group each) as numpy columns, keeping one open fragment per file."""

    def __init__(self, path: str | Path):
        self._fragments = {f.path: f for f in _fragments(path)}

    def read(self, unit: Unit) -> tuple[np.ndarray, ...]:
        frag = self._fragments[unit.file].subset(row_group_ids=[unit.row_group])
        table = frag.to_table(columns=list(_COLUMNS))
        lo, hi = unit.bounds
        if (lo, hi) != (0, unit.rows):
            table = table.slice(lo, hi - lo)
        return tuple(table.column(c).to_numpy().astype(t, copy=True)  # writable
                     for c, t in zip(_COLUMNS, _DTYPES, strict=True))


def _take(cols: tuple[np.ndarray, ...], index: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(c[index] for c in cols)


def _shuffled(chunks: Iterator[tuple[np.ndarray, ...]], capacity: int,
              rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
    """Bounded shuffle buffer of ``capacity`` rows. It first fills up; then every incoming row
    takes the slot of a buffered row picked uniformly at random, which is emitted (work per row
    independent of ``capacity``); at the end the rest is emitted in random order."""
    if capacity == 0:  # no buffer: each chunk is only shuffled within itself
        for cols in chunks:
            yield _take(cols, rng.permutation(len(cols[0])))
        return
    buf: list[np.ndarray] | None = None
    held = 0
    for cols in chunks:
        if buf is None:
            buf = [np.empty(capacity, dtype=c.dtype) for c in cols]
        n = len(cols[0])
        fill = min(capacity - held, n)  # filling up: nothing leaves yet
        for b, c in zip(buf, cols, strict=True):
            b[held:held + fill] = c[:fill]
        held += fill
        if fill == n:
            continue
        rest = tuple(c[fill:] for c in cols)
        m = n - fill
        for lo in range(0, m, capacity):  # a chunk larger than the buffer passes through in parts
            part = tuple(c[lo:lo + capacity] for c in rest)
            slots = rng.choice(capacity, len(part[0]), replace=False)  # random order too
            yield tuple(b[slots] for b in buf)
            for b, c in zip(buf, part, strict=True):
                b[slots] = c
    if buf is not None and held:
        order = rng.permutation(held)
        yield tuple(b[:held][order] for b in buf)


def _batched(chunks: Iterator[tuple[np.ndarray, ...]], batch_size: int, drop_last: bool) -> Iterator[Batch]:
    pending: list[tuple[np.ndarray, ...]] = []
    held = 0
    for cols in chunks:
        pending.append(cols)
        held += len(cols[0])
        if held < batch_size:
            continue
        cols = tuple(np.concatenate(p) for p in zip(*pending, strict=True)) if len(pending) > 1 else pending[0]
        stop = held - held % batch_size
        for start in range(0, stop, batch_size):
            yield _batch(cols, slice(start, start + batch_size))
        pending, held = [tuple(c[stop:] for c in cols)], held - stop
    if held and not drop_last:
        cols = tuple(np.concatenate(p) for p in zip(*pending, strict=True))
        yield _batch(cols, slice(0, held))


def _batch(cols: tuple[np.ndarray, ...], s: slice) -> Batch:
    return Batch(*(torch.from_numpy(np.ascontiguousarray(c[s])) for c in cols))


def iterate_parquet(path: str | Path, batch_size: int, *, shuffle: bool, seed: int = 0,
                    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, reader: int = 0, num_readers: int = 1,
                    drop_last: bool = False) -> Iterator[Batch]:
    """Batches of reader ``reader`` of ``num_readers`` over the interactions at ``path``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    units = shard_units(row_group_units(path, num_readers), reader, num_readers, shuffle=shuffle, seed=seed)
    r = _Reader(path)
    chunks: Iterator[tuple[np.ndarray, ...]] = (r.read(u) for u in units)
    if shuffle:
        chunks = _shuffled(chunks, shuffle_buffer, np.random.default_rng([seed, reader]))
    return _batched(chunks, batch_size, drop_last)


class ParquetShard(IterableDataset):
    """One epoch of one rank's batches; inside a DataLoader each worker reads its own share."""

    def __init__(self, path: str | Path, batch_size: int, *, shuffle: bool, seed: int = 0,
                 shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.path, self.batch_size, self.shuffle, self.seed = str(path), batch_size, shuffle, seed
        self.shuffle_buffer, self.rank, self.world_size, self.drop_last = shuffle_buffer, rank, world_size, drop_last

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return iterate_parquet(self.path, self.batch_size, shuffle=self.shuffle, seed=self.seed,
                               shuffle_buffer=self.shuffle_buffer, reader=self.rank * workers + worker,
                               num_readers=self.world_size * workers, drop_last=self.drop_last)


class ParquetStream:
    """The training split of a layout as the trainer's batch source:
    ``stream(epoch=, batch_size=, rank=, world_size=, seed=)`` gives one epoch of this rank's
    batches (through ``num_workers`` DataLoader worker processes when > 0)."""

    def __init__(self, path: str | Path, *, shuffle: bool = True, shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
                 num_workers: int = 0):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.path, self.shuffle = Path(path), shuffle
        self.shuffle_buffer, self.num_workers = shuffle_buffer, num_workers
        if not self.path.exists():
            raise FileNotFoundError(f"no Parquet data at {self.path}")
        self.num_rows = sum(u.rows for u in row_group_units(self.path))

    def __len__(self) -> int:
        return self.num_rows

    def __call__(self, *, epoch: int = 0, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0) -> Iterator[Batch]:
        shard = ParquetShard(self.path, batch_size, shuffle=self.shuffle, seed=seed,
                             shuffle_buffer=self.shuffle_buffer, rank=rank, world_size=world_size)
        if self.num_workers == 0:
            return iter(shard)
        return iter(DataLoader(shard, batch_size=None, num_workers=self.num_workers))
