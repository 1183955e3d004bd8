"""Interaction rows on their way from a file to :func:`~adirec.data.build.build_dataset`:
positives, domains, duplicates and the held-out split, one set of rules for the RecBole and
table sources (XMRec, whose split comes with the files, shares the duplicate rule).

The steps, in order; each one's outcome is recorded in the data set's ``meta`` (``adirec data
inspect`` prints it) and anything that drops or merges rows also warns (:class:`DataWarning`):

1. positives: rows failing the ``--positive`` rule (``rating>=4``) or with weight 0 are dropped;
2. domains: each row gets a domain from an interaction column, a user or item attribute
   (``--domain-by``; every key of the interactions must have a row in the attribute's table),
   or one domain named ``all``. ``--domains a,b`` keeps those domains, in that order (an unknown
   name is an error listing the known ones) and drops the other rows *before* the split;
3. duplicates: rows identical in (user, item, domain, time) are one event and collapse into one
   row, keeping the largest weight. Repeats at different times are kept as repeated
   consumption. Without a time column every repeat of (user, item, domain) collapses; with
   ``--row-order`` each row's time is its row number, so no two rows are identical;
4. split (``--split``, see :class:`SplitRule`): leave-last-out per user (default) or per (user,
   domain) on (time, item id), time cutoffs, or a split column of the file. Leave-last-out and
   cutoffs need an order: a time column, or ``--row-order``; nothing is split by item-id order;
5. held-out rows (valid, test) of users without training rows are dropped (they have no
   learned representation); held-out items never seen in training are kept and count as
   misses, and their number is recorded.
"""
from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from adirec.data.build import RawInteractions, Vocabulary, check_domain_count, note
from adirec.data.sources.columns import numbers, parse_time_text, plain

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
ONE_DOMAIN = "all"
#: epoch numbers above this are milliseconds (or finer), not seconds (1e11 s is the year 5138)
_SECONDS_MAX = 1e11
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
        "==": operator.eq, "!=": operator.ne}


# ------------------------------------------------------------------ rules
def parse_positive(rule: str) -> tuple[str, Callable, float]:
    """``FIELD OP NUMBER`` (``rating>=4``) -> (field, comparison, threshold)."""
    m = re.fullmatch(r"\s*([\w.-]+)\s*(>=|<=|==|!=|>|<)\s*([-+0-9.eE]+)\s*", rule)
    if not m:
        raise ValueError(f"positive rule {rule!r} is not FIELD OP NUMBER (e.g. rating>=4)")
    try:
        threshold = float(m.group(3))
    except ValueError:
        raise ValueError(f"positive rule {rule!r}: {m.group(3)!r} is not a number") from None
    return m.group(1), _OPS[m.group(2)], threshold


def parse_domain_rule(rule: str) -> tuple[str, str, list[float] | None]:
    """``user.age:25,35`` (bucket edges of a numeric attribute) or ``item.genre`` (one domain per
    value; the first token of a list) -> (side, attribute, edges or None)."""
    m = re.fullmatch(r"(user|item)\.([\w-]+)(?::([-+0-9.eE,\s]+))?", rule.strip())
    if not m:
        raise ValueError(f"domain rule {rule!r} is not SIDE.FIELD[:EDGE,EDGE,...] "
                         "(e.g. user.age:25,35 or item.genre)")
    edges = None
    if m.group(3):
        try:
            edges = [float(x) for x in m.group(3).split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"domain rule {rule!r}: bucket edges must be numbers") from None
        if sorted(edges) != edges or len(set(edges)) != len(edges):
            raise ValueError(f"domain rule {rule!r}: bucket edges must be strictly increasing")
    return m.group(1), m.group(2), edges


