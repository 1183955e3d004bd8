"""How to load a data set: :class:`DataSpec`, the arguments of
:func:`adirec.data.sources.load_source`, recorded in every run so the run can load its data again."""
from __future__ import annotations

from dataclasses import dataclass

from adirec.data.dataset import MultiDomainData
from adirec.options import option


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@dataclass
class DataSpec:
    """The source and the options that shape it (see README, Data sources)."""

    source: str = option(help="xmrec:DIR | recbole:DIR/PREFIX | parquet:DIR | synthetic[:PRESET]",
                         flag="--data", metavar="SRC")
    domains: list[str] | None = option(None, "comma-separated domains to keep (e.g. xmrec markets)", parse=_csv)
    domain_by: str | None = option(None, "RecBole domain rule, e.g. user.age:25,35 or item.genre")
    positive: str | None = option(None, "RecBole positive rule, e.g. 'rating>=4' (quote it in a shell)")
    seed: int = option(0, "seed of a synthetic data set", flag="--data-seed")
    history_len: int = option(50, "length of behaviour histories")

    def load(self) -> MultiDomainData:
        from adirec.data.sources import load_source
        return load_source(self.source, domains=self.domains, domain_by=self.domain_by,
                           positive=self.positive, seed=self.seed, history_len=self.history_len)
