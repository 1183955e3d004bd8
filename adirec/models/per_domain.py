"""DNN-Single: one two-tower model per domain, each trained only on its own domain.

:class:`PerDomainModel` holds D one-domain :class:`TwoTowerModel` s behind the two-tower
interface (``user_embedding`` / ``item_embedding`` / ``score`` / ``num_parameters``): the rows of
a batch are routed to the sub-model of their domain. :func:`adirec.data.split.restrict_to_domain`
cuts a multi-domain data set down to one domain, and :func:`adirec.train.per_domain.fit_per_domain`
trains every sub-model with the ordinary trainer on its own domain's data only.

A sub-model never sees another domain, not even through features: in its one-domain data set a
user's whole behaviour history (``hist_all``) is the history in that domain, so the routed rows
get ``hist_domain`` (the history in the row's domain, from the full data's feature store) in
place of ``hist_all``. That is exactly what the one-domain feature store produces, so the model
can be served and evaluated with the full data's :class:`~adirec.data.batches.FeatureStore`.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
import torch.nn as nn

from adirec.data.dataset import HIST_ALL, HIST_DOMAIN
from adirec.data.schema import Schema
from adirec.models.adi import TwoTowerModel
from adirec.models.config import TwoTowerConfig
from adirec.models.layers import domain_groups


class PerDomainModel(nn.Module):
    """D independent one-domain two-tower models; row b is served by the model of ``domain[b]``."""

    def __init__(self, schema: Schema, num_domains: int, config: TwoTowerConfig | None = None):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        names = {f.name for f in schema.fields}
        if HIST_ALL in names and HIST_DOMAIN not in names:
            raise ValueError(f"a per-domain model needs the {HIST_DOMAIN!r} field to give each "
                             f"sub-model its one-domain {HIST_ALL!r}; the schema has only {HIST_ALL!r}")
        self.config = (config or TwoTowerConfig()).validate()
        self.schema = schema
        self.num_domains = num_domains
        models = [TwoTowerModel(schema, 1, self.config) for _ in range(num_domains)]
        self.models = nn.ModuleList(models)
        self.vector_dim = models[0].vector_dim

    def _route(self, side: str, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        if domain.dim() != 1:
            raise ValueError(f"domain must have shape (B,), got {tuple(domain.shape)}")
        out = None
        for d, idx in domain_groups(domain, self.num_domains):
            part = {k: v[idx] for k, v in features.items()}
            if side == "user" and HIST_ALL in part:
                part[HIST_ALL] = part[HIST_DOMAIN]  # the sub-model's world is its domain alone
            model = cast(TwoTowerModel, self.models[d])
            only = torch.zeros_like(idx)  # each sub-model has a single domain, index 0
            emb = model.user_embedding(part, only) if side == "user" else model.item_embedding(part, only)
            if out is None:
                out = emb.new_empty(domain.shape[0], emb.shape[1])  # (B, O)
            out[idx] = emb  # (n_d, O)
        return out if out is not None else torch.empty(0, self.vector_dim, device=domain.device)

    def user_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return self._route("user", features, domain)  # (B, O)

    def item_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return self._route("item", features, domain)  # (B, O)

    score = staticmethod(TwoTowerModel.score)

    def forward(
        self, features: dict[str, torch.Tensor], domain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding(features, domain), self.item_embedding(features, domain)

    def num_parameters(self) -> int:
        return sum(m.num_parameters() for m in cast(Iterable[TwoTowerModel], self.models))
