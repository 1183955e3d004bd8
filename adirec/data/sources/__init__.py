"""Data sources addressed as ``KIND:LOCATION`` (``xmrec:DIR``, ``recbole:DIR/PREFIX``,
``table:PATH``, ``synthetic[:PRESET]``, ``parquet:DIR``).

Each kind takes some of the :class:`~adirec.data.spec.DataSpec` options; setting one that a kind
does not use is an error, so that no option is silently ignored.
"""
from __future__ import annotations

from adirec.data.dataset import MultiDomainData

KINDS = ("xmrec", "recbole", "table", "synthetic", "parquet")

_TABLE_OPTIONS = ("domains", "domain_by", "positive", "split", "row_order", "user_col", "item_col",
                  "domain_col", "time_col", "weight_col", "user_features", "item_features",
                  "user_domain_features", "item_domain_features", "feature_types", "candidates")
#: the options each kind uses (besides history_len, which every kind uses)
USES = {
    "xmrec": ("domains",),
    "recbole": ("domains", "domain_by", "positive", "split", "row_order", "feature_types"),
    "table": _TABLE_OPTIONS,
    "synthetic": ("domains", "seed"),
    "parquet": (),
}


def _defaults() -> dict:
    import dataclasses
    from adirec.data.spec import DataSpec
    return {f.name: f.default for f in dataclasses.fields(DataSpec) if f.name != "source"}


def check_options(kind: str, spec: str, options: dict) -> dict:
    """Options as keyword arguments for ``kind``'s loader; an unknown option or a set one the kind
    does not use is an error."""
    from adirec.data.spec import DataSpec
    from adirec.options import option_flags
    defaults = _defaults()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"load_source: unknown option(s) {unknown}; options: {sorted(defaults)}")
    flags = option_flags(DataSpec)
    unused = [k for k, v in options.items()
              if k != "history_len" and k not in USES[kind] and v is not None and v != defaults[k]]
    if unused:
        hint = ("they apply when converting (adirec data convert)" if kind == "parquet"
                else "see README, Data sources")
        verb = "does" if len(unused) == 1 else "do"
        raise ValueError(f"{spec}: {', '.join(flags[k] for k in unused)} {verb} not apply to {kind} sources; {hint}")
    merged = defaults | options
    return {k: merged[k] for k in (*USES[kind], "history_len")}


def load_source(spec: str, **options) -> MultiDomainData:
    """Load the data set named by ``spec`` with :class:`~adirec.data.spec.DataSpec` options
    (``domains``, ``domain_by``, ``positive``, ``split``, ``user_col``, ..., ``history_len``);
    see the module docstring for the forms."""
    kind, _, location = spec.partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown data source kind {kind!r} in {spec!r}; expected one of "
                         f"{', '.join(k + ':...' for k in KINDS)}")
    opts = check_options(kind, spec, options)
    if kind == "xmrec":
        from adirec.data.sources.xmrec import load_xmrec
        if not location:
            raise ValueError("xmrec source needs a directory: xmrec:DIR")
        return load_xmrec(location, opts["domains"], history_len=opts["history_len"])
    if kind == "recbole":
        from adirec.data.sources.recbole import load_recbole
        if not location:
            raise ValueError("recbole source needs a path prefix: recbole:DIR/PREFIX")
        return load_recbole(location, **(opts | {"positive": opts["positive"] or "rating>=4"}))
    if kind == "table":
        from adirec.data.sources.table import load_table
        if not location:
            raise ValueError("table source needs a file or folder: table:PATH")
        return load_table(location, **opts)
    if kind == "synthetic":
        from adirec.data.sources.synthetic import load_synthetic
        return load_synthetic(location or "default", **opts)
    from adirec.data.parquet import load_parquet  # a layout written by `adirec data convert`
    if not location:
        raise ValueError("parquet source needs a layout directory: parquet:DIR")
    return load_parquet(location, **opts)
