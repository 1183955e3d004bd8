"""A multi-domain data set on disk as Parquet: written once, then loaded in full or streamed.

Layout of a directory written by :func:`adirec.data.convert.convert` (ids already encoded, exactly as in
:class:`~adirec.data.dataset.MultiDomainData`):

    manifest.json                  format, version, row-group size, every file with rows and bytes
    schema.json                    name, domains, schema, history length, table shapes, meta
    vocab/user_keys.parquet        raw key of encoded user 1..U (row r holds user r + 1)
    vocab/item_keys.parquet        raw key of encoded item 1..I
    interactions/SPLIT.parquet     user, item, domain, weight, timestamp; row groups of at most
                                   ``row_group_rows`` rows (the unit a streaming reader reads)
    features/user.parquet          one column per user feature table, row = encoded user id
    features/item.parquet          one column per item feature table
    features/user_domain.parquet   one column per user-domain table, row = domain * (U + 1) + user
    features/item_domain.parquet   one column per item-domain table, row = domain * (I + 1) + item
    corpus.parquet                 domain, item: the items ranked in each domain
    candidates/SPLIT.parquet       user, domain, items (fixed-size list, -1 = padding)
    stats/item_counts.parquet      training rows per item (the negative sampler's counts)
    stats/user_counts.parquet      training rows per user
    history/positives_all.npy      every training positive as (user, time, item), sorted: the
                                   split order (NumPy ``.npy``, read memory-mapped)
    history/positives_all_offsets.npy   where each user's entries start (U + 2 offsets)
    history/positives_domain.npy   the same keyed by user * D + domain, and its offsets file
    history/recent_all.parquet     per user: its last W training positives, oldest first,
                                   left-padded with 0 (W = history length + 1)
    history/recent_domain.parquet  the same per (user, domain), row = user * D + domain

Multi-dimensional arrays are stored as fixed-size lists; ``schema.json`` records each table's
shape and dtype so that loading gives back bit-identical arrays. The directory is written under
a temporary name beside its destination and renamed into place when complete.

The ``history/`` files are what a streaming trainer needs instead of the whole training split.
A training row's history holds only the positives before it in the split order (time, then item
id), so it needs the user's whole timeline, not only its latest positives:
:class:`LayoutFeatureStore` looks rows up in the sorted ``positives_*.npy`` entries, memory-mapped,
so that only the pages a batch touches are read and the process's own memory does not grow with
the number of interactions; the results are those of the in-memory
:class:`adirec.data.batches.FeatureStore`. Layouts written before these files existed keep only
the ``recent_*`` windows (each user's latest positives, which can come after a training row); they
are still read, and a run streamed from one warns.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from adirec.data.batches import FeatureStore, PositiveHistories
from adirec.data.dataset import (
    HIST_ALL, HIST_DOMAIN, SPLITS, Candidates, Interactions, MultiDomainData,
)
from adirec.data.schema import Schema

FORMAT = "adirec-parquet"
VERSION = 1
#: rows per row group of the interaction files: the unit a streaming reader reads and shards
DEFAULT_ROW_GROUP_ROWS = 16_384
INTERACTION_COLUMNS = ("user", "item", "domain", "weight", "timestamp")
_INTERACTION_SCHEMA = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("domain", pa.int32()),
                                 ("weight", pa.float32()), ("timestamp", pa.int64())])
_TABLE_GROUPS = ("user", "item", "user_domain", "item_domain")


# ------------------------------------------------------------------ arrays <-> columns
def _column(a: np.ndarray) -> pa.Array:
    """(n, *rest) array -> a column of n values (a fixed-size list where rest is not empty)."""
    if a.ndim == 1:
        return pa.array(a)
    flat = np.ascontiguousarray(a).reshape(len(a), -1)
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])


def _array(col: pa.ChunkedArray | pa.Array, shape, dtype) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        col = col.flatten()
    return col.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(shape)


def _interactions_table(it: Interactions) -> pa.Table:
    return pa.table([pa.array(it.user), pa.array(it.item), pa.array(it.domain.astype(np.int32)),
                     pa.array(it.weight), pa.array(it.timestamp)], schema=_INTERACTION_SCHEMA)


def interactions_from_table(t: pa.Table) -> Interactions:
    """The Interactions held by a table with the interaction columns."""
    cols = [t.column(c).to_numpy() for c in INTERACTION_COLUMNS]
    return Interactions(*cols)


def _keys_array(keys: np.ndarray) -> tuple[pa.Array, str]:
    """Raw keys 1.. of a vocabulary (index 0, the unknown key, is implied)."""
    real = keys[1:].tolist()
    if all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in real):
        return pa.array(real, type=pa.int64()), "int64"
    return pa.array([str(k) for k in real], type=pa.string()), "string"


# ------------------------------------------------------------------ history windows
def recent_windows(keys: np.ndarray, items: np.ndarray, timestamps: np.ndarray, out: np.ndarray) -> None:
    """Write the last ``W = out.shape[1]`` items of every key present into ``out[key]``, oldest
    first and left-padded with 0, in the order FeatureStore uses (time, then item id). Rows of
    keys absent from ``keys`` are left untouched, so disjoint sets of keys may be filled one
    after the other (one block of users at a time)."""
    if len(keys) == 0:
        return
    width = out.shape[1]
    order = np.lexsort((items, timestamps, keys))
    k, it = keys[order], items[order]
    _, start, counts = np.unique(k, return_index=True, return_counts=True)
    from_end = np.repeat(start + counts, counts) - 1 - np.arange(len(k))  # 0 = the newest
    keep = from_end < width
    out[k[keep], width - 1 - from_end[keep]] = it[keep]


class _Windows:
    """Fixed-width windows of recent positives; ``recent`` answers like ``_Histories.recent``."""

    def __init__(self, windows: np.ndarray):
        self.windows = windows  # (K, W) int, oldest first, left-padded with 0

    def recent(self, keys: np.ndarray, length: int, exclude: np.ndarray | None, before=None) -> np.ndarray:
        if length + 1 > self.windows.shape[1]:
            raise ValueError(f"history length {length} needs windows of {length + 1}, the layout "
                             f"holds {self.windows.shape[1]}")
        vals = self.windows[keys][:, -(length + 1):]  # (B, L+1), a spare slot for the excluded target
        if exclude is not None:
            vals[vals == exclude[:, None]] = 0
        order = np.argsort(vals != 0, axis=1, kind="stable")  # padding to the left, time order kept
        return np.take_along_axis(vals, order, axis=1)[:, -length:]


class LayoutFeatureStore(FeatureStore):
    """A :class:`FeatureStore` whose behaviour histories come from the layout's ``history/`` files
    instead of the training split: the same features, in memory that does not grow with the
    number of interactions. ``hist_all`` / ``hist_domain``: the stored positives
    (:class:`PositiveHistories`, time-consistent where the data has time) or, for an older
    layout, the latest-positive windows (never time-consistent)."""

    def __init__(self, schema: Schema, num_domains: int, tables: dict[str, dict[str, np.ndarray]],
                 hist_all: PositiveHistories | _Windows, hist_domain: PositiveHistories | _Windows):
        # FeatureStore.__init__ would derive the histories from a full training split; set the
        # same attributes from the layout instead
        self.schema = schema
        self.num_domains = num_domains
        self._user_table, self._item_table = tables["user"], tables["item"]
        self._user_domain_table, self._item_domain_table = tables["user_domain"], tables["item_domain"]
        self._hist_all, self._hist_domain = hist_all, hist_domain
        # the data has time when its histories are ordered (build_dataset's Field.ordered); the
        # windows hold each user's latest positives only, with no "before" to cut at
        ordered = any(f.name == HIST_ALL and f.ordered for f in schema.fields)
        self.time_ordered = ordered and isinstance(hist_all, PositiveHistories)
        self._user_fields = schema.side("user")
        self._item_fields = schema.side("item")


# ------------------------------------------------------------------ writing
class _Writer:
    """Files of one layout under construction, with their manifest entries."""

    def __init__(self, root: Path, row_group_rows: int):
        self.root, self.row_group_rows = root, row_group_rows
        self.files: dict[str, dict] = {}

    def table(self, rel: str, table: pa.Table, row_group_rows: int | None = None) -> None:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=row_group_rows or max(len(table), 1))
        self.files[rel] = {"rows": table.num_rows, "bytes": path.stat().st_size}

    def interactions(self, split: str) -> _SplitWriter:
        return _SplitWriter(self, f"interactions/{split}.parquet")

    def array(self, rel: str, dtype, length: int) -> np.ndarray:
        """A ``.npy`` file of ``length`` entries to fill (memory-mapped); :meth:`done` records it."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(length,))

    def done(self, rel: str, array: np.ndarray) -> None:
        if isinstance(array, np.memmap):
            array.flush()
        self.files[rel] = {"rows": len(array), "bytes": (self.root / rel).stat().st_size}

    def histories(self, name: str, entries: np.ndarray, counts: np.ndarray) -> None:
        """``history/positives_NAME.npy`` (the sorted ``entries``, already written into the file
        :meth:`array` gave when it is a memmap) and its offsets from the entries per key."""
        rel = f"history/positives_{name}.npy"
        if not isinstance(entries, np.memmap):
            stored = self.array(rel, entries.dtype, len(entries))
            stored[:] = entries
            entries = stored
        self.done(rel, entries)
        offsets = self.array(f"history/positives_{name}_offsets.npy", np.int64, len(counts) + 1)
        offsets[0] = 0
        np.cumsum(counts, out=offsets[1:])
        if offsets[-1] != len(entries):
            raise AssertionError(f"history/positives_{name}: {len(entries)} entries, the counts say {offsets[-1]}")
        self.done(f"history/positives_{name}_offsets.npy", offsets)


