"""Writing a data set as a Parquet layout (:mod:`adirec.data.parquet` describes the layout):
:func:`convert` takes an in-memory data set, a source spec (``xmrec:DIR``, ``table:PATH``, ...) or
a synthetic world, which is generated straight to Parquet block by block (in memory when
``--domains`` keeps some of its domains, since their split is made again).

This module sits above both :mod:`adirec.data.parquet` (the layout's writers and readers) and
:mod:`adirec.data.sources` (which loads ``parquet:DIR`` through the reader), so neither imports
the other's caller.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from adirec.data.batches import ENTRY_DTYPE, PositiveHistories
from adirec.data.build import Vocabulary, _domain_dense_tables, _feature_table, log_count_features
from adirec.data.dataset import HIST_ALL, HIST_DOMAIN, SPLITS, Interactions, MultiDomainData
from adirec.data.parquet import (
    DEFAULT_ROW_GROUP_ROWS, FORMAT, VERSION, _write_common, _write_data, _Writer, recent_windows,
)
from adirec.data.schema import Field, Schema
from adirec.data.sources import check_options, load_source
from adirec.data.sources.synthetic import SPLIT_CODES, SyntheticConfig, SyntheticWorld, _resolve, load_synthetic
from adirec.utils import atomic_write_json, publish_directory


def _write_synthetic(w: _Writer, preset, seed: int, history_len: int) -> None:
    """Write a synthetic world block by block, never holding all its interactions: pass 1 writes
    the raw rows to a scratch file and marks the keys seen in training, which numbered in
    sorted order are the vocabularies build_dataset would make; pass 2 encodes them into the split files and
    accumulates the derived statistics and history windows. Gives exactly the layout that
    ``convert(load_synthetic(preset, seed=seed))`` gives."""
    name, cfg = _resolve(preset, {})
    if history_len < 1:
        raise ValueError(f"history_len must be >= 1, got {history_len}")
    world = SyntheticWorld(cfg, seed)
    D = cfg.num_domains
    user_seen = np.zeros(cfg.num_users, bool)
    item_seen = np.zeros(cfg.num_items, bool)
    positives = 0  # training rows (every synthetic row is a positive)
    scratch = w.root / "_scratch_raw.parquet"
    raw_schema = pa.schema([("user", pa.int64()), ("item", pa.int64()), ("domain", pa.int64()),
                            ("timestamp", pa.int64()), ("split", pa.int8())])
    with pq.ParquetWriter(scratch, raw_schema) as raw:
        for chunk in world.chunks():
            tr = chunk.split == SPLIT_CODES["train"]
            positives += int(tr.sum())
            user_seen[chunk.user[tr]] = True
            item_seen[chunk.item[tr]] = True
            if len(chunk):  # one row group per block: a user's rows never straddle two
                raw.write_table(pa.table(chunk.columns(), schema=raw_schema), row_group_size=len(chunk))
    n_users, n_items = int(user_seen.sum()), int(item_seen.sum())
    if n_users == 0:
        raise ValueError(f"synthetic-{name}: the training split is empty")
    # raw keys are 0..n-1, so codes in key order are the sorted vocabularies
    ucode = np.where(user_seen, np.cumsum(user_seen), 0)
    icode = np.where(item_seen, np.cumsum(item_seen), 0)
    U1, I1 = n_users + 1, n_items + 1
    L, W = history_len, history_len + 1
    user_domain_counts = np.zeros((D, U1), np.int64)
    item_domain_counts = np.zeros((D, I1), np.int64)
    recent_all = np.zeros((U1, W), np.int32)
    recent_domain = np.zeros((U1 * D, W), np.int32)
    # the sorted positives, appended block after block: a block's users (so its keys, user and
    # user * D + domain) all come after the previous block's
    entries = {n: w.array(f"history/positives_{n}.npy", ENTRY_DTYPE, positives) for n in ("all", "domain")}
    filled = 0
    writers = {s: w.interactions(s) for s in SPLITS}
    pf = pq.ParquetFile(scratch)
    for g in range(pf.num_row_groups):
        t = pf.read_row_group(g)
        split = t.column("split").to_numpy()
        for s, code in SPLIT_CODES.items():
            m = split == code
            if not m.any():
                continue
            it = Interactions(ucode[t.column("user").to_numpy()[m]], icode[t.column("item").to_numpy()[m]],
                              t.column("domain").to_numpy()[m], np.ones(int(m.sum()), np.float32),
                              t.column("timestamp").to_numpy()[m])
            writers[s].write(it)
            if s == "train":
                user_domain_counts += np.bincount(it.domain * U1 + it.user, minlength=D * U1).reshape(D, U1)
                item_domain_counts += np.bincount(it.domain * I1 + it.item, minlength=D * I1).reshape(D, I1)
                recent_windows(it.user, it.item, it.timestamp, recent_all)
                recent_windows(it.user * D + it.domain, it.item, it.timestamp, recent_domain)
                end = filled + len(it)
                entries["all"][filled:end] = PositiveHistories(it.user, it.item, it.timestamp, U1).sorted
                entries["domain"][filled:end] = PositiveHistories(it.user * D + it.domain, it.item, it.timestamp,
                                                                  U1 * D).sorted
                filled = end
    del pf
    scratch.unlink()
    splits = {}
    for s, sw in writers.items():
        sw.close()
        if sw.rows:
            splits[s] = sw.rows
        else:  # an empty split has no file, as with in-memory data
            (w.root / sw.rel).unlink()
            del w.files[sw.rel]
    empty = [cfg.domains[d] for d in range(D) if item_domain_counts[d].sum() == 0]
    if empty:
        raise ValueError(f"synthetic-{name}: domains with no training interactions: {empty}")
    w.histories("all", entries["all"], user_domain_counts.sum(axis=0))
    w.histories("domain", entries["domain"], user_domain_counts.T.reshape(-1))  # key user * D + domain

    def keys_by_code(code: np.ndarray, n: int) -> np.ndarray:
        keys = np.empty(n, np.int64)
        has = np.flatnonzero(code)
        keys[code[has] - 1] = has
        return keys

    user_order, item_order = keys_by_code(ucode, n_users), keys_by_code(icode, n_items)
    # the fields and derived tables of build_dataset, in its order
    vocab_sizes = {"user_id": U1, "item_id": I1}
    fields = [Field("user_id", "user", "categorical"),
              # the generator times every interaction: histories are in time order
              Field(HIST_ALL, "user", "sequence", vocab="item_id", dim=L, ordered=True),
              Field(HIST_DOMAIN, "user", "sequence", vocab="item_id", per_domain=True, dim=L, ordered=True),
              Field("user_domain_activity", "user", "dense", per_domain=True)]
    user_table = {"user_id": np.arange(U1, dtype=np.int64)}
    user_table |= _feature_table(world.user_table(), "user", Vocabulary(user_order), np.arange(1, U1),
                                 fields, vocab_sizes)
    fields += [Field("item_id", "item", "categorical"),
               Field("item_domain_popularity", "item", "dense", per_domain=True)]
    item_table = {"item_id": np.arange(I1, dtype=np.int64)}
    raw_items, item_vocab = world.item_table(), Vocabulary(item_order)
    item_table |= _feature_table(raw_items, "item", item_vocab, np.arange(1, I1), fields, vocab_sizes)
    item_domain_table = {"item_domain_popularity": log_count_features(item_domain_counts)}
    if cfg.item_domain_dense:
        item_domain_table |= _domain_dense_tables(world.item_domain_dense(), raw_items.keys, "item",
                                                  item_vocab, np.arange(1, I1), D, fields)
    tables = {"user": user_table, "item": item_table,
              "user_domain": {"user_domain_activity": log_count_features(user_domain_counts)},
              "item_domain": item_domain_table}
    unk = np.array(["<unk>"], dtype=object)
    meta = {"source": "synthetic", "preset": name, "seed": int(seed), "config": cfg.to_dict()}
    _write_common(w, name=f"synthetic-{name}", domains=cfg.domains, schema=Schema(fields, vocab_sizes),
                  user_keys=np.concatenate([unk, user_order.astype(object)]),
                  item_keys=np.concatenate([unk, item_order.astype(object)]), tables=tables,
                  corpus=[np.flatnonzero(item_domain_counts[d] > 0) for d in range(D)], candidates={},
                  item_counts=item_domain_counts.sum(axis=0), user_counts=user_domain_counts.sum(axis=0),
                  recent_all=recent_all,
                  recent_domain=recent_domain, history_len=L, meta=meta, splits=splits)


def _check_target(out: Path, overwrite: bool) -> None:
    """``out`` may be replaced only with ``overwrite`` and only when it is a Parquet layout (its
    manifest says so) or an empty directory: a run, a bundle or any other directory is refused."""
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    if not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a Parquet layout; --overwrite replaces only a layout written "
                              f"by `adirec data convert`; remove it yourself or choose another --to")
    try:
        fmt = json.loads((out / "manifest.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt == FORMAT:
        return
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
    if not entries:
        return
    shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
    raise FileExistsError(f"{out} is not a Parquet layout (no {FORMAT} manifest.json; it holds {shown}); "
                          f"--overwrite replaces only a layout written by `adirec data convert`; remove it "
                          f"yourself or choose another --to")


def convert(source, out_dir: str | Path, *, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
            overwrite: bool = False, **options) -> Path:
    """Write ``source`` as a Parquet layout in ``out_dir`` and return its path.

    ``source`` is a MultiDomainData, a source spec (``xmrec:DIR``, ``recbole:DIR/PREFIX``,
    ``table:PATH``, ``parquet:DIR``, ``synthetic[:PRESET]``) or a ``SyntheticConfig``; ``options``
    are those of :func:`~adirec.data.sources.load_source` (the DataSpec fields: ``domains``,
    ``user_col``, ``seed``, ``history_len``, ...). Synthetic worlds are generated straight to Parquet
    block by block (never all in memory); other specs are loaded with ``load_source`` first.
    ``overwrite`` replaces an existing layout (never a directory of anything else).
    """
    if isinstance(row_group_rows, bool) or not isinstance(row_group_rows, int) or row_group_rows < 1:
        raise ValueError(f"row_group_rows must be an int >= 1, got {row_group_rows!r}")
    out = Path(out_dir)
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        w = _Writer(tmp, row_group_rows)
        t0 = time.time()
        if isinstance(source, MultiDomainData):
            _write_data(w, source)
        elif isinstance(source, SyntheticConfig):
            opts = check_options("synthetic", "synthetic:custom", options)
            if opts["domains"] is None:
                _write_synthetic(w, source, opts["seed"], opts["history_len"])
            else:
                _write_data(w, load_synthetic(source, **opts))
        else:
            kind, _, location = str(source).partition(":")
            if kind == "synthetic" and options.get("domains") is None:
                opts = check_options("synthetic", str(source), options)
                _write_synthetic(w, location or "default", opts["seed"], opts["history_len"])
            else:
                _write_data(w, load_source(str(source), **options))
        atomic_write_json(tmp / "manifest.json", {
            "format": FORMAT, "version": VERSION, "row_group_rows": row_group_rows,
            "source": source.name if isinstance(source, MultiDomainData) else
                      "synthetic:custom" if isinstance(source, SyntheticConfig) else str(source),
            "write_seconds": round(time.time() - t0, 3), "files": w.files,
        })
        publish_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
