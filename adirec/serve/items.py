"""``adirec index add``: new items in a domain's index, from their features, without retraining.

The item tower runs on the new items exactly as it runs on known ones, except that their
``item_id`` is the unknown id (0): the model has no embedding row for an item it never saw, so
a new item is described by its other features (category, brand, per-domain dense values, ...).
The new items get ids after every existing one (``model_items`` in the manifest keeps the
number the model knows), rows in every item feature table, and rows in the domain's corpus,
vectors, popularity list (with no interactions, after every trained item) and FAISS index.

The items file (Parquet, or CSV with a header) has a column ``item`` (the new keys, of the
bundle's key type) and columns named as the bundle's item fields, holding values encoded as the
bundle stores them, since the bundle keeps no raw value vocabularies: categorical and sequence
fields as vocabulary indices (0 = unknown; a sequence as a list, or in CSV as space-separated
integers), dense fields in the standardised scale of training; a per-domain field gives the value
in the domain the items are added to (the other domains get 0.0). A missing column means unknown
(0) for ids and 0.0 (the training mean) for dense values.

The bundle is rewritten beside itself (unchanged files hard-linked, changed ones written anew),
with a new manifest (``revision`` + 1, new checksums), and renamed into place: a reader sees
the old bundle or the new one, never a mix; a running server picks it up on reload.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from safetensors.numpy import save_file as save_np

from adirec.data.schema import OOV, Field
from adirec.serve.bundle import MANIFEST, Bundle, BundleError, _fsync_dir, _publish_permissions, _sha256, load_bundle
from adirec.serve.service import DENSE_BOUND, MAX_KEY_CHARS
from adirec.utils import atomic_write_json, publish_directory

KEY_COLUMN = "item"


def read_items_file(path: str | Path) -> pa.Table:
    """The items file as a table; ValueError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"items file {path} does not exist")
    try:
        if path.suffix == ".parquet":
            return pq.read_table(path)
        if path.suffix == ".csv":
            return pacsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{path}: cannot read it: {e}") from None
    raise ValueError(f"{path}: the items file must end in .parquet or .csv")


