"""The two-tower retrieval model of ADI (paper Figure 1) and its configuration.

A user tower and an item tower share the id embedding tables; each turns its side's features
and the domain indicator into a vector, and the score of a (user, item) pair is their inner
product (section 4.3). Training (sampled softmax, self training) lives in adirec.train.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from adirec.data.schema import Schema
from adirec.models.experts import BACKBONES, FUSIONS, GATES  # BACKBONES re-exported: name -> builder
from adirec.models.layers import ADAPTATIONS
from adirec.models.towers import SharedEmbeddings, Tower

__all__ = ["BACKBONES", "TwoTowerConfig", "TwoTowerModel"]


@dataclass
class TwoTowerConfig:
    """Hyper-parameters of both towers (they are built alike). Defaults suit small data.

    Attributes:
        embedding_dim: E, width of every field embedding.
        dial: domain interest adaptation layer, "se" | "va" | "lt" | "none" (eq. 21-26).
        se_reduction: reduction ratio r of the SE excitation (F -> F // r -> F).
        shared_experts: K, number of shared expert MLPs (eq. 8-9).
        gate: mixing of the shared experts, "softmax" or "linear" (eq. 8 as written).
        expert_hidden: hidden widths of every expert MLP (shared and domain-specific).
        expert_out: H, output width of every expert MLP.
        fusion: how shared and domain-specific outputs combine, "concat" | "sum" | "netmul"
            (eq. 11-17).
        domain_forward: one forward network per domain after the backbone (eq. 18); False
            means one forward network shared by all domains.
        forward_hidden: hidden widths of the forward network(s); empty = none.
        output_dim: O, width of the user / item vectors.
        dsbn: domain-specific batch norm (eq. 20) in the shared networks; False = plain BN.
        dropout: dropout after every hidden layer.
        l2_normalize: L2-normalise the tower outputs (inner product = cosine).
        backbone: name of a builder in BACKBONES ("adi", "mlp", ...).
    """

    embedding_dim: int = 32
    dial: str = "se"
    se_reduction: int = 4
    shared_experts: int = 1
    gate: str = "softmax"
    expert_hidden: tuple[int, ...] = (256,)
    expert_out: int = 128
    fusion: str = "concat"
    domain_forward: bool = True
    forward_hidden: tuple[int, ...] = (128,)
    output_dim: int = 64
    dsbn: bool = True
    dropout: float = 0.0
    l2_normalize: bool = True
    backbone: str = "adi"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TwoTowerConfig":
        """Check every field; raise ValueError naming the bad value. Returns self."""
        self.expert_hidden = tuple(self.expert_hidden)
        self.forward_hidden = tuple(self.forward_hidden)
        for name in ("embedding_dim", "se_reduction", "shared_experts", "expert_out", "output_dim"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        for name in ("expert_hidden", "forward_hidden"):
            v = getattr(self, name)
            if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in v):
                raise ValueError(f"{name} must hold ints >= 1, got {v!r}")
        choices = {"dial": ADAPTATIONS, "gate": GATES, "fusion": FUSIONS, "backbone": tuple(BACKBONES)}
        for name, known in choices.items():
            if getattr(self, name) not in known:
                raise ValueError(f"{name} must be one of {known}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class TwoTowerModel(nn.Module):
    """User tower + item tower over one set of shared embedding tables."""

    def __init__(self, schema: Schema, num_domains: int, config: TwoTowerConfig | None = None):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.config = (config or TwoTowerConfig()).validate()
        self.schema = schema
        self.num_domains = num_domains
        self.embeddings = SharedEmbeddings(schema, self.config.embedding_dim)
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
