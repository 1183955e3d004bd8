"""Your own interactions: ``table:PATH`` (CSV, TSV or Parquet; one file or a folder of them with
the same columns), or an in-memory ``pyarrow.Table`` / pandas DataFrame through :func:`load_table`.

Column mapping (DataSpec fields, so also flags of ``adirec train``, ``bench``, ``data inspect``
and ``data convert``):

* ``--user-col``, ``--item-col`` (required): ids, read as text;
* ``--domain-col``: the domain of each row (a scenario, tab or market). Instead, ``--domain-by
  user.ATTR[:EDGES]`` / ``item.ATTR`` takes it from the user or item feature table; with neither
  there is one domain, ``all``. ``--domains a,b`` keeps those domains in that order;
* ``--time-col``: epoch numbers (kept in the file's unit) or ISO 8601 text (``2024-01-31``,
  ``2024-01-31T12:00:00Z``; without a zone, UTC) as epoch seconds; whole numbers;
* ``--weight-col``: each row's sample weight (a number >= 0; rows of weight 0 are dropped);
* ``--positive EXPR`` (``rating>=4``): only rows satisfying it are interactions (default: all).

Feature tables (files like the interactions; the key column has the name of ``--user-col`` /
``--item-col``, one row per key): ``--user-features``, ``--item-features``, typed by their columns
as in :mod:`adirec.data.sources.columns` or by ``--feature-types FILE``;
``--user-domain-features`` and ``--item-domain-features`` hold numbers per (key, domain), the
domain in the column named like ``--domain-col`` (``domain`` without one); a missing pair gets the
column's mean. Keys of a per-domain table must have a row in the plain feature table, when there
is one.

The rows then go through :mod:`adirec.data.sources.rows` (positives, domains, duplicates, the
``--split`` rule, held-out rows). ``--candidates FILE`` gives candidate lists for the
``sampled`` protocol: columns ``--user-col``'s name, the domain column (needed with several
domains), ``items`` (comma-separated ids, or a list) and optionally ``split`` (``valid`` /
``test``; default ``test``, or ``valid`` when there is no test split); every held-out (user,
domain) of that split needs a list.

Errors name the file, the line (CSV/TSV: the header is line 1; Parquet: row numbers from 1) and
the column. UTF-8 byte-order marks and CRLF line ends are read as plain text.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from adirec.data.build import RawCandidates, RawTable, Vocabulary, build_dataset, note
from adirec.data.dataset import MultiDomainData
from adirec.data.sources.columns import (
    check_unique_keys, feature_columns, inferred_type, numbers, plain, read_feature_types, text_keys, times,
)
from adirec.data.sources.rows import (
    ONE_DOMAIN, Rows, SplitRule, attribute_domains, count, keep_domains, lookup_domains,
    parse_domain_rule, parse_positive, positive_mask, split_labels, split_rows,
)

#: file suffix -> CSV delimiter (None: Parquet); compressed text (.gz, .bz2) is read too
SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": None, ".pq": None}
_COMPRESSED = (".gz", ".bz2")


# ------------------------------------------------------------------ reading
@dataclass
class Source:
    """One table read from a file, a folder of files or memory; ``where(i)`` names row ``i``."""

    table: pa.Table
    label: str
    files: list[tuple[str, str, int]]  # (file, kind "csv" | "parquet" | "memory", first row)

    def where(self, i: int) -> str:
        starts = [f[2] for f in self.files]
        j = int(np.searchsorted(starts, i, side="right")) - 1
        file, kind, start = self.files[j]
        r = i - start
        if kind == "csv":
            return f"{file} line {r + 2}"
        if kind == "parquet":
            return f"{file} row {r + 1}"
        return f"{file} row {r}"

    def require(self, column: str | None, flag: str) -> None:
        if column is not None and column not in self.table.column_names:
            raise ValueError(f"{self.label}: no column {column!r} ({flag}); columns found: {self.table.column_names}")

    def __len__(self) -> int:
        return self.table.num_rows


def _data_suffix(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes and suffixes[-1] in SUFFIXES else None


def _read_file(path: Path, text_columns: set[str]) -> pa.Table:
    suffix = _data_suffix(path)
    if suffix is None:
        raise ValueError(f"{path}: unknown file type; expected one of {', '.join(SUFFIXES)} (optionally .gz/.bz2)")
    if SUFFIXES[suffix] is None:
        try:
            return pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{path}: cannot read as Parquet: {e}") from None
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (not even a header line)")
    try:
        # every column named as an id is text, whatever it looks like; only "" is missing (not "NA")
        return pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(delimiter=SUFFIXES[suffix]),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns},
                                                 null_values=[""], strings_can_be_null=True))
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise ValueError(f"{path}: empty file (not even a header line)") from None
        raise ValueError(f"{path}: cannot read as {'TSV' if SUFFIXES[suffix] == chr(9) else 'CSV'}: {e}") from None


def read_source(source: Any, what: str, text_columns: set[str | None]) -> Source:
    """Read ``source`` (a file, a folder of files with the same columns, a ``pyarrow.Table`` or a
    pandas DataFrame); ``text_columns`` are read as text from CSV/TSV (None and "" stand for a
    column not given)."""
    text_names = {c for c in text_columns if c}
    if isinstance(source, pa.Table):
        return _checked(Source(source, f"the in-memory {what} table", [(f"the in-memory {what} table", "memory", 0)]))
    if type(source).__module__.split(".")[0] == "pandas":
        table = pa.Table.from_pandas(source, preserve_index=False)
        return _checked(Source(table, f"the in-memory {what} table", [(f"the in-memory {what} table", "memory", 0)]))
    if not isinstance(source, (str, Path)):
        raise TypeError(f"{what}: expected a path, a pyarrow.Table or a pandas DataFrame, got {type(source).__name__}")
    path = Path(source)
    if path.is_dir():
        names = sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
        unknown = [p.name for p in names if p.is_dir() or _data_suffix(p) is None]
        if unknown:
            raise ValueError(f"{path}: {what} folder holds files that are not tables: {unknown[:5]}; expected "
                             f"only {', '.join(SUFFIXES)} files (names starting with '.' or '_' are ignored)")
        if not names:
            raise ValueError(f"{path}: {what} folder holds no {', '.join(SUFFIXES)} files")
    elif path.is_file():
        names = [path]
    else:
        raise FileNotFoundError(f"{what} file or folder {path} does not exist")
    tables: list[pa.Table] = []
    files: list[tuple[str, str, int]] = []
    start = 0
    for p in names:
        t = _read_file(p, text_names)
        if tables and sorted(t.column_names) != sorted(tables[0].column_names):
            raise ValueError(f"{p}: columns {t.column_names} differ from those of {names[0]} "
                             f"({tables[0].column_names}); every file of a folder has the same columns")
        if tables:
            t = t.select(tables[0].column_names)
        tables.append(t)
        suffix = _data_suffix(p)  # known: _read_file has read it
        files.append((str(p), "parquet" if suffix is not None and SUFFIXES[suffix] is None else "csv", start))
        start += t.num_rows
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ValueError(f"{path}: the files' columns have types that do not combine ({e}); give each column "
                         f"one type in every file") from None
    return _checked(Source(table, str(path), files))


def _checked(src: Source) -> Source:
    names = src.table.column_names
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise ValueError(f"{src.label}: column names {dup} appear more than once")
    return src


# ------------------------------------------------------------------ the loader
@dataclass
class _Side:
    """A feature table of users or items."""

    keys: np.ndarray
    table: pa.Table
    where: Callable[[int], str]
    label: str


def _feature_source(spec, key_col: str, what: str, flag: str) -> _Side:
    src = read_source(spec, what, {key_col})
    src.require(key_col, f"the key column, named like {flag}")
    if len(src) == 0:
        raise ValueError(f"{src.label}: no rows")
    keys = text_keys(src.table[key_col], key_col, src.where)
    check_unique_keys(keys, key_col, src.where)
    return _Side(keys, src.table, src.where, src.label)


def load_table(source: Any, *, user_col: str | None = None, item_col: str | None = None,
               domain_col: str | None = None, time_col: str | None = None, weight_col: str | None = None,
               positive: str | None = None, domain_by: str | None = None, domains: list[str] | None = None,
               split: str | None = None, row_order: bool = False, user_features: Any = None,
               item_features: Any = None, user_domain_features: Any = None, item_domain_features: Any = None,
               feature_types: str | Path | dict | None = None, candidates: Any = None,
               history_len: int = 50, name: str | None = None) -> MultiDomainData:
    """Load an interaction table with a column mapping (see the module docstring).

    ``source`` and every feature or candidate table may be a path (file or folder), a
    ``pyarrow.Table`` or a pandas DataFrame."""
    rule = SplitRule.parse(split)
    kinds = read_feature_types(feature_types)
    pfield = parse_positive(positive)[0] if positive else None
    if domain_col and domain_by:
        raise ValueError("give the domain either as a column (--domain-col) or as a user/item attribute "
                         "(--domain-by), not both")
    if time_col and row_order:
        raise ValueError("--row-order takes the row order as time; it cannot be combined with --time-col")
    dcol = domain_col or "domain"  # the domain column of per-domain feature and candidate tables
    label_col = rule.column if rule.kind == "column" else None
    src = read_source(source, "interaction", {user_col, item_col, domain_col, label_col})
    name = name or (f"table:{source}" if isinstance(source, (str, Path)) else "table")
    if not user_col or not item_col:
        raise ValueError(f"{src.label}: a table source needs --user-col and --item-col; columns found: "
                         f"{src.table.column_names}")
    for col, flag in ((user_col, "--user-col"), (item_col, "--item-col"), (domain_col, "--domain-col"),
                      (time_col, "--time-col"), (weight_col, "--weight-col"), (pfield, "--positive"),
                      (label_col, "--split column:NAME")):
        src.require(col, flag)
    if len(src) == 0:
        raise ValueError(f"{src.label}: no rows")
    ends = [f[2] for f in src.files[1:]] + [len(src)]
    for (file, _, start), end in zip(src.files, ends, strict=True):  # a file of a folder without rows is a mistake
        if start == end:
            raise ValueError(f"{file}: no rows")
    t, where, n = src.table, src.where, len(src)
    meta: dict = {"source": "table", "location": str(source) if isinstance(source, (str, Path)) else "in-memory table",
                  "columns": {k: v for k, v in (("user", user_col), ("item", item_col), ("domain", domain_col),
                                                ("time", time_col), ("weight", weight_col)) if v},
                  "domain_by": domain_by, "positive": positive}
    count(meta, "read", n)

    # ---- rows
    if time_col:
        ts, time_kind = times(t[time_col], time_col, where)
        form = "epoch numbers" if time_kind == "numbers" else "ISO 8601, as epoch seconds"
        meta["order"] = f"the time column {time_col!r} ({form}), then item id"
    elif row_order:
        ts, time_kind = np.arange(n, dtype=np.int64), "rows"
        meta["order"] = "the row order of the file(s) (--row-order; a folder's files in name order)"
    else:
        ts, time_kind = None, None
        meta["order"] = "none (no --time-col): histories list a user's items in item-id order"
    weight = np.ones(n, np.float32)
    keep = np.ones(n, bool)
    if weight_col:
        w = numbers(t[weight_col], weight_col, where)
        bad = ~np.isfinite(w) | (w < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where(i)}: column {weight_col!r} (weight) holds {w[i]}; "
                             f"weights are finite numbers >= 0")
        weight = w.astype(np.float32)
        keep &= w > 0
        count(meta, "zero_weight", int((w == 0).sum()))
    if positive and pfield is not None:
        ok = positive_mask(numbers(t[pfield], pfield, where), positive)
        count(meta, "not_positive", int((keep & ~ok).sum()))
        keep &= ok
    rows = Rows(text_keys(t[user_col], user_col, where), text_keys(t[item_col], item_col, where),
                np.zeros(n, np.int64), weight, ts, np.arange(n, dtype=np.int64),
                split_labels(t[label_col], label_col, where) if label_col else None)
    if domain_col:
        values = text_keys(t[domain_col], domain_col, where)
        all_domains = sorted(set(values.tolist()))
        rows.domain = np.searchsorted(np.array(all_domains, dtype=object), values).astype(np.int64)
    rows = rows.take(np.flatnonzero(keep))
    if len(rows) == 0:
        raise ValueError(f"{src.label}: no interactions left after --positive / --weight-col (rows {meta['rows']})")

    # ---- domains and feature tables
    sides = {}
    if user_features is not None:
        sides["user"] = _feature_source(user_features, user_col, "user feature", "--user-col")
    if item_features is not None:
        sides["item"] = _feature_source(item_features, item_col, "item feature", "--item-col")
    skip: dict[str, set[str]] = {"user": set(), "item": set()}
    by_user = False
    if domain_col:
        rule_text = f"--domain-col {domain_col}"
    elif domain_by:
        side, attr, edges = parse_domain_rule(domain_by)
        if side not in sides:
            raise ValueError(f"--domain-by {domain_by} needs the {side} feature table (--{side}-features FILE) "
                             f"with a column {attr!r}")
        s = sides[side]
        if attr not in s.table.column_names:
            raise ValueError(f"{s.label}: no column {attr!r} (--domain-by {domain_by}); columns found: "
                             f"{s.table.column_names}")
        all_domains, dom_of_key = attribute_domains(s.keys, s.table[attr], attribute=attr, edges=edges, where=s.where)
        rows.domain = lookup_domains(rows.user if side == "user" else rows.item, s.keys, dom_of_key, side=side,
                                     rows_what=src.label, table_what=s.label, rule=domain_by)
        rule_text = f"--domain-by {domain_by}"
        by_user = side == "user"
        if edges is None:
            skip[side].add(attr)
    else:
        all_domains, rule_text = [ONE_DOMAIN], "one domain (no --domain-col or --domain-by)"
    meta["domain_rule"] = rule_text
    rows, kept_domains = keep_domains(name, rows, all_domains, domains, meta, rule=rule_text)
    parts = split_rows(name, rows, rule, meta, time_kind=time_kind, describe=where)

    raw_tables, how = {}, {}
    for side, s in sides.items():
        declared = {c: inferred_type(s.table.schema.field(c).type) for c in s.table.column_names}
        cols, how[side] = feature_columns(s.table, declared, key=user_col if side == "user" else item_col,
                                          where=s.where, kinds=kinds, skip=skip[side])
        raw_tables[side] = RawTable(s.keys, cols)
    dense = {}
    for side, spec in (("user", user_domain_features), ("item", item_domain_features)):
        if spec is None:
            continue
        key_col = user_col if side == "user" else item_col
        dense[side], raw_tables[side], how[f"{side}_domain"] = _domain_features(
            spec, side, key_col, dcol, all_domains, kept_domains, raw_tables.get(side), sides.get(side))
    meta["features"] = how
    cands = None
    if candidates is not None:
        cands = _candidates(candidates, user_col, dcol, all_domains, kept_domains, parts, meta)
    return build_dataset(
        name, kept_domains, parts["train"], parts["valid"], parts["test"],
        users=raw_tables.get("user"), items=raw_tables.get("item"),
        user_domain_dense=dense.get("user"), item_domain_dense=dense.get("item"), candidates=cands,
        history_len=history_len, corpus="all" if by_user else "domain", meta=meta,
    )


def _domain_features(spec, side: str, key_col: str, dcol: str, all_domains: list[str], kept: list[str],
                     raw: RawTable | None, plain_side: _Side | None) -> tuple[dict, RawTable, dict]:
    """Per-(key, domain) numbers as ``(D, n_keys)`` arrays aligned to the side's feature-table keys."""
    src = read_source(spec, f"{side}-domain feature", {key_col, dcol})
    src.require(key_col, f"the key column, named like --{side}-col")
    src.require(dcol, "the domain column, named like --domain-col (or 'domain')")
    if len(src) == 0:
        raise ValueError(f"{src.label}: no rows")
    keys = text_keys(src.table[key_col], key_col, src.where)
    names = text_keys(src.table[dcol], dcol, src.where)
    unknown = sorted(set(names.tolist()) - set(all_domains))
    if unknown:
        i = int(np.flatnonzero(names == unknown[0])[0])
        raise ValueError(f"{src.where(i)}: unknown domain {unknown[0]!r} in column {dcol!r}; "
                         f"known domains: {all_domains}")
    pair = np.char.add(np.char.add(keys.astype(str), "\x1f"), names.astype(str))
    check_unique_keys(pair.astype(object), f"({key_col}, {dcol})", src.where)
    value_cols = [c for c in src.table.column_names if c not in (key_col, dcol)]
    if not value_cols:
        raise ValueError(f"{src.label}: no feature columns besides {key_col!r} and {dcol!r}")
    if raw is None:
        raw = RawTable(np.unique(keys.astype(str)).astype(object), {})
    vocab = Vocabulary(raw.keys)
    raw_index = np.full(len(vocab), -1, np.int64)  # vocabulary code -> position in raw.keys
    raw_index[vocab.encode(raw.keys)] = np.arange(len(raw.keys))
    row = raw_index[vocab.encode(keys)]
    if np.any(row < 0):
        i = int(np.flatnonzero(row < 0)[0])
        raise ValueError(f"{src.where(i)}: {key_col!r} {keys[i]!r} has no row in "
                         f"{plain_side.label if plain_side else 'the feature table'}; per-domain features need "
                         f"keys of the {side} feature table")
    dom_index = {d: j for j, d in enumerate(kept)}
    d = np.array([dom_index.get(x, -1) for x in names.tolist()], np.int64)
    inside = d >= 0
    out, how = {}, {}
    for c in value_cols:
        v = numbers(src.table[c], c, src.where, allow_missing=True)
        if not np.all(np.isfinite(v) | np.isnan(v)):
            i = int(np.flatnonzero(~np.isfinite(v) & ~np.isnan(v))[0])
            raise ValueError(f"{src.where(i)}: column {c!r} holds {v[i]}; per-domain features are finite numbers")
        table = np.full((len(kept), len(raw.keys)), np.nan)
        table[d[inside], row[inside]] = v[inside]
        missing = np.isnan(table)
        fill = np.nanmean(table) if (~missing).any() else 0.0
        how[c] = (f"dense per domain; {int(missing.sum())} of {missing.size} (domain, key) pairs missing, "
                  f"filled with the mean")
        out[c] = np.where(missing, fill, table)
    return out, raw, how


