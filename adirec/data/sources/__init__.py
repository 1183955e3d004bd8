"""Data sources addressed as ``KIND:LOCATION`` (``xmrec:DIR``, ``recbole:DIR/PREFIX``,
``synthetic[:PRESET]``, ``parquet:DIR``)."""
from __future__ import annotations

from adirec.data.dataset import MultiDomainData

KINDS = ("xmrec", "recbole", "synthetic", "parquet")


def load_source(spec: str, *, domains: list[str] | None = None, domain_by: str | None = None,
                positive: str | None = None, seed: int = 0, history_len: int = 50) -> MultiDomainData:
    """Load the data set named by ``spec``; see the module docstring for the forms."""
    kind, _, location = spec.partition(":")
    if kind == "xmrec":
        from adirec.data.sources.xmrec import load_xmrec
        if not location:
            raise ValueError("xmrec source needs a directory: xmrec:DIR")
        return load_xmrec(location, domains, history_len=history_len)
    if kind == "recbole":
        from adirec.data.sources.recbole import load_recbole
        if not location:
            raise ValueError("recbole source needs a path prefix: recbole:DIR/PREFIX")
        return load_recbole(location, domain_by=domain_by, positive=positive or "rating>=4",
                            history_len=history_len)
    if kind == "synthetic":
        from adirec.data.sources.synthetic import load_synthetic
        return load_synthetic(location or "default", seed=seed, history_len=history_len)
    if kind == "parquet":  # a layout written by `adirec data convert`
        from adirec.data.parquet import load_parquet
        if not location:
            raise ValueError("parquet source needs a layout directory: parquet:DIR")
        if domains or domain_by or positive:
            raise ValueError("parquet:DIR holds a converted data set: --domains, --domain-by and "
                             "--positive apply when converting (adirec data convert)")
        return load_parquet(location, history_len=history_len)
    raise ValueError(f"unknown data source kind {kind!r} in {spec!r}; expected one of "
                     f"{', '.join(k + ':...' for k in KINDS)}")
