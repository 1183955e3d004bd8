"""WSDM-Cup 2022 XMRec layout: ``DIR/<market>/train_5core.tsv``, ``valid_qrel.tsv``, ``valid_run.tsv``.

Each market is a domain. Training rows are ``userId itemId rating`` with a header; the qrel file
holds one held-out positive per user (split ``valid``) and the run file the candidate list of
each user (protocol ``sampled``). Markets share items, not users.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from adirec.data.build import RawCandidates, RawInteractions, build_dataset
from adirec.data.dataset import MultiDomainData


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
    """Load markets ``domains`` (default: every sub-directory with a training file) as domains."""
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"XMRec directory {root} does not exist")
    available = sorted(p.name for p in root.iterdir() if (p / train_file).is_file())
    if domains is None:
        domains = available
    unknown = [d for d in domains if d not in available]
    if unknown:
        raise ValueError(f"unknown XMRec markets {unknown} in {root}; available: {available}")
    if not domains:
        raise ValueError(f"no market directories with {train_file} in {root}")
    train_parts, valid_parts, cands = [], [], {"u": [], "d": [], "items": []}
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

    train = raw(train_parts)
    train_pos = train.weight > 0
    train = RawInteractions(train.user[train_pos], train.item[train_pos], train.domain[train_pos], train.weight[train_pos])
    candidates = None
    if cands["items"]:
        candidates = {"valid": RawCandidates(np.concatenate(cands["u"]).astype(object),
                                             np.concatenate(cands["d"]), cands["items"])}
    return build_dataset(
        f"xmrec:{root}", domains, train, raw(valid_parts), None,
        candidates=candidates, history_len=history_len, corpus="domain",
        # user keys are "<market>:<userId>"; serving maps a request's (user, domain) back to them
        meta={"source": "xmrec", "location": str(root), "train_file": train_file, "user_key_scope": "domain"},
    )