def _candidates(spec, user_col: str, dcol: str, all_domains: list[str], kept: list[str],
                parts: dict, meta: dict) -> dict[str, RawCandidates]:
    src = read_source(spec, "candidate", {user_col, dcol, "items", "split"})
    src.require(user_col, "the user column, named like --user-col")
    src.require("items", "the candidate items, comma-separated")
    if len(src) == 0:
        raise ValueError(f"{src.label}: no rows")
    t, where = src.table, src.where
    users = text_keys(t[user_col], user_col, where)
    if dcol in t.column_names:
        names = text_keys(t[dcol], dcol, where)
    elif len(kept) == 1:
        names = np.full(len(users), kept[0], dtype=object)
    else:
        raise ValueError(f"{src.label}: no column {dcol!r}; with {len(kept)} domains each candidate list needs "
                         f"its domain; columns found: {t.column_names}")
    unknown = sorted(set(names.tolist()) - set(all_domains))
    if unknown:
        i = int(np.flatnonzero(names == unknown[0])[0])
        raise ValueError(f"{where(i)}: unknown domain {unknown[0]!r}; known domains: {all_domains}")
    default_split = "test" if len(parts["test"]) else "valid"
    if "split" in t.column_names:
        splits = np.array([("" if x is None else str(x)).strip().lower() for x in plain(t["split"]).to_pylist()],
                          dtype=object)
        bad = ~np.isin(splits, ["valid", "test"])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where(i)}: column 'split' holds {splits[i]!r}; candidate lists are for valid or test")
    else:
        splits = np.full(len(users), default_split, dtype=object)
    items_col = plain(t["items"])
    if pa.types.is_list(items_col.type) or pa.types.is_large_list(items_col.type):
        lists = [[str(x) for x in (v or [])] for v in items_col.to_pylist()]
    else:
        lists = [[x.strip() for x in (v or "").split(",")] for v in items_col.to_pylist()]
    for i, lst in enumerate(lists):
        if not lst or "" in lst:
            raise ValueError(f"{where(i)}: column 'items' has an empty candidate (or no candidates); expected "
                             f"comma-separated item ids")
    dom_index = {d: j for j, d in enumerate(kept)}
    d = np.array([dom_index.get(x, -1) for x in names.tolist()], np.int64)
    out = {}
    info = {}
    for split in ("valid", "test"):
        m = (splits == split) & (d >= 0)
        if not m.any():
            continue
        rows = np.flatnonzero(m)
        key = np.char.add(np.char.add(users[rows].astype(str), "\x1f"), d[rows].astype(str))
        _, first, counts = np.unique(key, return_index=True, return_counts=True)
        if np.any(counts > 1):
            j = rows[first[np.flatnonzero(counts > 1)[0]]]
            raise ValueError(f"{where(int(j))}: user {users[j]!r} has more than one {split} candidate list in "
                             f"domain {names[j]!r}")
        held = parts[split]
        if len(held) == 0:
            raise ValueError(f"{src.label}: candidate lists for the {split} split, which is empty")
        qkey = np.char.add(np.char.add(held.user.astype(str), "\x1f"), held.domain.astype(str))
        have = np.isin(qkey, key)
        if not have.all():
            lacking = np.unique(qkey[~have])
            pairs = [k.split("\x1f") for k in lacking[:3].tolist()]
            examples = ", ".join(f"{u!r} in {kept[int(d)]!r}" for u, d in pairs)
            raise ValueError(f"{src.label}: {len(lacking)} {split} queries (user, domain) have no candidate list "
                             f"(e.g. {examples}); the sampled protocol ranks each query's list")
        listed = {k: set(lists[r]) for k, r in zip(key.tolist(), rows.tolist(), strict=True)}
        missed = sum(1 for k, it in zip(qkey.tolist(), held.item.tolist(), strict=True) if str(it) not in listed[k])
        if missed:
            note(meta, f"{missed} of {len(held)} {split} interactions are not in their query's candidate list; "
                       f"they count as misses in the sampled protocol")
        out[split] = RawCandidates(users[rows], d[rows], [lists[r] for r in rows])
        info[split] = int(len(rows))
    count(meta, "candidate_lists_outside_domains", int((d < 0).sum()))
    meta["candidates"] = info
    return out
