"""RecBole atomic files: ``PREFIX.inter`` (required), ``PREFIX.user`` and ``PREFIX.item`` (optional).

Headers are ``name:type`` with type ``token``, ``token_seq``, ``float`` or ``float_seq``. Domains
come from a rule on a user or item field (``user.age:25,35`` = buckets (-inf, 25), [25, 35),
[35, inf) of a numeric field; ``item.genre`` = one domain per value, the first token of a
sequence field). Positives come from a rule such as ``rating>=4``; the split is leave-last-out
per user on positives sorted by (timestamp, item id): last -> test, second last -> valid, the
rest -> train (users with fewer than 3 positives keep all in train).

Feature columns become fields by their declared type: ``token`` -> categorical, ``token_seq`` ->
sequence, ``float`` -> dense, with three data-driven exceptions: a ``float`` column holding only
small integer codes (at most ``CODE_MAX_DISTINCT`` distinct integers, e.g. an occupation code)
is categorical; a ``token`` column whose values are space-separated lists drawn from a small
token set (``Animation Children's Comedy``) is a sequence; a ``token`` column with more distinct
values than half its rows (titles, zip codes) identifies rows rather than describing them and
is skipped.
"""
from __future__ import annotations

import operator
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from adirec.data.build import RawColumn, RawInteractions, RawTable, build_dataset
from adirec.data.dataset import MultiDomainData

TYPES = ("token", "token_seq", "float", "float_seq")
CODE_MAX_DISTINCT = 32
SEQ_MAX_LEN = 8
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
        "==": operator.eq, "!=": operator.ne}