class _SplitWriter:
    """Appends interaction rows to one split's file in row groups of ``row_group_rows``."""

    def __init__(self, w: _Writer, rel: str):
        self.w, self.rel = w, rel
        path = w.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(path, _INTERACTION_SCHEMA)
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0

    def write(self, it: Interactions) -> None:
        if len(it) == 0:
            return
        self.pending.append(_interactions_table(it))
        self.pending_rows += len(it)
        size = self.w.row_group_rows
        if self.pending_rows >= size:  # full row groups now, the remainder waits for more rows
            t = pa.concat_tables(self.pending)
            full = (len(t) // size) * size
            self.writer.write_table(t.slice(0, full), row_group_size=size)
            self.pending, self.pending_rows = [t.slice(full)], len(t) - full
        self.rows += len(it)

    def close(self) -> None:
        if self.pending_rows:
            self.writer.write_table(pa.concat_tables(self.pending), row_group_size=self.w.row_group_rows)
        self.writer.close()
        self.w.files[self.rel] = {"rows": self.rows, "bytes": (self.w.root / self.rel).stat().st_size}


def _write_tables(w: _Writer, data_tables: dict[str, dict[str, np.ndarray]], info: dict) -> None:
    for group in _TABLE_GROUPS:
        tables = data_tables[group]
        info[group] = {n: {"shape": list(t.shape), "dtype": t.dtype.str} for n, t in tables.items()}
        if not tables:
            continue
        cols = {n: _column(t.reshape(-1, *t.shape[2:]) if group.endswith("_domain") else t)
                for n, t in tables.items()}
        w.table(f"features/{group}.parquet", pa.table(cols))


def _write_common(w: _Writer, *, name: str, domains: list[str], schema: Schema, user_keys: np.ndarray,
                  item_keys: np.ndarray, tables: dict, corpus: list[np.ndarray],
                  candidates: dict[str, Candidates], item_counts: np.ndarray, user_counts: np.ndarray,
                  recent_all: np.ndarray,
                  recent_domain: np.ndarray, history_len: int, meta: dict, splits: dict[str, int]) -> None:
    key_types = {}
    for side, keys in (("user", user_keys), ("item", item_keys)):
        arr, key_types[side] = _keys_array(keys)
        w.table(f"vocab/{side}_keys.parquet", pa.table({"key": arr}))
    table_info: dict = {}
    _write_tables(w, tables, table_info)
    dom = np.concatenate([np.full(len(c), d, np.int32) for d, c in enumerate(corpus)])
    w.table("corpus.parquet", pa.table({"domain": dom, "item": np.concatenate(corpus).astype(np.int64)}))
    cand_info = {}
    for split, c in candidates.items():
        cand_info[split] = {"width": int(c.items.shape[1])}
        w.table(f"candidates/{split}.parquet", pa.table({
            "user": c.user.astype(np.int64), "domain": c.domain.astype(np.int64), "items": _column(c.items)}))
    w.table("stats/item_counts.parquet", pa.table({"count": item_counts.astype(np.int64)}))
    w.table("stats/user_counts.parquet", pa.table({"count": user_counts.astype(np.int64)}))
    w.table("history/recent_all.parquet", pa.table({"items": _column(recent_all)}))
    w.table("history/recent_domain.parquet", pa.table({"items": _column(recent_domain)}))
    info = {
        "name": name, "domains": list(domains), "schema": schema.to_dict(), "history_len": history_len,
        "window": int(recent_all.shape[1]), "num_users": len(user_keys) - 1, "num_items": len(item_keys) - 1,
        "key_types": key_types, "tables": table_info, "candidates": cand_info, "splits": splits,
        "meta": meta,
    }
    try:
        text = json.dumps(info, indent=2)
    except TypeError as e:
        raise ValueError(f"{name}: data set meta must be JSON-serialisable to be written: {e}") from None
    (w.root / "schema.json").write_text(text + "\n")
    w.files["schema.json"] = {"rows": None, "bytes": (w.root / "schema.json").stat().st_size}


def _history_len(schema: Schema) -> int:
    dims = {f.dim for f in schema.fields if f.name in (HIST_ALL, HIST_DOMAIN)}
    if len(dims) != 1:
        raise ValueError(f"schema must hold {HIST_ALL} and {HIST_DOMAIN} with one length, got {dims}")
    return dims.pop()


def _write_data(w: _Writer, data: MultiDomainData) -> None:
    """Write an in-memory data set."""
    D, U1, I1 = data.num_domains, data.num_users + 1, data.num_items + 1
    L = _history_len(data.schema)
    splits = {}
    for s in SPLITS:
        it = data.splits[s]
        if len(it):
            sw = w.interactions(s)
            sw.write(it)
            sw.close()
            splits[s] = len(it)
    tr = data.splits["train"]
    pos = tr.weight > 0
    u, i, d, t = tr.user[pos], tr.item[pos], tr.domain[pos], tr.timestamp[pos]
    for name, keys, n in (("all", u, U1), ("domain", u * D + d, U1 * D)):
        w.histories(name, PositiveHistories(keys, i, t, n).sorted, np.bincount(keys, minlength=n))
    recent_all = np.zeros((U1, L + 1), np.int32)
    recent_windows(u, i, t, recent_all)
    recent_domain = np.zeros((U1 * D, L + 1), np.int32)
    recent_windows(u * D + d, i, t, recent_domain)
    tables = {"user": data.user_table, "item": data.item_table,
              "user_domain": data.user_domain_table, "item_domain": data.item_domain_table}
    _write_common(w, name=data.name, domains=data.domains, schema=data.schema, user_keys=data.user_keys,
                  item_keys=data.item_keys, tables=tables, corpus=data.corpus, candidates=data.candidates,
                  item_counts=np.bincount(tr.item, minlength=I1), user_counts=np.bincount(tr.user, minlength=U1),
                  recent_all=recent_all,
                  recent_domain=recent_domain, history_len=L, meta=data.meta, splits=splits)


# ------------------------------------------------------------------ reading
@dataclass
class TrainingView:
    """What a streaming trainer needs from a layout, in memory that does not grow with the
    number of training interactions.

    Attributes:
        data: the layout's feature tables and vocabularies with a *validation sample*: the
            ``valid`` rows of a random sample of users and every training row of those users
            (all that validation needs: their targets and the items to mask); no test split.
        store: features with histories from the layout's windows (identical to the full data's).
        item_counts: training rows per item, for the negative sampler.
        batches: the training split, streamed (see :class:`adirec.data.streaming.ParquetStream`).
    """

    data: MultiDomainData
    store: LayoutFeatureStore
    item_counts: np.ndarray
    batches: object


class ParquetLayout:
    """A layout directory written by :func:`adirec.data.convert.convert`; reads only what is asked for."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{self.path} is not a Parquet layout (no manifest.json); "
                                    f"write one with `adirec data convert SRC --to {self.path}`")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != VERSION:
            raise ValueError(f"{self.path}: unsupported layout format {self.manifest.get('format')!r} "
                             f"version {self.manifest.get('version')!r}; expected {FORMAT!r} {VERSION}")
        for rel, entry in self.manifest["files"].items():
            if not (self.path / rel).is_file():
                raise FileNotFoundError(f"{self.path}: layout file {rel} is missing")
            if rel.endswith(".parquet") and pq.ParquetFile(self.path / rel).metadata.num_rows != entry["rows"]:
                raise ValueError(f"{self.path}: layout file {rel} holds "
                                 f"{pq.ParquetFile(self.path / rel).metadata.num_rows} rows, the manifest says "
                                 f"{entry['rows']}")
        self.info = json.loads((self.path / "schema.json").read_text())
        self.name: str = self.info["name"]
        self.domains: list[str] = self.info["domains"]
        self.schema = Schema.from_dict(self.info["schema"])
        self.history_len: int = self.info["history_len"]
        self.num_users: int = self.info["num_users"]
        self.num_items: int = self.info["num_items"]

    # -------------------------------------------------------------- pieces
    def split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return self.path / "interactions" / f"{split}.parquet"

    def split_rows(self, split: str) -> int:
        return int(self.info["splits"].get(split, 0))

    def split(self, split: str) -> Interactions:
        if not self.split_rows(split):
            return Interactions.empty()
        return interactions_from_table(pq.read_table(self.split_path(split)))

    def _keys(self, side: str) -> np.ndarray:
        keys = pq.read_table(self.path / f"vocab/{side}_keys.parquet").column("key").to_pylist()
        return np.concatenate([np.array(["<unk>"], dtype=object), np.array(keys, dtype=object)])

    def tables(self) -> dict[str, dict[str, np.ndarray]]:
        out: dict[str, dict[str, np.ndarray]] = {}
        for group in _TABLE_GROUPS:
            info = self.info["tables"][group]
            out[group] = {}
            if not info:
                continue
            t = pq.read_table(self.path / f"features/{group}.parquet")
            for name, spec in info.items():
                out[group][name] = _array(t.column(name), spec["shape"], np.dtype(spec["dtype"]))
        return out

    def corpus(self) -> list[np.ndarray]:
        t = pq.read_table(self.path / "corpus.parquet")
        dom, item = t.column("domain").to_numpy(), t.column("item").to_numpy()
        return [item[dom == d] for d in range(len(self.domains))]

    def candidates(self) -> dict[str, Candidates]:
        out = {}
        for split, spec in self.info["candidates"].items():
            t = pq.read_table(self.path / f"candidates/{split}.parquet")
            n = t.num_rows
            out[split] = Candidates(t.column("user").to_numpy(), t.column("domain").to_numpy(),
                                    _array(t.column("items"), (n, spec["width"]), np.int64))
        return out

    def item_counts(self) -> np.ndarray:
        return pq.read_table(self.path / "stats/item_counts.parquet").column("count").to_numpy()

    def user_counts(self) -> np.ndarray:
        return pq.read_table(self.path / "stats/user_counts.parquet").column("count").to_numpy()

    def _schema_for(self, history_len: int | None) -> Schema:
        if history_len is None or history_len == self.history_len:
            return self.schema
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        fields = [dataclasses.replace(f, dim=history_len) if f.name in (HIST_ALL, HIST_DOMAIN) else f
                  for f in self.schema.fields]
        return Schema(fields, dict(self.schema.vocab_sizes))

    def feature_store(self, history_len: int | None = None, tables: dict | None = None) -> LayoutFeatureStore:
        """Features with histories from the stored windows (history_len <= the stored one)."""
        if history_len is not None and history_len > self.history_len:
            raise ValueError(f"{self.path}: the layout keeps histories of {self.history_len} items; "
                             f"convert again with --history-len {history_len} to use longer ones")
        hists: list[PositiveHistories | _Windows]
        if "history/positives_all.npy" in self.manifest["files"]:
            load = lambda rel: np.load(self.path / rel, mmap_mode="r")  # noqa: E731
            hists = [PositiveHistories.stored(load(f"history/positives_{n}.npy"),
                                              load(f"history/positives_{n}_offsets.npy")) for n in ("all", "domain")]
        else:  # a layout written before the stored positives
            W = self.info["window"]
            hists = [_Windows(_array(pq.read_table(self.path / f"history/recent_{n}.parquet").column("items"),
                                     (-1, W), np.int32)) for n in ("all", "domain")]
        return LayoutFeatureStore(self._schema_for(history_len), len(self.domains), tables or self.tables(), *hists)

    # -------------------------------------------------------------- whole data
    def load(self, history_len: int | None = None) -> MultiDomainData:
        """The whole data set in memory, identical to the one that was written (the histories
        are derived from the training split, so any ``history_len`` works)."""
        t = self.tables()
        return MultiDomainData(
            name=self.name, domains=list(self.domains), schema=self._schema_for(history_len),
            user_keys=self._keys("user"), item_keys=self._keys("item"),
            splits={s: self.split(s) for s in SPLITS}, user_table=t["user"], item_table=t["item"],
            user_domain_table=t["user_domain"], item_domain_table=t["item_domain"],
            corpus=self.corpus(), candidates=self.candidates(), meta=dict(self.info["meta"]),
        )

    def training_view(self, *, valid_users: int = 10_000, valid_rows: int = 1_000_000, seed: int = 0,
                      history_len: int | None = None, shuffle_buffer: int | None = None,
                      num_workers: int = 0) -> TrainingView:
        """See :class:`TrainingView`. Validation runs on a fixed random sample of at most
        ``valid_users`` users holding at most ``valid_rows`` training rows together (at least
        one user), so that its memory, too, stays flat as the data grow."""
        from adirec.data.streaming import DEFAULT_SHUFFLE_BUFFER, ParquetStream
        if valid_users < 1 or valid_rows < 1:
            raise ValueError(f"valid_users and valid_rows must be >= 1, got {valid_users}, {valid_rows}")
        if not self.split_rows("valid"):
            raise ValueError(f"{self.path}: streaming training validates on the 'valid' split, which is "
                             f"empty; load the data in memory instead (hold-out from train)")
        valid = self.split("valid")
        users = np.random.default_rng(seed).permutation(np.unique(valid.user[(valid.weight > 0) & (valid.user > 0)]))
        rows = np.cumsum(self.user_counts()[users])
        users = np.sort(users[:max(1, min(valid_users, int(np.searchsorted(rows, valid_rows, side="right"))))])
        valid = valid.take(np.flatnonzero(np.isin(valid.user, users)))
        ds = pds.dataset(self.split_path("train"), format="parquet")
        train = interactions_from_table(ds.to_table(filter=pc.field("user").isin(pa.array(users))))
        # MultiDomainData wants every domain in train: borrow one row of a domain the sample lacks
        present = np.bincount(train.domain, minlength=len(self.domains))
        extra = [interactions_from_table(ds.head(1, filter=pc.field("domain") == d))
                 for d in np.flatnonzero(present == 0)]
        train = Interactions.concat([train, *extra])
        tables = self.tables()
        data = MultiDomainData(
            name=self.name, domains=list(self.domains), schema=self._schema_for(history_len),
            user_keys=self._keys("user"), item_keys=self._keys("item"),
            splits={"train": train, "valid": valid}, user_table=tables["user"], item_table=tables["item"],
            user_domain_table=tables["user_domain"], item_domain_table=tables["item_domain"],
            corpus=self.corpus(), candidates=self.candidates(),
            meta=dict(self.info["meta"], streamed_from=str(self.path)),
        )
        stream = ParquetStream(self.split_path("train"),
                               shuffle_buffer=shuffle_buffer or DEFAULT_SHUFFLE_BUFFER, num_workers=num_workers)
        return TrainingView(data, self.feature_store(history_len, tables), self.item_counts(), stream)


def load_parquet(path: str | Path, *, history_len: int | None = None) -> MultiDomainData:
    """The data set of a layout directory, in memory (the ``parquet:DIR`` source)."""
    return ParquetLayout(path).load(history_len)
