"""Several trained two-tower models served as one: an ensemble that is still one inner product.

Member k gives user vectors ``u_k`` and item vectors ``v_k``; the ensemble's vectors are the
concatenations ``[w_1 u_1, ..., w_K u_K]`` and ``[v_1, ..., v_K]``, so that its score is
``sum_k w_k <u_k, v_k>``: the weighted sum of the members' scores, retrievable by one inner
product (one FAISS index per domain, as for any model). Members are typically the same preset
trained with different seeds; they must have been trained on the same data.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn as nn

from adirec.models.adi import TwoTowerModel
from adirec.models.per_domain import PerDomainModel

#: what an ensemble holds: the models the presets build
Member = TwoTowerModel | PerDomainModel


class EnsembleModel(nn.Module):
    """Members scored as one; see the module docstring."""

    weights: torch.Tensor  # (K,) buffer

    def __init__(self, members: Sequence[Member], weights: list[float] | None = None):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        if any(not (w >= 0.0) or w == float("inf") for w in weights) or sum(weights) <= 0:
            raise ValueError(f"ensemble weights must be finite, >= 0 and not all 0, got {weights}")
        domains = {m.num_domains for m in members}
        if len(domains) != 1:
            raise ValueError(f"ensemble members serve different numbers of domains: {sorted(domains)}")
        self.members = nn.ModuleList(members)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.num_domains = members[0].num_domains
        self.schema = members[0].schema
        self.vector_dim = sum(m.vector_dim for m in members)

    def user_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return torch.cat([w * m.user_embedding(features, domain)
                          for w, m in zip(self.weights, self._members(), strict=True)], dim=1)  # (B, sum O_k)

    def item_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.item_embedding(features, domain) for m in self._members()], dim=1)  # (B, sum O_k)

    @staticmethod
    def score(user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        return (user_emb * item_emb).sum(dim=-1)

    def num_parameters(self) -> int:
        return sum(m.num_parameters() for m in self._members())

    def _members(self) -> Iterable[Member]:
        return cast(Iterable[Member], self.members)  # an nn.ModuleList is typed as holding any module


#: the model of a run: a preset's model, or an ensemble of them
RunModel = TwoTowerModel | PerDomainModel | EnsembleModel
