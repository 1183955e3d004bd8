"""The two-tower retrieval model of ADI (paper Figure 1); its configuration is
:class:`adirec.models.config.TwoTowerConfig`.

A user tower and an item tower share the id embedding tables (and the domain indicator's
embedding f_domain, where a gate reads it); each turns its side's features and the domain
indicator into a vector, and the score of a (user, item) pair is their inner
product (section 4.3). Training (sampled softmax, self training) lives in adirec.train.
"""
from __future__ import annotations

from typing import cast

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
        self.config = (config or TwoTowerConfig()).validate().resolved(num_domains, schema)
        self.schema = schema
        self.num_domains = num_domains
        used = Schema([f for f in schema.fields if self.config.reads_field(f)], schema.vocab_sizes)
        self.embeddings = SharedEmbeddings(
            used, self.config.embedding_dim, self.config.hash_buckets, self.config.sparse_embeddings,
            num_domains=num_domains if self.config.uses_domain_embedding() else 0)
        self.user_tower = Tower(self.config, schema, "user", num_domains, self.embeddings)
        self.item_tower = Tower(self.config, schema, "item", num_domains, self.embeddings)
        self.item_bias = None
        if self.config.item_bias:
            if "item_id" not in self.embeddings.tables:
                raise ValueError("item_bias needs the item_id field: do not exclude it")
            rows = cast(nn.Embedding, self.embeddings.tables["item_id"]).num_embeddings
            self.item_bias = nn.Parameter(torch.zeros(num_domains, rows))  # (D, I + 1); row 0 stays 0
        # the width of the vectors scored by inner product: the towers' O, plus the bias entry
        self.vector_dim = self.config.output_dim + int(self.item_bias is not None)

    def user_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        u = self.user_tower(features, domain)  # (B, O)
        if self.item_bias is None:
            return u
        return torch.cat([u, u.new_ones(len(u), 1)], dim=1)  # (B, O + 1): the bias's coefficient

    def user_embedding_positions(self, features: dict[str, torch.Tensor], window: torch.Tensor,
                                 window_domain: torch.Tensor, domain: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The user vectors of the rows ``rows`` (B, L) of a batch of sequences, every position
        at once (:meth:`Tower.forward_positions`): (N, vector_dim)."""
        u = self.user_tower.forward_positions(features, window, window_domain, domain, rows)  # (N, O)
        if self.item_bias is None:
            return u
        return torch.cat([u, u.new_ones(len(u), 1)], dim=1)

    def item_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        v = self.item_tower(features, domain)  # (B, O)
        if self.item_bias is None:
            return v
        rows = self.embeddings.rows("item_id", features["item_id"])  # (B,)
        return torch.cat([v, self.item_bias[domain, rows].unsqueeze(1)], dim=1)  # (B, O + 1)

    @torch.no_grad()
    def set_item_prior(self, counts: torch.Tensor, temperature: float) -> None:
        """Start the item bias at the popularity prior: ``temperature * log(1 + count)`` of each
        item's training positives per domain (``counts`` (D, I + 1)), so that, divided by the
        softmax temperature, the bias adds the item's log frequency to its logit. Items never
        seen in a domain (and the unknown id 0) start at 0, below every seen item."""
        if self.item_bias is None:
            return
        prior = temperature * torch.log1p(counts.to(self.item_bias.dtype))  # (D, I + 1)
        prior[:, 0] = 0.0
        if prior.shape != self.item_bias.shape:  # hashed ids: several items share a row
            rows = self.embeddings.rows("item_id", torch.arange(prior.shape[1], device=prior.device))
            merged = torch.zeros_like(self.item_bias).index_reduce_(1, rows, prior, "amax", include_self=False)
            prior = merged
        self.item_bias.copy_(prior)

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
