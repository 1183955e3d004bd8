"""How to load a data set: :class:`DataSpec`, the arguments of
:func:`adirec.data.sources.load_source`, recorded in every run so the run can load its data again."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from adirec.data.dataset import MultiDomainData
from adirec.options import option


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@dataclass
class DataSpec:
    """The source and the options that shape it (see README, Data sources). An option a source
    does not use is an error when set (e.g. ``--positive`` with ``xmrec:``), never ignored."""

    source: str = option(help="xmrec:DIR | recbole:DIR/PREFIX | table:PATH | parquet:DIR | synthetic[:PRESET]",
                         flag="--data", metavar="SRC")
    domains: list[str] | None = option(None, "comma-separated domains to keep, in this order (xmrec markets, "
                                       "recbole and table domains); other rows are dropped before the split",
                                       parse=_csv, metavar="D1,D2,...")
    domain_by: str | None = option(None, "domain from a user or item attribute (recbole, table): "
                                   "user.age:25,35 (bucket edges) or item.genre (first token); none = one domain 'all'",
                                   metavar="RULE")
    positive: str | None = option(None, "rows that are interactions, e.g. 'rating>=4' (quote it in a shell); "
                                  "recbole default rating>=4, table default every row", metavar="EXPR")
    split: str | None = option(None, "held-out rule (recbole, table): last (leave-last-out per user, default) | "
                               "last-per-domain | time:CUTOFF[,CUTOFF2] (ISO 8601 or epoch) | column:NAME",
                               metavar="RULE")
    row_order: bool = option(False, "without a time column, take the file's row order as time "
                             "(leave-last-out, histories)")
    user_col: str | None = option(None, "table: column of user ids", metavar="COL")
    item_col: str | None = option(None, "table: column of item ids", metavar="COL")
    domain_col: str | None = option(None, "table: column of each row's domain (scenario, tab, market)",
                                    metavar="COL")
    time_col: str | None = option(None, "table: column of times (epoch numbers or ISO 8601)", metavar="COL")
    weight_col: str | None = option(None, "table: column of sample weights (>= 0; 0 drops the row)",
                                    metavar="COL")
    user_features: str | None = option(None, "table: user feature table (CSV/TSV/Parquet, keyed by the user "
                                       "column)", metavar="FILE")
    item_features: str | None = option(None, "table: item feature table (keyed by the item column)", metavar="FILE")
    user_domain_features: str | None = option(None, "table: numbers per (user, domain)", metavar="FILE")
    item_domain_features: str | None = option(None, "table: numbers per (item, domain)", metavar="FILE")
    feature_types: str | None = option(None, "JSON {column: categorical|sequence|dense|skip} overriding how "
                                       "feature columns are typed (recbole, table)", metavar="FILE")
    candidates: str | None = option(None, "table: candidate lists for the sampled protocol (columns: user, "
                                    "domain, items, optional split)", metavar="FILE")
    seed: int = option(0, "seed of a synthetic data set", flag="--data-seed")
    history_len: int = option(50, "length of behaviour histories")

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError(f"DataSpec.source must name a source (e.g. xmrec:DIR), got {self.source!r}")
        if self.history_len < 1:
            raise ValueError(f"DataSpec.history_len must be >= 1, got {self.history_len}")
        if self.domains is not None:
            self.domains = list(self.domains)

    def options(self) -> dict:
        """Every field but ``source``: the keyword arguments of ``load_source``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "source"}

    def load(self) -> MultiDomainData:
        from adirec.data.sources import load_source
        return load_source(self.source, **self.options())