def add_items(bundle_dir: str | Path, domain: str, items_file: str | Path) -> dict:
    """Add the items of ``items_file`` to ``domain`` of the bundle at ``bundle_dir``; returns a
    summary (domain, added keys, the new item count and revision)."""
    root = Path(bundle_dir)
    bundle = load_bundle(root)  # verifies every checksum first
    if bundle.manifest.get("item_vectors") == "supplied":
        raise ValueError(f"{root}: this bundle's item vectors were supplied at export, not computed by the "
                         f"item tower; vectors of new items would not be comparable with them")
    if domain not in bundle.domain_names:
        raise ValueError(f"unknown domain {domain!r}; known domains: {bundle.domain_names}")
    d = bundle.domain_names.index(domain)
    table = read_items_file(items_file)
    keys = _new_keys(bundle, table, items_file)
    n_old, m = len(bundle.items), len(keys)
    new_ids = np.arange(n_old + 1, n_old + m + 1)
    item_t, item_dt = _extended_tables(bundle, table, d, m, items_file)
    vectors = _item_vectors(bundle, item_t, item_dt, new_ids, d)
    if not np.all(np.isfinite(vectors)):
        raise ValueError(f"{items_file}: the item tower gave non-finite vectors for these features")

    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        info = bundle.manifest["domain_info"][domain]
        changed = {"vocab/items.parquet", "features/items.safetensors", f"{info['dir']}/items.safetensors",
                   f"{info['dir']}/index.faiss"}
        for rel in bundle.manifest["files"]:
            if rel not in changed:
                _link_or_copy(root / rel, tmp / rel)
        all_keys = bundle.items.decode(np.arange(1, n_old + 1)) + keys
        (tmp / "vocab").mkdir(exist_ok=True)
        key_type = pa.int64() if bundle.items.is_int else pa.string()
        pq.write_table(pa.table({"key": pa.array(all_keys, type=key_type)}), tmp / "vocab" / "items.parquet")
        (tmp / "features").mkdir(exist_ok=True)
        tables = {f"item/{k}": v for k, v in item_t.items()} | {f"item_domain/{k}": v for k, v in item_dt.items()}
        save_np({k: np.ascontiguousarray(v) for k, v in tables.items()}, str(tmp / "features" / "items.safetensors"))
        dom = bundle.domains[d]
        ddir = tmp / info["dir"]
        ddir.mkdir(parents=True, exist_ok=True)
        # new items have no interactions: after every trained item in the popularity list
        save_np({"item_ids": np.concatenate([dom.item_ids, new_ids]),
                 "embeddings": np.ascontiguousarray(np.concatenate([dom.embeddings, vectors]), dtype=np.float32),
                 "popular_ids": np.concatenate([dom.popular_ids, new_ids]),
                 "popular_counts": np.concatenate([dom.popular_counts, np.zeros(m, dtype=np.int64)]).astype(np.int64)},
                str(ddir / "items.safetensors"))
        index = faiss.read_index(str(root / info["dir"] / "index.faiss"))  # a private copy
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        faiss.write_index(index, str(ddir / "index.faiss"))

        manifest = dict(bundle.manifest)  # a version 1 manifest is written back migrated
        manifest.pop("migrated_from", None)
        manifest["num_items"] = n_old + m
        manifest["revision"] = int(manifest.get("revision", 0)) + 1
        manifest["domain_info"][domain] = {**info, "items": dom.size + m}
        manifest.setdefault("added_items", []).append(
            {"domain": domain, "count": m, "first_id": int(new_ids[0]),
             "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        manifest["files"] = {**manifest["files"],
                             **{rel: {"sha256": _sha256(tmp / rel), "bytes": (tmp / rel).stat().st_size}
                                for rel in changed}}
        atomic_write_json(tmp / MANIFEST, manifest)
        _publish_permissions(tmp)
        _fsync_dir(tmp)
        load_bundle(tmp)  # the new bundle must load before it replaces the old one
        publish_directory(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"bundle": str(root), "domain": domain, "added": m, "first_keys": keys[:10],
            "items_in_domain": dom.size + m, "num_items": n_old + m, "revision": manifest["revision"]}


def _new_keys(bundle: Bundle, table: pa.Table, path) -> list:
    if KEY_COLUMN not in table.column_names:
        raise ValueError(f"{path}: no column {KEY_COLUMN!r} (the new items' keys); columns: {table.column_names}")
    if table.num_rows == 0:
        raise ValueError(f"{path}: no rows")
    column = table.column(KEY_COLUMN)
    if column.null_count:
        raise ValueError(f"{path}: column {KEY_COLUMN!r} has {column.null_count} empty values")
    keys: list[int] | list[str]
    if bundle.items.is_int:
        if not pa.types.is_integer(column.type):
            raise ValueError(f"{path}: this bundle's item keys are integers; column {KEY_COLUMN!r} is {column.type}")
        keys = [int(k) for k in column.to_pylist()]
    else:
        keys = [str(k) for k in column.to_pylist()]
        long = [k for k in keys if len(k) > MAX_KEY_CHARS]
        if long:
            raise ValueError(f"{path}: {len(long)} key(s) longer than {MAX_KEY_CHARS} characters, "
                             f"e.g. {long[0][:40]!r}...")
    seen, dup = set(), []
    for k in keys:
        if k in seen:
            dup.append(k)
        seen.add(k)
    if dup:
        raise ValueError(f"{path}: keys repeated in the file: {dup[:10]}")
    known = [k for k in keys if bundle.items.get(k)]
    if known:
        raise ValueError(f"{path}: {len(known)} item(s) already in the bundle, e.g. {known[:10]}; "
                         f"index add adds new items only")
    return keys


def _extended_tables(bundle: Bundle, table: pa.Table, d: int, m: int, path) -> tuple[dict, dict]:
    """The bundle's item and item-domain tables with ``m`` rows appended from the file."""
    data = bundle.data
    fields = {f.name: f for f in data.schema.side("item") if f.name != "item_id"}
    unknown = sorted(set(table.column_names) - set(fields) - {KEY_COLUMN})
    if unknown:
        raise ValueError(f"{path}: unknown column(s) {unknown}; item fields: {sorted(fields)}")
    item_t = {"item_id": np.concatenate([data.item_table["item_id"], np.full(m, OOV, dtype=np.int64)])}
    item_dt = {}
    for name, f in fields.items():
        new = _column_values(table, f, data.schema.vocab_sizes.get(f.vocab_name or "", 0), m, path)
        if f.per_domain:
            old = data.item_domain_table[name]  # (D, I + 1, k)
            rows = np.zeros((old.shape[0], m, *old.shape[2:]), dtype=old.dtype)
            rows[d] = new.reshape(m, *old.shape[2:])
            item_dt[name] = np.concatenate([old, rows], axis=1)
        else:
            old = data.item_table[name]
            item_t[name] = np.concatenate([old, new.reshape(m, *old.shape[1:]).astype(old.dtype)])
    return item_t, item_dt


def _column_values(table: pa.Table, f: Field, size: int, m: int, path) -> np.ndarray:
    """(m,) or (m, dim) encoded values of field ``f`` from the file (defaults when absent)."""
    if f.name not in table.column_names:
        if f.kind == "dense":
            return np.zeros((m, f.dim), dtype=np.float32)
        return np.zeros((m, f.dim) if f.kind == "sequence" else m, dtype=np.int64)
    values = table.column(f.name).to_pylist()
    where = f"{path}: column {f.name!r}"
    for row, v in enumerate(values):
        if v is None:
            raise ValueError(f"{where}, row {row}: empty value")
    if f.kind == "categorical":
        bad = [(r, v) for r, v in enumerate(values) if not _is_int(v) or not 0 <= v < size]
        if bad:
            raise ValueError(f"{where}, row {bad[0][0]}: {bad[0][1]!r} is not an encoded value, an integer in "
                             f"[0, {size}) (0 = unknown)")
        return np.asarray(values, dtype=np.int64)
    if f.kind == "sequence":
        out = np.zeros((m, f.dim), dtype=np.int64)
        for r, v in enumerate(values):
            seq = [int(x) for x in v.split()] if isinstance(v, str) and all(x.isdigit() for x in v.split()) else v
            if not isinstance(seq, list) or len(seq) > f.dim or not all(_is_int(x) and 0 <= x < size for x in seq):
                raise ValueError(f"{where}, row {r}: {v!r} is not a sequence of at most {f.dim} encoded values "
                                 f"(integers in [0, {size}))")
            out[r, :len(seq)] = seq
        return out
    out = np.zeros((m, f.dim), dtype=np.float32)
    for r, v in enumerate(values):
        vals = v if isinstance(v, list) else [v]
        if len(vals) != f.dim or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                         and math.isfinite(x) and abs(x) <= DENSE_BOUND for x in vals):
            raise ValueError(f"{where}, row {r}: {v!r} is not {f.dim} finite number(s) in "
                             f"[-{DENSE_BOUND:g}, {DENSE_BOUND:g}] (the standardised scale)")
        out[r] = vals
    return out


@torch.inference_mode()
def _item_vectors(bundle: Bundle, item_t: dict, item_dt: dict, ids: np.ndarray, d: int) -> np.ndarray:
    """(m, O) item-tower vectors of ``ids`` in domain ``d``, from the extended tables (as
    :meth:`FeatureStore.item_features` gathers them)."""
    feats = {}
    for f in bundle.data.schema.side("item"):
        v = item_dt[f.name][d, ids] if f.per_domain else item_t[f.name][ids]
        if f.kind == "dense":
            t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
            feats[f.name] = t.unsqueeze(-1) if t.dim() == 1 else t
        else:
            feats[f.name] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64))
    dom = torch.full((len(ids),), d, dtype=torch.long)
    bundle.model.eval()
    return bundle.model.item_embedding(feats, dom).numpy().astype(np.float32)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link an unchanged file into the new bundle (files are never modified in place, so
    sharing them is safe); copy where links are not possible."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


__all__ = ["add_items", "read_items_file", "BundleError"]
