"""RecBole atomic files: ``PREFIX.inter`` (required), ``PREFIX.user`` and ``PREFIX.item`` (optional).

Headers are ``name:type`` with type ``token``, ``token_seq``, ``float`` or ``float_seq``; files
may start with a UTF-8 byte-order mark and end lines with CRLF. The interactions go through the
steps of :mod:`adirec.data.sources.rows`: positives from a rule such as ``rating>=4`` (the
default); domains from a rule on a user or item field (``user.age:25,35`` = buckets (-inf,
25), [25, 35), [35, inf) of a numeric field; ``item.genre`` = one domain per value, the first
token of a list), or one domain ``all`` without a rule; every key of the interactions must have
a row in the rule's file; ``--domains`` keeps some domains before the split; duplicates collapse;
the split is leave-last-out per user on (timestamp, item id) unless ``--split`` says otherwise.
Without a ``timestamp`` column there is no order: leave-last-out then needs ``--row-order``
(the file's row order as time).

Feature columns of ``.user`` and ``.item`` become fields by their declared type and the rules of
:mod:`adirec.data.sources.columns` (a feature-types file may override them); the ``--domain-by``
field of a per-value rule is the domain itself and is not a feature.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from adirec.data.build import RawTable, build_dataset
from adirec.data.dataset import MultiDomainData
from adirec.data.sources.columns import (
    check_unique_keys, feature_columns, numbers, read_feature_types, text_keys, times,
)
from adirec.data.sources.rows import (
    ONE_DOMAIN, Rows, SplitRule, attribute_domains, count, keep_domains, lookup_domains,
    parse_domain_rule, parse_positive, positive_mask, split_labels, split_rows,
)

TYPES = ("token", "token_seq", "float", "float_seq")


def read_atomic(path: Path) -> tuple[pa.Table, dict[str, str]]:
    """Read one atomic file; returns the table (all strings) and ``{column: declared type}``."""
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    with open(path, encoding="utf-8-sig") as fh:  # -sig: a byte-order mark is not part of the name
        header = fh.readline().rstrip("\r\n").split("\t")
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


def _where(path: Path):
    return lambda i: f"{path} line {i + 2}"


def load_recbole(prefix: str | Path, *, domain_by: str | None = None, positive: str = "rating>=4",
                 domains: list[str] | None = None, split: str | None = None, row_order: bool = False,
                 feature_types: str | Path | dict | None = None, history_len: int = 50) -> MultiDomainData:
    """Load ``PREFIX.inter`` (+ ``.user``, ``.item``); see the module docstring for the rules."""
    prefix = Path(prefix)
    rule = SplitRule.parse(split)
    kinds = read_feature_types(feature_types)
    pfield, _, _ = parse_positive(positive)
    inter_path = prefix.with_name(prefix.name + ".inter")
    inter, itypes = read_atomic(inter_path)
    where = _where(inter_path)
    for req in ("user_id", "item_id"):
        if req not in itypes:
            raise ValueError(f"{inter_path}: missing column {req!r}; found {list(itypes)}")
    if pfield not in itypes:
        raise ValueError(f"{inter_path}: positive rule names column {pfield!r}, which is missing; found {list(itypes)}")
    if rule.kind == "column" and rule.column not in itypes:
        raise ValueError(f"{inter_path}: --split {rule.text} names column {rule.column!r}, which is missing; "
                         f"found {list(itypes)}")
    if inter.num_rows == 0:
        raise ValueError(f"{inter_path}: no interactions")
    meta: dict = {"source": "recbole", "location": str(prefix), "domain_by": domain_by, "positive": positive}
    n = inter.num_rows
    count(meta, "read", n)
    if "timestamp" in itypes:
        ts, time_kind = times(inter["timestamp"], "timestamp", where)
        meta["order"] = "the timestamp column, then item id"
    elif row_order:
        ts, time_kind, meta["order"] = np.arange(n, dtype=np.int64), "rows", "the file's row order (--row-order)"
    else:
        ts, time_kind, meta["order"] = None, None, "none (no timestamp column)"
    label_col = rule.column if rule.kind == "column" else None
    rows = Rows(text_keys(inter["user_id"], "user_id", where), text_keys(inter["item_id"], "item_id", where),
                np.zeros(n, np.int64), np.ones(n, np.float32), ts, np.arange(n, dtype=np.int64),
                split_labels(inter[label_col], label_col, where) if label_col else None)
    positive_rows = positive_mask(numbers(inter[pfield], pfield, where), positive)
    count(meta, "not_positive", int((~positive_rows).sum()))
    rows = rows.take(np.flatnonzero(positive_rows))
    if len(rows) == 0:
        raise ValueError(f"{inter_path}: no positive interactions under rule {positive!r}")

    tables = {}
    for s in ("user", "item"):
        path = prefix.with_name(f"{prefix.name}.{s}")
        if path.is_file():
            table, typs = read_atomic(path)
            if f"{s}_id" not in typs:
                raise ValueError(f"{path}: missing column {s + '_id'!r}; found {list(typs)}")
            keys = text_keys(table[f"{s}_id"], f"{s}_id", _where(path))
            check_unique_keys(keys, f"{s}_id", _where(path))
            tables[s] = (table, typs, keys, path)
    skip: dict[str, set[str]] = {"user": set(), "item": set()}
    if domain_by is None:
        names, rule_text = [ONE_DOMAIN], "no --domain-by rule (one domain)"
    else:
        side, dfield, edges = parse_domain_rule(domain_by)
        if side not in tables:
            raise ValueError(f"domain rule {domain_by!r} needs {prefix.name}.{side}, which is missing")
        table, typs, keys, path = tables[side]
        if dfield not in typs:
            raise ValueError(f"{path}: domain rule names column {dfield!r}, which is missing; found {list(typs)}")
        names, dom_of_key = attribute_domains(keys, table[dfield], attribute=dfield, edges=edges, where=_where(path))
        rows.domain = lookup_domains(rows.user if side == "user" else rows.item, keys, dom_of_key, side=side,
                                     rows_what=str(inter_path), table_what=str(path), rule=domain_by)
        rule_text = f"--domain-by {domain_by}"
        if edges is None:
            skip[side].add(dfield)
    meta["domain_rule"] = rule_text
    rows, names = keep_domains(f"recbole:{prefix}", rows, names, domains, meta, rule=rule_text)
    parts = split_rows(f"recbole:{prefix}", rows, rule, meta, time_kind=time_kind, describe=where)
    if ts is None and rule.kind == "column":
        meta["order"] = "none (no timestamp column): histories list a user's items in item-id order"

    feature_tables, how = {}, {}
    for s, (table, typs, keys, path) in tables.items():
        cols, how[s] = feature_columns(table, typs, key=f"{s}_id", where=_where(path), kinds=kinds, skip=skip[s])
        feature_tables[s] = RawTable(keys, cols)
    meta["features"] = how
    by_user = domain_by is not None and domain_by.strip().startswith("user.")
    return build_dataset(
        f"recbole:{prefix}", names, parts["train"], parts["valid"], parts["test"],
        users=feature_tables.get("user"), items=feature_tables.get("item"),
        history_len=history_len, corpus="all" if by_user else "domain", meta=meta,
    )
