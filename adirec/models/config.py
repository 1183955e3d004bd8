"""Configuration of the two-tower models: :class:`TwoTowerConfig`, shared by every preset.

It validates names against the registered layers and backbones, so it imports the model
building blocks (importing :mod:`adirec.models.baselines` registers the comparison backbones).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import adirec.models.baselines  # noqa: F401  (registers the comparison backbones in BACKBONES)
from adirec.models.experts import BACKBONES, FUSIONS, GATES, SE_PLACEMENTS
from adirec.models.layers import ADAPTATIONS


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
