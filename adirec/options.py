"""One definition of each option: a config dataclass field declares its command-line flag and help.

Config dataclasses (:class:`~adirec.data.spec.DataSpec`, :class:`~adirec.models.config.TwoTowerConfig`,
:class:`~adirec.train.config.TrainConfig`, ...) declare their fields with :func:`option`; the
command line is generated from those declarations by :func:`add_options` and read back by
:func:`given_options`, so a field, its flag, its default and its help text live in one place.
A field declared with a plain default (no :func:`option`) has no flag; it can still be set with
``--set name=value`` (:func:`parse_set`).

This module imports nothing from adirec: every layer may use it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable
from typing import Any

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, help: str = "", *, flag: str | None = None,
           default_factory: Callable[[], Any] | None = None, choices: tuple | None = None,
           metavar: str | None = None, parse: Callable[[str], Any] | None = None) -> Any:
    """A dataclass field with a command-line flag.

    ``flag`` defaults to ``--field-name`` (underscores as dashes); ``parse`` turns the flag's text
    into the value (default: by the field's type: int, float, bool as ``--x/--no-x``,
    comma-separated tuples, or text); ``choices`` limits the values.
    """
    meta = {"help": help, "flag": flag, "choices": choices, "metavar": metavar, "parse": parse}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={"option": meta})
    return dataclasses.field(default=default, metadata={"option": meta})


def _base_type(tp) -> tuple[Any, bool]:
    """(the non-None part of a field's type, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return tp, False


def _parser_for(tp) -> Callable[[str], Any]:
    base, _ = _base_type(tp)
    origin = typing.get_origin(base)
    if origin in (tuple, list):
        (inner, *_) = typing.get_args(base) or (str,)
        conv = _parser_for(inner)

        def parse_seq(text: str):
            try:
                values = [conv(x.strip()) for x in text.split(",") if x.strip()]
            except (ValueError, argparse.ArgumentTypeError):
                raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}") from None
            return tuple(values) if origin is tuple else values
        return parse_seq
    if base is int:
        return int
    if base is float:
        return float
    return str


def _resolved_fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints.get(f.name, str)) for f in dataclasses.fields(cls)]


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls, *,
                dest_prefix: str = "", skip: tuple[str, ...] = (), defaults: dict | None = None) -> None:
    """Add a flag for every :func:`option` field of dataclass ``cls`` to ``parser``.

    Every flag defaults to None ("not given"), so that :func:`given_options` returns only what the
    user typed and the config keeps its own default; the help line shows that default (or the
    one in ``defaults``, e.g. a preset's).
    """
    defaults = defaults or {}
    for f, tp in _resolved_fields(cls):
        meta = f.metadata.get("option")
        if meta is None or f.name in skip:
            continue
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        if f.name in defaults:
            shown = defaults[f.name]
        elif f.default is not _MISSING:
            shown = f.default
        elif f.default_factory is not _MISSING:
            shown = f.default_factory()
        else:
            shown = None
        help_text = meta["help"]
        if shown is not None and shown != () and shown != "":
            help_text = f"{help_text} (default: {_show(shown)})" if help_text else f"default: {_show(shown)}"
        dest = dest_prefix + f.name
        base, _ = _base_type(tp)
        if base is bool and meta["parse"] is None:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text.replace("%", "%%"))
            continue
        metavar = meta["metavar"] or (None if meta["choices"] else f.name.upper())
        parser.add_argument(flag, dest=dest, type=meta["parse"] or _parser_for(tp), default=None,
                            choices=meta["choices"], metavar=metavar, help=help_text.replace("%", "%%"))


def _show(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return str(value)


def given_options(args: argparse.Namespace, cls, *, dest_prefix: str = "") -> dict:
    """The :func:`option` fields of ``cls`` that were given on the command line: ``{field: value}``."""
    out = {}
    for f, _ in _resolved_fields(cls):
        if "option" not in f.metadata:
            continue
        v = getattr(args, dest_prefix + f.name, None)
        if v is not None:
            out[f.name] = v
    return out


def option_flags(cls) -> dict[str, str]:
    """``{field: flag}`` of the :func:`option` fields of ``cls``."""
    return {f.name: f.metadata["option"]["flag"] or "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(cls) if "option" in f.metadata}


def coerce(cls, name: str, value: Any) -> Any:
    """``value`` (from ``--set`` or JSON) in the shape field ``name`` of ``cls`` holds: a single value
    where a tuple is declared becomes a 1-tuple, a list a tuple, an int a float."""
    hints = typing.get_type_hints(cls)
    base, _ = _base_type(hints.get(name, Any))
    if typing.get_origin(base) is tuple:
        return tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (``8``, ``true``, ``"sum"``, ``[256, 128]``) or, failing that, the
    plain text; comma-separated numbers become a tuple (``256,128``)."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        parts = text.split(",")
        if len(parts) > 1:
            try:
                return tuple(json.loads(p) for p in parts)
            except json.JSONDecodeError:
                return tuple(p.strip() for p in parts)
        return text
    return tuple(v) if isinstance(v, list) else v


def parse_set(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--set`` (KEY may be dotted: ``self_training.p0``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), parse_value(value.strip())
