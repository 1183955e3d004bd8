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
import adirec.models.baselines  # noqa: F401  (registers the comparison backbones in BACKBONES)
from adirec.models.experts import BACKBONES, FUSIONS, GATES, SE_PLACEMENTS  # BACKBONES re-exported
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
        gate: mixing of the shared experts, "linear" (eq. 8 as written, on |outputs| + eps so
            the division is safe) or "softmax". Linear is the default: with 3 shared experts on
            XMRec it validated at 0.637 Recall@10 against 0.624 for softmax (held-out slice of
            train, one seed).
        expert_hidden: hidden widths of every expert MLP (shared and domain-specific).
        expert_out: H, output width of every expert MLP.
        fusion: how shared and domain-specific outputs combine, "concat" | "sum" | "netmul"
            (eq. 11-17).
        domain_forward: one forward network per domain after the backbone (eq. 18); False
            means one forward network shared by all domains.
        forward_hidden: hidden widths of the forward network(s); empty = none.
        output_dim: O, width of the user / item vectors.
        dsbn: domain-specific batch norm (eq. 20) in the shared networks; False = plain BN.
        item_tower_norm: batch normalisation in the item tower too. Training batches of item
            columns (positives + sampled negatives) are not distributed like the corpus that is
            scored at serving time, so by default only the user tower normalises.
        dropout: dropout after every hidden layer.
        l2_normalize: L2-normalise the tower outputs (inner product = cosine).
        backbone: name of a builder in BACKBONES ("adi", "mlp", ...).
        exclude_fields: schema fields the towers ignore. By default the user id: a user is
            described by profile and behaviour history, which generalise to users with few
            interactions, where a per-user vector overfits them (measured on the held-out
            validation slice of XMRec).
        hash_buckets: 0 = one embedding row per id; H >= 2 = ids of every vocabulary larger than
            H are hashed into a table of H rows (high-cardinality ids, fixed memory).
        sparse_embeddings: embedding tables produce sparse gradients, trained by SparseAdam
            (only the rows a batch touches are read and written).
        se_placements: extra SE blocks inside the "adi" backbone, on top of the DIAL SE at the
            embeddings: any of "shared", "specific", "fusion" (Table 8: 1-SE = none, 3-SE =
            shared + specific, 4-SE = all three).
        specific_experts: domain-specific experts per domain and level of the "ple" backbone.
        ple_levels: extraction levels of the "ple" backbone (1 = CGC).
    """

    embedding_dim: int = 64
    dial: str = "se"
    se_reduction: int = 4
    shared_experts: int = 1
    gate: str = "linear"
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
    exclude_fields: tuple[str, ...] = ("user_id",)
    item_tower_norm: bool = False
    hash_buckets: int = 0
    sparse_embeddings: bool = False
    se_placements: tuple[str, ...] = ()
    specific_experts: int = 1
    ple_levels: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "TwoTowerConfig":
        """Check every field; raise ValueError naming the bad value. Returns self."""
        self.expert_hidden = tuple(self.expert_hidden)
        self.forward_hidden = tuple(self.forward_hidden)
        self.exclude_fields = tuple(self.exclude_fields)
        self.se_placements = tuple(self.se_placements)
        for name in ("embedding_dim", "se_reduction", "shared_experts", "expert_out", "output_dim",
                     "specific_experts", "ple_levels"):
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
        if (not isinstance(self.hash_buckets, int) or isinstance(self.hash_buckets, bool)
                or self.hash_buckets < 0 or self.hash_buckets == 1):
            raise ValueError(f"hash_buckets must be 0 (off) or an int >= 2, got {self.hash_buckets!r}")
        if not isinstance(self.sparse_embeddings, bool):
            raise ValueError(f"sparse_embeddings must be a bool, got {self.sparse_embeddings!r}")
        bad = [p for p in self.se_placements if p not in SE_PLACEMENTS]
        if bad or len(set(self.se_placements)) != len(self.se_placements):
            raise ValueError(f"se_placements must be distinct values of {SE_PLACEMENTS}, "
                             f"got {self.se_placements!r}")
        if self.se_placements and self.backbone != "adi":
            raise ValueError(f"se_placements apply to the 'adi' backbone only, not {self.backbone!r}")
        if self.fusion == "netmul" and set(self.se_placements) - {"fusion"}:
            raise ValueError(f"with fusion 'netmul' only the 'fusion' SE placement applies, "
                             f"got {self.se_placements!r}")
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
        used = Schema([f for f in schema.fields if f.name not in self.config.exclude_fields], schema.vocab_sizes)
        self.embeddings = SharedEmbeddings(used, self.config.embedding_dim, self.config.hash_buckets,
                                           self.config.sparse_embeddings)
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
