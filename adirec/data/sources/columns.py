"""Columns of user files turned into numbers, times and typed feature columns, with errors that
name the file, the row and the column.

A *where* function describes row ``i`` of the table at hand for messages (``"ml.inter line 7"``,
``"events.parquet row 3"``); every reader hands one over with its table.

Feature columns are typed by the RecBole rules (a declared or inferred type first, then three
data-driven exceptions), unless a feature-types file names their kind:

* text (``token``) -> categorical; a text column with more distinct values than half its rows
  (titles, zip codes) identifies rows rather than describing them and is skipped; a text column
  of space-separated lists drawn from a small token set (``Animation Children's Comedy``) is a
  sequence;
* numbers (``float``) -> dense, missing values filled with the column mean; a column of at most
  :data:`CODE_MAX_DISTINCT` distinct whole numbers (an occupation code) is categorical;
* lists of text or whole numbers (``token_seq``) -> sequence (at most :data:`SEQ_MAX_LEN` tokens);
* lists of numbers (``float_seq``) of one length -> a dense vector.

A feature-types file is JSON ``{"column": "categorical" | "sequence" | "dense" | "skip"}``; it
applies to every feature table that has the column.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from adirec.data.build import RawColumn

CODE_MAX_DISTINCT = 32
SEQ_MAX_LEN = 8
FEATURE_KINDS = ("categorical", "sequence", "dense", "skip")

Where = Callable[[int], str]


def plain(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


# ------------------------------------------------------------------ numbers and times
def numbers(arr: pa.ChunkedArray | pa.Array, column: str, where: Where, *, allow_missing: bool = False
            ) -> np.ndarray:
    """float64 values of a numeric or numeric-text column; a value that is not a number, and a
    missing one unless ``allow_missing`` (then NaN), is an error naming its row."""
    a = plain(arr)
    if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        trimmed = pc.utf8_trim_whitespace(a)
        try:  # fast path; the loop below finds the row of a value that is not a number
            return numbers(pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, a.type), trimmed).cast(pa.float64()),
                           column, where, allow_missing=allow_missing)
        except pa.ArrowInvalid:
            pass
        text = a.to_pylist()
        out = np.empty(len(text), np.float64)
        for i, x in enumerate(text):
            s = (x or "").strip()
            if not s:
                out[i] = np.nan
                continue
            try:
                out[i] = float(s)
            except ValueError:
                raise ValueError(f"{where(i)}: column {column!r} holds {x!r}, which is not a number") from None
    elif pa.types.is_integer(a.type) or pa.types.is_floating(a.type) or pa.types.is_boolean(a.type) \
            or pa.types.is_null(a.type):
        out = a.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    else:
        raise ValueError(f"{where(0)}: column {column!r} has type {a.type}, not numbers")
    if not allow_missing and np.isnan(out).any():
        i = int(np.flatnonzero(np.isnan(out))[0])
        raise ValueError(f"{where(i)}: column {column!r} is empty or NaN; every row needs a number")
    return out


def parse_time_text(text: str) -> int:
    """Epoch seconds of an ISO 8601 time (``2024-01-31``, ``2024-01-31T12:00:00Z``, with an
    offset or fractional seconds); a time without a zone is taken as UTC."""
    t = datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(np.floor(t.timestamp()))


def times(arr: pa.ChunkedArray | pa.Array, column: str, where: Where) -> tuple[np.ndarray, str]:
    """int64 times of a column and how they were read: ``"numbers"`` (epoch numbers, taken in the
    file's own unit) or ``"iso"`` (ISO 8601 text, Arrow timestamps or dates, as epoch seconds).
    Fractions are dropped (times are whole numbers; equal times are ordered by item id)."""
    a = plain(arr)
    if a.null_count:
        i = int(np.flatnonzero(a.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{where(i)}: column {column!r} (time) is empty; every row needs a time")
    if pa.types.is_timestamp(a.type) or pa.types.is_date(a.type):
        tz = a.type.tz if pa.types.is_timestamp(a.type) else None
        secs = a.cast(pa.timestamp("s", tz=tz), safe=False).cast(pa.int64())
        return secs.to_numpy(zero_copy_only=False).astype(np.int64), "iso"
    if pa.types.is_integer(a.type):
        return a.cast(pa.int64()).to_numpy(zero_copy_only=False), "numbers"
    if pa.types.is_floating(a.type):
        v = a.to_numpy(zero_copy_only=False).astype(np.float64)
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{where(i)}: column {column!r} (time) holds {v[i]}, not a time")
        return np.floor(v).astype(np.int64), "numbers"
    if not (pa.types.is_string(a.type) or pa.types.is_large_string(a.type)):
        raise ValueError(f"{where(0)}: column {column!r} (time) has type {a.type}; expected epoch numbers "
                         f"or ISO 8601 times")
    try:
        return times(a.cast(pa.float64()), column, where)
    except pa.ArrowInvalid:
        pass  # not all numbers: ISO 8601 text (numbers mixed in are an error below)
    for target in (pa.timestamp("s"), pa.timestamp("s", tz="UTC")):  # fast paths: all without / all with zones
        try:
            return a.cast(target).cast(pa.int64()).to_numpy(zero_copy_only=False), "iso"
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    unique, inverse = np.unique(np.asarray(a.to_pylist(), dtype=object), return_inverse=True)
    secs = np.empty(len(unique), np.int64)
    is_number = np.zeros(len(unique), bool)
    for j, text in enumerate(unique):
        try:
            float(text)
            is_number[j] = True
            continue
        except ValueError:
            pass
        try:
            secs[j] = parse_time_text(text)
        except ValueError:
            i = int(np.flatnonzero(inverse == j)[0])
            raise ValueError(f"{where(i)}: column {column!r} holds {text!r}, which is neither an epoch "
                             f"number nor an ISO 8601 time (e.g. 2024-01-31 or 2024-01-31T12:00:00Z)") from None
    if is_number.any():
        i = int(np.flatnonzero(is_number[inverse])[0])
        raise ValueError(f"{where(i)}: column {column!r} holds the epoch number {a[i].as_py()!r} among ISO 8601 "
                         f"times; give every time in one form")
    return secs[inverse], "iso"


def text_keys(arr: pa.ChunkedArray | pa.Array, column: str, where: Where) -> np.ndarray:
    """Ids as text (object array); an empty id is an error naming its row. Whole numbers read
    as floats (``12.0``) are written as ``12``."""
    a = plain(arr)
    if pa.types.is_floating(a.type):
        v = a.to_numpy(zero_copy_only=False)
        if np.all(np.isnan(v) | (v == np.round(v))):
            a = pa.array(np.nan_to_num(v), mask=np.isnan(v)).cast(pa.int64())
    if not (pa.types.is_string(a.type) or pa.types.is_large_string(a.type)):
        try:
            a = a.cast(pa.string())
        except pa.ArrowNotImplementedError:
            raise ValueError(f"{where(0)}: column {column!r} has type {a.type}; ids must be text or numbers") from None
    empty = a.is_null()
    if pa.types.is_string(a.type):
        empty = pc.or_(empty, pc.equal(pc.utf8_trim_whitespace(a), ""))
    empty = empty.fill_null(True).to_numpy(zero_copy_only=False)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise ValueError(f"{where(i)}: column {column!r} is empty; every row needs an id")
    return np.asarray(a.to_pylist(), dtype=object)


def check_unique_keys(keys: np.ndarray, column: str, where: Where) -> None:
    """A feature table has one row per key: a repeated key is an error naming both rows."""
    _, first, counts = np.unique(keys.astype(str), return_index=True, return_counts=True)
    if np.any(counts > 1):
        j = int(np.flatnonzero(counts > 1)[0])
        dup = np.flatnonzero(keys.astype(str) == keys[first[j]])[:2]
        raise ValueError(f"{where(int(dup[1]))}: {column!r} {keys[dup[1]]!r} already has a row ({where(int(dup[0]))}); "
                         f"a feature table holds one row per key")


# ------------------------------------------------------------------ feature columns
def read_feature_types(path: str | Path | dict | None) -> dict[str, str]:
    """The ``{column: kind}`` of a feature-types JSON file (or dict); kinds in :data:`FEATURE_KINDS`."""
    if path is None:
        return {}
    if isinstance(path, dict):
        mapping, what = path, "feature types"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"feature-types file {p} does not exist")
        try:
            mapping = json.loads(p.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not JSON ({e}); expected {{\"column\": \"categorical\", ...}}") from None
        what = str(p)
    if not isinstance(mapping, dict):
        raise ValueError(f"{what}: expected a JSON object {{\"column\": kind}}, got {type(mapping).__name__}")
    bad = {k: v for k, v in mapping.items() if v not in FEATURE_KINDS}
    if bad:
        raise ValueError(f"{what}: unknown kinds {bad}; each column's kind is one of {list(FEATURE_KINDS)}")
    return dict(mapping)


def inferred_type(t: pa.DataType) -> str | None:
    """The RecBole type a column of Arrow type ``t`` stands for (None: not a feature type)."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_boolean(t) \
            or pa.types.is_dictionary(t):
        return "token"
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t):
        return "float"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = t.value_type
        return "float_seq" if pa.types.is_floating(inner) else "token_seq"
    return None