def read_atomic(path: Path) -> tuple[pa.Table, dict[str, str]]:
    """Read one atomic file; returns the table (all strings) and ``{column: declared type}``."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
    types: dict[str, str] = {}
    for h in header:
        name, sep, typ = h.partition(":")
        if not sep or typ not in TYPES:
            raise ValueError(f"{path}: header column {h!r} is not 'name:type' with type in {TYPES}")
        types[name] = typ
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=list(types)),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in types},
                                                 strings_can_be_null=False),
        )
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: malformed atomic file: {e}") from None
    return table, types


def _floats(table: pa.Table, col: str, path: Path) -> np.ndarray:
    raw = table[col].to_numpy(zero_copy_only=False)
    try:
        vals = np.array([float(x) if x != "" else np.nan for x in raw], dtype=np.float64)
    except ValueError:
        bad = next(i for i, x in enumerate(raw) if not _is_float(x))
        raise ValueError(f"{path}: column {col!r} line {bad + 2}: {raw[bad]!r} is not a number") from None
    return vals


def _is_float(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return x == ""


def parse_positive(rule: str) -> tuple[str, callable, float]:
    m = re.fullmatch(r"\s*(\w+)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+)\s*", rule)
    if not m:
        raise ValueError(f"positive rule {rule!r} is not FIELD OP NUMBER (e.g. rating>=4)")
    return m.group(1), _OPS[m.group(2)], float(m.group(3))


def parse_domain_rule(rule: str) -> tuple[str, str, list[float] | None]:
    m = re.fullmatch(r"(user|item)\.(\w+)(?::([-+0-9.eE,\s]+))?", rule.strip())
    if not m:
        raise ValueError(f"domain rule {rule!r} is not SIDE.FIELD[:EDGE,EDGE,...] "
                         "(e.g. user.age:25,35 or item.genre)")
    edges = None
    if m.group(3):
        edges = [float(x) for x in m.group(3).split(",") if x.strip()]
        if sorted(edges) != edges or len(set(edges)) != len(edges):
            raise ValueError(f"domain rule {rule!r}: bucket edges must be strictly increasing")
    return m.group(1), m.group(2), edges


def _bucket_names(field: str, edges: list[float]) -> list[str]:
    fmt = lambda x: f"{x:g}"
    names = [f"{field}<{fmt(edges[0])}"]
    names += [f"{field}[{fmt(a)},{fmt(b)})" for a, b in zip(edges[:-1], edges[1:])]
    return names + [f"{field}>={fmt(edges[-1])}"]


def _feature_columns(table: pa.Table, types: dict[str, str], key: str, skip: set[str],
                     path: Path) -> dict[str, RawColumn]:
    cols: dict[str, RawColumn] = {}
    n = table.num_rows
    for name, typ in types.items():
        if name == key or name in skip:
            continue
        raw = table[name].to_numpy(zero_copy_only=False)
        if typ == "token":
            distinct = set(raw.tolist())
            if len(distinct) > n / 2 and n > 1:
                continue  # nearly one value per row: an identifier, not a feature
            tokens = {t for v in distinct for t in v.split()}
            if any(" " in v for v in distinct) and len(tokens) < len(distinct) / 2:
                cols[name] = RawColumn("sequence", [s.split() for s in raw], max_len=SEQ_MAX_LEN)
            else:
                cols[name] = RawColumn("categorical", np.where(raw == "", None, raw).astype(object))
        elif typ == "token_seq":
            cols[name] = RawColumn("sequence", [s.split() for s in raw], max_len=SEQ_MAX_LEN)
        elif typ == "float":
            vals = _floats(table, name, path)
            finite = vals[np.isfinite(vals)]
            if len(finite) and np.all(finite == np.round(finite)) and len(np.unique(finite)) <= CODE_MAX_DISTINCT:
                cols[name] = RawColumn("categorical",
                                       np.array([None if not np.isfinite(v) else int(v) for v in vals], dtype=object))
            else:
                if not np.all(np.isfinite(vals)):
                    vals = np.where(np.isfinite(vals), vals, np.nanmean(vals) if len(finite) else 0.0)
                cols[name] = RawColumn("dense", vals)
        # float_seq columns are rare in practice and skipped
    return cols


def load_recbole(prefix: str | Path, *, domain_by: str | None, positive: str = "rating>=4",
                 history_len: int = 50) -> MultiDomainData:
    prefix = Path(prefix)
    if domain_by is None:
        raise ValueError("a RecBole source needs a domain rule, e.g. --domain-by user.age:25,35")
    side, dfield, edges = parse_domain_rule(domain_by)
    pfield, op, threshold = parse_positive(positive)
    inter_path = prefix.with_name(prefix.name + ".inter")
    inter, itypes = read_atomic(inter_path)
    for req in ("user_id", "item_id"):
        if req not in itypes:
            raise ValueError(f"{inter_path}: missing column {req!r}; found {list(itypes)}")
    if pfield not in itypes:
        raise ValueError(f"{inter_path}: positive rule names column {pfield!r}, which is missing; found {list(itypes)}")
    if inter.num_rows == 0:
        raise ValueError(f"{inter_path}: no interactions")
    tables = {}
    for s in ("user", "item"):
        path = prefix.with_name(f"{prefix.name}.{s}")
        if path.is_file():
            tables[s] = (read_atomic(path), path)
    if side not in tables:
        raise ValueError(f"domain rule {domain_by!r} needs {prefix.name}.{side}, which is missing")
    (dtable, dtypes), dpath = tables[side]
    key = f"{side}_id"
    if key not in dtypes:
        raise ValueError(f"{dpath}: missing column {key!r}")
    if dfield not in dtypes:
        raise ValueError(f"{dpath}: domain rule names column {dfield!r}, which is missing; found {list(dtypes)}")

    # domain of every key of the domain side
    dkeys = dtable[key].to_numpy(zero_copy_only=False)
    if edges is not None:
        vals = _floats(dtable, dfield, dpath)
        if not np.all(np.isfinite(vals)):
            raise ValueError(f"{dpath}: column {dfield!r} has empty values; cannot bucket into domains")
        dom_of_key = np.searchsorted(np.asarray(edges), vals, side="right")
        domains = _bucket_names(dfield, edges)
    else:
        raw = dtable[dfield].to_numpy(zero_copy_only=False)
        first = np.array([s.split()[0] if s.split() else "" for s in raw], dtype=object)
        if np.any(first == ""):
            raise ValueError(f"{dpath}: column {dfield!r} has empty values; cannot assign domains")
        domains = sorted(set(first.tolist()))
        dom_of_key = np.searchsorted(np.array(domains, dtype=object), first)
    lookup = dict(zip(dkeys.tolist(), dom_of_key.tolist()))

    users = inter["user_id"].to_numpy(zero_copy_only=False)
    items = inter["item_id"].to_numpy(zero_copy_only=False)
    score = _floats(inter, pfield, inter_path)
    ts = _floats(inter, "timestamp", inter_path) if "timestamp" in itypes else np.zeros(len(users))
    side_keys = users if side == "user" else items
    dom = np.array([lookup.get(k, -1) for k in side_keys.tolist()], dtype=np.int64)
    keep = op(score, threshold) & (dom >= 0)
    users, items, dom, ts = users[keep], items[keep], dom[keep], ts[keep]
    if len(users) == 0:
        raise ValueError(f"{inter_path}: no positive interactions under rule {positive!r}")

    # leave-last-out on (timestamp, item id) per user
    order = np.lexsort((items.astype(str), ts, users.astype(str)))
    users, items, dom, ts = users[order], items[order], dom[order], ts[order]
    _, first_idx, counts = np.unique(users, return_index=True, return_counts=True)
    end = first_idx + counts
    split = np.zeros(len(users), dtype=np.int8)  # 0 train, 1 valid, 2 test
    has3 = counts >= 3
    split[end[has3] - 1] = 2
    split[end[has3] - 2] = 1

    def part(code):
        m = split == code
        return RawInteractions(users[m].astype(object), items[m].astype(object), dom[m],
                               np.ones(int(m.sum()), np.float32), ts[m].astype(np.int64))

    feature_tables = {}
    for s, ((t, typs), path) in tables.items():
        skip = {dfield} if (s == side and edges is None) else set()
        feature_tables[s] = RawTable(t[f"{s}_id"].to_numpy(zero_copy_only=False).astype(object),
                                     _feature_columns(t, typs, f"{s}_id", skip, path))
    train = part(0)
    present = np.bincount(train.domain, minlength=len(domains))
    if np.any(present == 0):
        empty = [domains[d] for d in np.flatnonzero(present == 0)]
        raise ValueError(f"{inter_path}: domain rule {domain_by!r} leaves domains {empty} without training rows")
    return build_dataset(
        f"recbole:{prefix}", domains, train, part(1), part(2),
        users=feature_tables.get("user"), items=feature_tables.get("item"),
        history_len=history_len, corpus="all" if side == "user" else "domain",
        meta={"source": "recbole", "location": str(prefix), "domain_by": domain_by, "positive": positive},
    )
