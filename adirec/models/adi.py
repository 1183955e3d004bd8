"""The two-tower retrieval model of ADI (paper Figure 1); its configuration is
:class:`adirec.models.config.TwoTowerConfig`.

A user tower and an item tower share the id embedding tables (and the domain indicator's
embedding f_domain, where a gate reads it); each turns its side's features and the domain
indicator into a vector, and the score of a (user, item) pair is their inner
product (section 4.3). Training (sampled softmax, self training) lives in adirec.train.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from adirec.data.schema import Schema
from adirec.models.config import TwoTowerConfig
from adirec.models.towers import SharedEmbeddings, Tower


class TwoTowerModel(nn.Module):
    """User tower + item tower over one set of shared embedding tables."""

    def __init__(self, schema: Schema, num_domains: int, config: TwoTowerConfig | None = None):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        # values that depend on the number of domains become numbers here, so model.config
        # says exactly what was built
        self.config = (config or TwoTowerConfig()).validate().resolved(num_domains)
        self.schema = schema
        self.num_domains = num_domains
        used = Schema([f for f in schema.fields if self.config.reads_field(f)], schema.vocab_sizes)
        self.embeddings = SharedEmbeddings(
            used, self.config.embedding_dim, self.config.hash_buckets, self.config.sparse_embeddings,
            num_domains=num_domains if self.config.uses_domain_embedding() else 0)
        self.user_tower = Tower(self.config, schema, "user", num_domains, self.embeddings)
        self.item_tower = Tower(self.config, schema, "item", num_domains, self.embeddings)

    def user_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return self.user_tower(features, domain)  # (B, O)

    def item_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return self.item_tower(features, domain)  # (B, O)

    @staticmethod
    def score(user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
        """Inner product over the last dim, with broadcasting: (B, O), (B, O) -> (B,) pairwise;
        (B, 1, O), (1, N, O) -> (B, N) all pairs (or use ``user_emb @ item_emb.T``)."""
        return (user_emb * item_emb).sum(dim=-1)

    def forward(
        self, features: dict[str, torch.Tensor], domain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both towers on one batch holding both sides' features: ((B, O), (B, O))."""
        return self.user_embedding(features, domain), self.item_embedding(features, domain)

    def num_parameters(self) -> int:
        # parameters() yields each tensor once, so the shared tables count once
        return sum(p.numel() for p in self.parameters())