def _token_values(a: pa.Array) -> np.ndarray:
    """Object array of text values, "" for missing."""
    if pa.types.is_dictionary(a.type):
        a = a.cast(a.type.value_type)
    if pa.types.is_floating(a.type):
        v = a.to_numpy(zero_copy_only=False)
        text = [("" if np.isnan(x) else (str(int(x)) if x == int(x) else repr(float(x)))) for x in v]
        return np.asarray(text, dtype=object)
    return np.asarray(["" if x is None else str(x) for x in a.to_pylist()], dtype=object)


def _missing_as_none(tokens: np.ndarray) -> np.ndarray:
    """Copy of the object array ``tokens`` with its missing values ("") as None."""
    out = tokens.astype(object)
    out[tokens == ""] = None
    return out


def _sequences(a: pa.Array) -> list[list[str]]:
    if pa.types.is_list(a.type) or pa.types.is_large_list(a.type) or pa.types.is_fixed_size_list(a.type):
        return [[str(x) for x in (v or []) if x is not None] for v in a.to_pylist()]
    return [s.split() for s in _token_values(a)]


def _vectors(a: pa.Array, column: str, where: Where) -> np.ndarray:
    if pa.types.is_list(a.type) or pa.types.is_large_list(a.type) or pa.types.is_fixed_size_list(a.type):
        rows = a.to_pylist()
    else:
        rows = [s.split() for s in _token_values(a)]
    lengths = {len(r or []) for r in rows}
    if len(lengths) != 1 or 0 in lengths:
        i = next(j for j, r in enumerate(rows) if len(r or []) != len(rows[0] or []) or not r)
        raise ValueError(f"{where(i)}: column {column!r} holds number lists of different lengths (or an empty "
                         f"one); a dense vector needs one length (mark the column \"skip\" in a feature-types file)")
    try:
        return np.array([[float(x) for x in r] for r in rows], dtype=np.float64)
    except (TypeError, ValueError):
        i = next(j for j, r in enumerate(rows) if not all(_is_number(x) for x in r))
        raise ValueError(f"{where(i)}: column {column!r} holds {rows[i]!r}, not a list of numbers") from None


