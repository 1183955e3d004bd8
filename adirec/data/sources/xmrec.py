"""WSDM-Cup 2022 XMRec layout: ``DIR/<market>/train_5core.tsv``, ``valid_qrel.tsv``, ``valid_run.tsv``.

Each market is a domain. Training rows are ``userId itemId rating`` with a header; the qrel file
holds one held-out positive per user (split ``valid``) and the run file the candidate list of
each user (protocol ``sampled``). Markets share items, not users.

Every sub-folder of DIR is a market (names starting with '.' or '_' aside) unless ``--domains``
names the markets to load, in that order; a market folder without its training file is an
error, never skipped. The qrel and run files are each in every loaded market or in none (then
there is no ``valid`` split, or no candidate lists and the ``full`` protocol applies); a market
missing one that the others have is an error naming the file. The files have no time:
duplicate (user, item) rows of a market collapse into one (see
:mod:`adirec.data.sources.rows`), and histories list a user's items in item-id order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from adirec.data.build import RawCandidates, RawInteractions, build_dataset
from adirec.data.dataset import MultiDomainData
from adirec.data.sources.rows import Rows, collapse_duplicates, count


def _read_tsv(path: Path, columns: list[str], header: bool) -> pa.Table:
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    read = pacsv.ReadOptions(autogenerate_column_names=not header, column_names=None)
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False)
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns})
    try:
        table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: malformed TSV: {e}") from None
    if not header:
        if table.num_columns != len(columns):
            raise ValueError(f"{path}: expected {len(columns)} tab-separated columns, found {table.num_columns}")
        table = table.rename_columns(columns)
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; found {table.column_names}")
    for c in columns:
        nulls = table[c].null_count
        if nulls:
            raise ValueError(f"{path}: column {c!r} has {nulls} empty values")
    return table


def _ratings(table: pa.Table, path: Path) -> np.ndarray:
    try:
        r = np.asarray(table["rating"].to_numpy(), dtype=np.float64)
    except ValueError:
        raise ValueError(f"{path}: column 'rating' must be numeric") from None
    if not np.all(np.isfinite(r)):
        raise ValueError(f"{path}: column 'rating' has NaN or infinite values")
    return r


def load_xmrec(directory: str | Path, domains: list[str] | None = None, *,
               train_file: str = "train_5core.tsv", history_len: int = 50) -> MultiDomainData:
    """Load markets ``domains`` (default: every market folder, in name order) as domains."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"XMRec directory {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    available = [f for f in folders if (root / f / train_file).is_file()]
    if domains is None:
        lacking = [f for f in folders if f not in available]
        if lacking:
            raise ValueError(f"{root}: market folder(s) {lacking} have no {train_file}; every sub-folder is a market "
                             f"unless --domains names the markets to load (markets with {train_file}: {available})")
        domains = available
    domains = list(domains)
    unknown = [d for d in domains if d not in available]
    if unknown:
        detail = "; ".join(f"{root / d} has no {train_file}" if d in folders else f"no folder {root / d}"
                           for d in unknown)
        raise ValueError(f"unknown XMRec markets {unknown} ({detail}); available: {available}")
    if not domains:
        raise ValueError(f"no market directories with {train_file} in {root}")
    if len(set(domains)) != len(domains):
        raise ValueError(f"--domains names a market twice: {domains}")
    for extra in ("valid_qrel.tsv", "valid_run.tsv"):
        present = [(root / m / extra).is_file() for m in domains]
        if any(present) and not all(present):
            missing = [str(root / m / extra) for m, ok in zip(domains, present, strict=True) if not ok]
            raise ValueError(f"{', '.join(missing)} missing: the other markets have {extra}, and one protocol "
                             f"applies to all domains; add it or leave the market out with --domains")
    train_parts, valid_parts = [], []
    cands: dict[str, list] = {"u": [], "d": [], "items": []}
    for d, market in enumerate(domains):
        path = root / market / train_file
        t = _read_tsv(path, ["userId", "itemId", "rating"], header=True)
        if t.num_rows == 0:
            raise ValueError(f"{path}: no rows (empty domain {market!r})")
        rating = _ratings(t, path)
        # a user id may repeat across markets in other releases: make users market-local
        users = np.char.add(f"{market}:", np.asarray(t["userId"].to_numpy(zero_copy_only=False), dtype=str))
        train_parts.append((users, t["itemId"].to_numpy(zero_copy_only=False), np.full(t.num_rows, d), rating))
        qrel_path = root / market / "valid_qrel.tsv"
        if qrel_path.is_file():
            q = _read_tsv(qrel_path, ["userId", "itemId", "rating"], header=True)
            qr = _ratings(q, qrel_path)
            keep = qr > 0
            qu = np.char.add(f"{market}:", np.asarray(q["userId"].to_numpy(zero_copy_only=False), dtype=str))
            valid_parts.append((qu[keep], q["itemId"].to_numpy(zero_copy_only=False)[keep],
                                np.full(int(keep.sum()), d), qr[keep]))
        run_path = root / market / "valid_run.tsv"
        if run_path.is_file():
            r = _read_tsv(run_path, ["userId", "items"], header=False)
            lists = [s.split(",") for s in r["items"].to_pylist()]
            if any(len(x) == 0 or "" in x for x in lists):
                raise ValueError(f"{run_path}: empty candidate in a candidate list")
            cands["u"].append(np.char.add(f"{market}:", np.asarray(r["userId"].to_pylist(), dtype=str)))
            cands["d"].append(np.full(len(lists), d))
            cands["items"].extend(lists)

    def raw(parts):
        if not parts:
            return None
        u, i, d, w = (np.concatenate([p[k] for p in parts]) for k in range(4))
        return RawInteractions(u.astype(object), i.astype(object), d, (w > 0).astype(np.float32))

    meta: dict[str, object] = {
        "source": "xmrec", "location": str(root), "train_file": train_file,
        # user keys are "<market>:<userId>"; serving maps a request's (user, domain) back to them
        "user_key_scope": "domain",
        "order": "none (XMRec files have no time): histories list a user's items in item-id order"}
    train = raw(train_parts)
    count(meta, "read", len(train))
    train_pos = train.weight > 0
    count(meta, "not_positive", int((~train_pos).sum()))
    rows = Rows(train.user[train_pos], train.item[train_pos], np.asarray(train.domain[train_pos], np.int64),
                train.weight[train_pos], None, np.flatnonzero(train_pos))
    rows = collapse_duplicates(rows, meta, lambda i: f"training row {i}")
    train = RawInteractions(rows.user, rows.item, rows.domain, rows.weight)
    valid = raw(valid_parts)
    meta["split"] = {"rule": "files", "description": f"train: {train_file}; valid: valid_qrel.tsv (one held-out "
                     "positive per user)" if valid is not None else f"train: {train_file} (no valid_qrel.tsv)",
                     "train": len(train), "valid": 0 if valid is None else len(valid), "test": 0}
    candidates = None
    if cands["items"]:
        candidates = {"valid": RawCandidates(np.concatenate(cands["u"]).astype(object),
                                             np.concatenate(cands["d"]), cands["items"])}
    meta["protocol"] = "sampled (valid_run.tsv candidate lists)" if candidates else "full (no valid_run.tsv)"
    return build_dataset(f"xmrec:{root}", domains, train, valid, None, candidates=candidates,
                         history_len=history_len, corpus="domain", meta=meta)