def bucket_names(field: str, edges: list[float]) -> list[str]:
    fmt = lambda x: f"{x:g}"  # noqa: E731
    names = [f"{field}<{fmt(edges[0])}"]
    names += [f"{field}[{fmt(a)},{fmt(b)})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return names + [f"{field}>={fmt(edges[-1])}"]


@dataclass(frozen=True)
class SplitRule:
    """How interactions are split into train / valid / test (``--split``):

    * ``last``: leave-last-out per user on (time, item id): the last positive -> test, the
      second last -> valid, the rest -> train; users with fewer than 3 keep all in train;
    * ``last-per-domain``: the same per (user, domain);
    * ``time:CUTOFF`` (``time:2024-01-01`` or an epoch number): before -> train, from it -> test
      (training then holds out its own validation rows); ``time:C1,C2``: before C1 -> train,
      [C1, C2) -> valid, from C2 -> test;
    * ``column:NAME``: the file's own column NAME with values train / valid / test.
    """

    kind: str
    cutoffs: tuple[str, ...] = ()
    column: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> SplitRule:
        text = (text or "last").strip()
        if text in ("last", "last-per-domain"):
            return cls(text)
        kind, sep, arg = text.partition(":")
        if kind == "time" and sep:
            cutoffs = tuple(x.strip() for x in arg.split(",") if x.strip())
            if len(cutoffs) in (1, 2):
                for c in cutoffs:
                    _cutoff_number(c)  # text that is neither a number nor a time fails here
                return cls("time", cutoffs=cutoffs)
        if kind == "column" and arg.strip():
            return cls("column", column=arg.strip())
        raise ValueError(f"split rule {text!r} is not one of: last, last-per-domain, time:CUTOFF[,CUTOFF2] "
                         f"(an ISO 8601 time or an epoch number), column:NAME")

    @property
    def text(self) -> str:
        if self.kind == "time":
            return "time:" + ",".join(self.cutoffs)
        if self.kind == "column":
            return f"column:{self.column}"
        return self.kind

    def describe(self) -> str:
        if self.kind in ("last", "last-per-domain"):
            per = "user" if self.kind == "last" else "(user, domain)"
            return (f"leave-last-out per {per} on (time, item id): last -> test, second last -> valid, "
                    f"the rest -> train ({per}s with fewer than 3 interactions keep all in train)")
        if self.kind == "time":
            if len(self.cutoffs) == 1:
                return f"time cutoff: before {self.cutoffs[0]} -> train, from it -> test"
            return (f"time cutoffs: before {self.cutoffs[0]} -> train, up to {self.cutoffs[1]} -> valid, "
                    f"from it -> test")
        return f"the split column {self.column!r} (train / valid / test)"


def _cutoff_number(text: str) -> tuple[int, bool]:
    """(value, whether it was an ISO 8601 time)."""
    try:
        return int(np.floor(float(text))), False
    except ValueError:
        pass
    try:
        return parse_time_text(text), True
    except ValueError:
        raise ValueError(f"split cutoff {text!r} is neither an epoch number nor an ISO 8601 time "
                         f"(e.g. 2024-01-31)") from None


def split_labels(arr: pa.ChunkedArray | pa.Array, column: str, where: Callable[[int], str]) -> np.ndarray:
    """int8 split codes of a split column (values train / valid / test, any case)."""
    values = [("" if x is None else str(x)).strip().lower() for x in plain(arr).to_pylist()]
    codes = np.empty(len(values), np.int8)
    for i, v in enumerate(values):
        if v not in SPLIT_CODES:
            raise ValueError(f"{where(i)}: split column {column!r} holds {v!r}; expected train, valid or test")
        codes[i] = SPLIT_CODES[v]
    return codes


# ------------------------------------------------------------------ rows
@dataclass
class Rows:
    """Interaction rows with raw keys; ``origin`` numbers each row in its source, for messages."""

    user: np.ndarray  # (n,) object, raw keys
    item: np.ndarray  # (n,) object
    domain: np.ndarray  # (n,) int64, index into the domain list
    weight: np.ndarray  # (n,) float32, > 0
    time: np.ndarray | None  # (n,) int64; None where the source has no order
    origin: np.ndarray  # (n,) int64
    label: np.ndarray | None = None  # (n,) int8 split codes of a split column

    def __len__(self) -> int:
        return len(self.user)

    def take(self, index: np.ndarray) -> Rows:
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Rows(self.user[index], self.item[index], self.domain[index], self.weight[index],
                    pick(self.time), self.origin[index], pick(self.label))


def count(meta: dict, key: str, n: int) -> None:
    meta.setdefault("rows", {})[key] = int(n)


def positive_mask(values: np.ndarray, rule: str) -> np.ndarray:
    _, op, threshold = parse_positive(rule)
    return op(values, threshold)


def attribute_domains(keys: np.ndarray, values: pa.ChunkedArray | pa.Array, *, attribute: str,
                      edges: list[float] | None, where: Callable[[int], str]) -> tuple[list[str], np.ndarray]:
    """(domain names, domain index of each key) of a ``--domain-by`` attribute: buckets of a
    numeric attribute, or one domain per value (the first token of a list; names sorted)."""
    if edges is not None:
        vals = numbers(values, attribute, where)
        return bucket_names(attribute, edges), np.searchsorted(np.asarray(edges), vals, side="right")
    a = plain(values)
    if pa.types.is_list(a.type) or pa.types.is_large_list(a.type):
        tokens = [str(v[0]) if v else "" for v in a.to_pylist()]
    else:
        tokens = [(str(v).split() or [""])[0] if v is not None else "" for v in a.to_pylist()]
    first = np.asarray(tokens, dtype=object)
    if np.any(first == ""):
        i = int(np.flatnonzero(first == "")[0])
        raise ValueError(f"{where(i)}: column {attribute!r} is empty (key {keys[i]!r}); --domain-by needs a "
                         f"value in every row")
    domains = sorted(set(first.tolist()))
    return domains, np.searchsorted(np.array(domains, dtype=object), first)


def lookup_domains(row_keys: np.ndarray, keys: np.ndarray, dom_of_key: np.ndarray, *, side: str,
                   rows_what: str, table_what: str, rule: str) -> np.ndarray:
    """Domain index of each row from its user's (item's) attribute; a key missing from the
    attribute table is an error giving the count and examples (its rows cannot be placed)."""
    vocab = Vocabulary(keys)
    code = vocab.encode(row_keys)
    if np.any(code == 0):
        missing = sorted({str(k) for k in row_keys[code == 0].tolist()})
        examples = ", ".join(repr(k) for k in missing[:5])
        raise ValueError(
            f"{len(missing)} of {len(np.unique(row_keys.astype(str)))} {side}s of {rows_what} (e.g. {examples}) "
            f"have no row in {table_what}, so --domain-by {rule} cannot place their "
            f"{int((code == 0).sum())} interactions in a domain; add those {side}s to {table_what} or remove "
            f"their interactions")
    by_code = np.empty(len(vocab), np.int64)
    by_code[vocab.encode(keys)] = dom_of_key
    return by_code[code]


def domain_remap(name: str, domains: list[str], wanted: list[str]) -> np.ndarray:
    """``--domains``: for every known domain index, its index among ``wanted`` (-1 when it is not
    kept); ValueError for an empty list, an unknown domain or a repeated one."""
    if not wanted:
        raise ValueError(f"{name}: --domains names no domain; known domains: {domains}")
    unknown = [d for d in wanted if d not in domains]
    if unknown:
        raise ValueError(f"{name}: unknown domains {unknown} (--domains); known domains: {domains}")
    if len(set(wanted)) != len(wanted):
        raise ValueError(f"{name}: --domains names a domain twice: {wanted}")
    remap = np.full(len(domains), -1, np.int64)
    for j, d in enumerate(wanted):
        remap[domains.index(d)] = j
    return remap


def keep_domains(name: str, rows: Rows, domains: list[str], wanted: list[str] | None, meta: dict,
                 *, rule: str) -> tuple[Rows, list[str]]:
    """Step 2: keep the ``wanted`` domains (all by default) in the order given; every kept
    domain must have interactions."""
    if wanted is not None:
        wanted = list(wanted)
        new_domain = domain_remap(name, domains, wanted)[rows.domain]
        kept = new_domain >= 0
        count(meta, "outside_domains", int((~kept).sum()))
        rows = rows.take(np.flatnonzero(kept))
        rows.domain = new_domain[kept]
        domains = wanted
    check_domain_count(len(domains), rule, meta)
    present = np.bincount(rows.domain, minlength=len(domains))
    empty = [domains[d] for d in np.flatnonzero(present == 0)]
    if empty:
        raise ValueError(f"{name}: domains {empty} have no interactions ({rule}); keep the others with "
                         f"--domains {','.join(d for d in domains if d not in empty)}")
    return rows, domains


def collapse_duplicates(rows: Rows, meta: dict, describe: Callable[[int], str]) -> Rows:
    """Step 3: one row per (user, item, domain, time), keeping the largest weight; the result is
    in the canonical order (user key, time, item key, domain)."""
    n = len(rows)
    u = Vocabulary(rows.user).encode(rows.user)
    i = Vocabulary(rows.item).encode(rows.item)
    t = rows.time if rows.time is not None else np.zeros(n, np.int64)
    order = np.lexsort((-rows.weight, rows.domain, i, t, u))  # the largest weight first in a group
    su, st, si, sd = u[order], t[order], i[order], rows.domain[order]
    first = np.ones(n, bool)
    first[1:] = (su[1:] != su[:-1]) | (st[1:] != st[:-1]) | (si[1:] != si[:-1]) | (sd[1:] != sd[:-1])
    collapsed = n - int(first.sum())
    count(meta, "duplicates_collapsed", collapsed)
    if collapsed and rows.label is not None:
        group = np.cumsum(first) - 1
        lab = rows.label[order]
        lo = np.minimum.reduceat(lab, np.flatnonzero(first))
        hi = np.maximum.reduceat(lab, np.flatnonzero(first))
        if np.any(lo != hi):
            g = int(np.flatnonzero(lo != hi)[0])
            a, b = order[np.flatnonzero(group == g)[:2]]
            raise ValueError(f"{describe(int(rows.origin[a]))} and {describe(int(rows.origin[b]))} are the same "
                             f"interaction (user, item, domain, time) in different splits of the split column; "
                             f"remove one of them")
    if collapsed:
        what = ("(user, item, domain, time); repeats at other times are kept" if rows.time is not None else
                "(user, item, domain), and without times repeats cannot be told apart")
        note(meta, f"{collapsed} duplicate interaction rows were merged into the row they repeat (the largest "
                   f"weight kept): same {what}")
    return rows.take(order[first])


def _cutoffs(rule: SplitRule, times: np.ndarray, time_kind: str | None, name: str) -> list[int]:
    values = []
    for text in rule.cutoffs:
        value, iso = _cutoff_number(text)
        if iso and time_kind == "numbers" and len(times) and times.max() > _SECONDS_MAX:
            raise ValueError(f"{name}: the time column holds epoch numbers up to {times.max()}, finer than "
                             f"seconds, and the cutoff {text!r} is a date; give the cutoff as an epoch number "
                             f"in the file's unit (--split time:NUMBER)")
        values.append(value)
    if len(values) == 2 and values[0] >= values[1]:
        raise ValueError(f"{name}: split cutoffs {rule.cutoffs} must increase")
    return values


def split_codes(name: str, rows: Rows, rule: SplitRule, time_kind: str | None) -> np.ndarray:
    """Step 4: the split code (0 train, 1 valid, 2 test) of every row."""
    if rule.kind == "column":
        assert rows.label is not None, "the sources read the split column of a column rule"
        return rows.label
    time = rows.time
    if time is None:  # the leave-last-out and time rules
        raise ValueError(
            f"{name}: --split {rule.text} needs the time of each interaction, and there is no time column; "
            f"give one (a table's --time-col COL, a RecBole file's timestamp:float column), split by a column "
            f"(--split column:NAME), or pass --row-order to take the file's row order as time")
    if rule.kind == "time":
        if time_kind == "rows":
            raise ValueError(f"{name}: --split {rule.text} needs real times; --row-order gives row numbers")
        cut = _cutoffs(rule, time, time_kind, name)
        if len(cut) == 1:
            return np.where(time >= cut[0], 2, 0).astype(np.int8)
        return (time >= cut[0]).astype(np.int8) + (time >= cut[1]).astype(np.int8)
    u = Vocabulary(rows.user).encode(rows.user)
    group = u if rule.kind == "last" else u * (int(rows.domain.max()) + 1) + rows.domain
    item_rank = Vocabulary(rows.item).encode(rows.item)
    order = np.lexsort((item_rank, time, group))
    g = group[order]
    end = np.flatnonzero(np.r_[g[1:] != g[:-1], True])  # last row of each group, in order
    sizes = np.diff(np.r_[-1, end])
    codes = np.zeros(len(rows), np.int8)
    big = end[sizes >= 3]
    codes[order[big]] = 2
    codes[order[big - 1]] = 1
    return codes


def split_rows(name: str, rows: Rows, rule: SplitRule, meta: dict, *, time_kind: str | None,
               describe: Callable[[int], str]) -> dict[str, RawInteractions]:
    """Steps 3 to 5 on rows that already have their domains: the raw train, valid and test rows."""
    rows = collapse_duplicates(rows, meta, describe)
    codes = split_codes(name, rows, rule, time_kind)
    train_users, train_items = Vocabulary(rows.user[codes == 0]), Vocabulary(rows.item[codes == 0])
    held = codes > 0
    unknown_user = held & (train_users.encode(rows.user) == 0)
    if unknown_user.any():
        note(meta, f"{int(unknown_user.sum())} held-out rows of {len(Vocabulary(rows.user[unknown_user])) - 1} "
                   f"users without training rows were dropped (a user needs training rows to be ranked for)")
    count(meta, "held_out_unknown_user_dropped", int(unknown_user.sum()))
    unknown_item = held & ~unknown_user & (train_items.encode(rows.item) == 0)
    count(meta, "held_out_unknown_item", int(unknown_item.sum()))
    if unknown_item.any():
        note(meta, f"{int(unknown_item.sum())} held-out rows name items never seen in training; they are kept "
                   f"and count as misses (no model can rank them)")
    codes = np.where(unknown_user, -1, codes)
    out = {}
    for split, code in SPLIT_CODES.items():
        m = codes == code
        ts = rows.time[m] if rows.time is not None else np.zeros(int(m.sum()), np.int64)
        out[split] = RawInteractions(rows.user[m], rows.item[m], rows.domain[m], rows.weight[m].astype(np.float32),
                                     ts.astype(np.int64))
    info: dict[str, str | int] = {"rule": rule.text, "description": rule.describe()}
    info |= {s: len(r) for s, r in out.items()}
    meta["split"] = info
    count(meta, "kept", sum(len(r) for r in out.values()))
    return out