def _is_number(x) -> bool:
    try:
        float(x)
        return x is not None
    except (TypeError, ValueError):
        return False


def _dense(values: np.ndarray, column: str, how: dict) -> RawColumn:
    finite = np.isfinite(values)
    if not finite.all():
        how[column] += f", {int((~finite).sum())} missing values filled with the mean"
        fill = values[finite].mean() if finite.any() else 0.0
        values = np.where(finite, values, fill)
    return RawColumn("dense", values)


def feature_columns(table: pa.Table, declared: Mapping[str, str | None], *, key: str | tuple[str, ...], where: Where,
                    kinds: dict[str, str] | None = None, skip: Collection[str] = frozenset()
                    ) -> tuple[dict[str, RawColumn], dict[str, str]]:
    """Typed feature columns of ``table`` (every column but ``key`` and ``skip``) and how each
    was typed (``{"age": "categorical (whole-number codes)", "zip": "skipped: ..."}``).

    ``declared`` gives each column's RecBole type (``token``, ``token_seq``, ``float``,
    ``float_seq``); ``kinds`` (a feature-types file) overrides it with a kind of
    :data:`FEATURE_KINDS`."""
    keys = {key} if isinstance(key, str) else set(key)
    kinds = kinds or {}
    cols: dict[str, RawColumn] = {}
    how: dict[str, str] = {}
    n = table.num_rows
    for name in table.column_names:
        if name in keys or name in skip:
            continue
        a = plain(table[name])
        kind, typ = kinds.get(name), declared.get(name)
        if kind == "skip":
            how[name] = "skipped (feature-types file)"
            continue
        if kind == "categorical":
            raw = _token_values(a)
            cols[name] = RawColumn("categorical", _missing_as_none(raw))
            how[name] = "categorical (feature-types file)"
        elif kind == "sequence":
            cols[name] = RawColumn("sequence", _sequences(a), max_len=SEQ_MAX_LEN)
            how[name] = "sequence (feature-types file)"
        elif kind == "dense":
            how[name] = "dense (feature-types file)"
            if typ == "float_seq" or inferred_type(a.type) == "float_seq":
                cols[name] = RawColumn("dense", _vectors(a, name, where))
            else:
                cols[name] = _dense(numbers(a, name, where, allow_missing=True), name, how)
        elif typ == "token":
            raw = _token_values(a)
            distinct = set(raw.tolist())
            if len(distinct) > n / 2 and n > 1:
                how[name] = "skipped: nearly one value per row (an identifier, not a feature)"
                continue
            tokens = {t for v in distinct for t in v.split()}
            if any(" " in v for v in distinct) and len(tokens) < len(distinct) / 2:
                cols[name] = RawColumn("sequence", [s.split() for s in raw], max_len=SEQ_MAX_LEN)
                how[name] = "sequence (space-separated tokens)"
            else:
                cols[name] = RawColumn("categorical", _missing_as_none(raw))
                how[name] = "categorical (text)"
        elif typ == "token_seq":
            cols[name] = RawColumn("sequence", _sequences(a), max_len=SEQ_MAX_LEN)
            how[name] = "sequence"
        elif typ == "float":
            vals = numbers(a, name, where, allow_missing=True)
            finite = vals[np.isfinite(vals)]
            if len(finite) and np.all(finite == np.round(finite)) and len(np.unique(finite)) <= CODE_MAX_DISTINCT:
                cols[name] = RawColumn("categorical", np.array(
                    [None if not np.isfinite(v) else int(v) for v in vals], dtype=object))
                how[name] = "categorical (whole-number codes)"
            else:
                how[name] = "dense"
                cols[name] = _dense(vals, name, how)
        elif typ == "float_seq":
            cols[name] = RawColumn("dense", _vectors(a, name, where))
            how[name] = "dense (number list)"
        else:
            raise ValueError(f"{where(0)}: feature column {name!r} has type {a.type}, which is not text, "
                             f"numbers or lists; mark it \"skip\" in a feature-types file")
    return cols, how
