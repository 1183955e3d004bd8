"""Configuration of the two-tower models: :class:`TwoTowerConfig`, shared by every preset.

It validates names against the registered layers and backbones, so it imports the model
building blocks (importing :mod:`adirec.models.baselines` registers the comparison backbones).
Every field is declared with :func:`adirec.options.option`, so its command-line flag and help
live here.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields
from typing import Any

import adirec.models.baselines  # noqa: F401  (registers the comparison backbones in BACKBONES)
from adirec.models.experts import BACKBONES, FUSIONS, GATE_INPUTS, GATES
from adirec.models.layers import ADAPTATIONS
from adirec.models.sequence import HISTORY_ENCODERS
from adirec.options import option

#: ``shared_experts`` value meaning "one more than the number of domains" (MMoE's preset, ADI
#: paper section 5.1.4); replaced by the number when the number of domains is known
#: (:meth:`TwoTowerConfig.resolved`)
DOMAINS_PLUS_ONE = "domains+1"
ITEM_TOWERS = ("full", "linear")
#: ``history_encoder`` value resolved from the data's schema (:meth:`TwoTowerConfig.resolved`)
AUTO = "auto"

#: backbones whose expert gate may read the domain indicator's embedding
_DOMAIN_GATED = ("adi", "mmoe")


def _parse_experts(text: str) -> int | str:
    text = text.strip()
    return int(text) if text.isdigit() else text


def _parse_rate(text: str) -> float | str:
    """A probability, or ``auto``."""
    text = text.strip()
    if text == AUTO:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or auto, got {text!r}") from None


#: ``history_dropout="auto"`` with the mean history encoder (data without time): dropping history
#: items regularises a bag-of-items summary (chosen on XMRec's validation data); order-aware
#: encoders have their own dropout and take none (on genre3's validation data no history dropout
#: validated above none)
AUTO_HISTORY_DROPOUT = 0.25


@dataclass
class TwoTowerConfig:
    """Hyper-parameters of both towers (they are built alike). Defaults are ADI-SE's.

    Attributes:
        embedding_dim: E, width of every field embedding and of ``f_domain``, the domain
            indicator's embedding (one table of D rows, shared by both towers like the other id
            tables, eq. 6); it is created only when a gate reads it (:meth:`uses_domain_embedding`).
        dial: domain interest adaptation layer at the tower input, "se" | "va" | "lt" | "none":
            SE block (eq. 25-26), vanilla attention (eq. 23-24), linear transformation
            (eq. 21-22) or none.
        dial_per_domain: one adaptation layer per domain (the paper's DIAL; with "se" this is
            Table 8's 3-SE, ADI-SE). False: one layer shared by all domains (Table 8's 1-SE).
        se_reduction: reduction ratio r of every SE excitation (n -> n // r -> n).
        se_in_experts: an SE block inside every shared and every domain-specific expert, on its
            first layer's activations, besides the one at the input (Table 8's 4-SE). A shared
            expert's block is shared by all domains, a domain-specific expert's is its domain's.
        shared_experts: K, number of shared experts (eq. 8-9; MMoE's experts), or
            ``"domains+1"`` (one more than the number of domains, resolved when the model is
            built or by ``registry.build_config(name, num_domains=D)``).
        gate: normalisation of the shared-expert gate, "linear" (eq. 8 as written: each output
            over their sum, on |outputs| + eps so the division is safe) or "softmax" (the gates
            of MMoE and PLE).
        gate_input: what the shared-expert gate reads, "domain" (eq. 8: f_domain, so the
            mixture is one per domain) or "features" (the row's flattened field embeddings, as
            in MMoE and PLE; for ADI a named departure from eq. 8). PLE gates on features only.
        expert_hidden: hidden widths of every expert MLP (shared and domain-specific).
        expert_out: H, output width of every expert MLP.
        fusion: how shared and domain-specific outputs combine: "concat" (eq. 11-13, gated
            concatenation with a Hadamard term, width 3H), "sum" (eq. 14-15, gated sum, width H)
            or "netmul" (eq. 16-17, network multiplication, width H).
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
        per_domain_features: read the per-domain fields (user-domain and item-domain features,
            e.g. the history within the domain). False: the towers ignore every field with
            ``per_domain=True`` (a model that knows nothing of domains, ``dnn-blind``).
        hash_buckets: 0 = one embedding row per id; H >= 2 = ids of every vocabulary larger than
            H are hashed into a table of H rows (high-cardinality ids, fixed memory).
        sparse_embeddings: embedding tables produce sparse gradients, trained by SparseAdam
            (only the rows a batch touches are read and written).
        specific_experts: domain-specific experts per domain and level of the "ple" backbone.
        ple_levels: extraction levels of the "ple" backbone (1 = CGC).
        history_encoder: how the user tower summarises the behaviour history over all domains:
            "mean" (eq. 7), "recency" (a mean weighted per recency rank) or "transformer" (a small
            causal Transformer); see :mod:`adirec.models.sequence`. adirec's extension: the
            paper's presets use "mean".
        transformer_layers, transformer_heads, transformer_dropout: the Transformer encoder's
            blocks, attention heads and dropout.
        history_dropout: in training, drop each history item with this probability; ``"auto"``:
            :data:`AUTO_HISTORY_DROPOUT` with the mean history encoder, 0 with the order-aware ones.
        item_tower: "full": the item tower is built like the user tower (the paper's towers);
            "linear": the item vector is one linear map of the item's (adapted) field embeddings,
            no backbone or forward network (an order-aware recommender's item side, at a fraction
            of the cost: adirec's option); "auto": linear under the transformer history encoder
            (a SASRec-like user side scores items by their own embeddings), full otherwise.
        item_bias: a learned per-(domain, item) bias added to the score, started at the item's
            log popularity in the domain (a popularity prior). It stays retrievable by inner
            product: the user vector gets one more entry, 1, and the item vector the bias.
    """

    embedding_dim: int = option(64, "width of every field embedding and of the domain embedding")
    dial: str = option("se", "domain interest adaptation layer (eq. 21-26)", choices=ADAPTATIONS)
    dial_per_domain: bool = option(True, "one adaptation layer per domain (off: one for all "
                                         "domains, Table 8's 1-SE)")
    se_reduction: int = option(4, "reduction ratio of every SE block")
    se_in_experts: bool = option(False, "an SE block inside every expert (Table 8's 4-SE)")
    shared_experts: int | str = option(1, f"number of shared experts, or {DOMAINS_PLUS_ONE}",
                                       parse=_parse_experts, metavar="K")
    gate: str = option("linear", "shared-expert gate normalisation (linear: eq. 8)", choices=GATES)
    gate_input: str = option("domain", "what the shared-expert gate reads (domain: eq. 8)", choices=GATE_INPUTS)
    expert_hidden: tuple[int, ...] = option((256,), "hidden widths of every expert")
    expert_out: int = option(128, "output width of every expert")
    fusion: str = option("concat", "fusion of shared and domain-specific outputs (eq. 11-17)", choices=FUSIONS)
    domain_forward: bool = option(True, "one forward network per domain (eq. 18)")
    forward_hidden: tuple[int, ...] = option((128,), "hidden widths of the forward network")
    output_dim: int = option(64, "width of the user and item vectors")
    dsbn: bool = option(True, "domain-specific batch norm (eq. 20)")
    dropout: float = option(0.0, "dropout after every hidden layer")
    l2_normalize: bool = option(True, "L2-normalise the tower outputs")
    backbone: str = option("adi", "backbone network", choices=tuple(BACKBONES))
    exclude_fields: tuple[str, ...] = option(("user_id",), "schema fields the towers ignore")
    per_domain_features: bool = option(True, "read the per-domain (user-domain, item-domain) fields")
    item_tower_norm: bool = option(False, "batch normalisation in the item tower too")
    hash_buckets: int = option(0, "hash the ids of every vocabulary larger than H into H rows (0: off)")
    sparse_embeddings: bool = option(False, "sparse gradients for the embedding tables (SparseAdam)")
    specific_experts: int = option(1, "PLE: domain-specific experts per domain and level")
    ple_levels: int = option(1, "PLE: extraction levels (1 = CGC)")
    history_encoder: str = option("mean", "summary of the behaviour history: mean (eq. 7), recency, transformer, "
                                  "or auto (transformer when the history is in time order, else mean)",
                                  choices=(*HISTORY_ENCODERS, "auto"))
    transformer_layers: int = option(2, "blocks of the transformer history encoder")
    transformer_heads: int = option(1, "attention heads of the transformer history encoder")
    transformer_dropout: float = option(0.2, "dropout of the transformer history encoder")
    history_dropout: float | str = option(0.0, "in training, drop each history item with this probability; "
                                          f"auto: {AUTO_HISTORY_DROPOUT} with the mean history encoder, 0 with "
                                          "an order-aware one (adi-plus, dnn-plus)", parse=_parse_rate,
                                          metavar="P|auto")
    item_tower: str = option("full", "full: built like the user tower; linear: one linear map of the item's "
                             "field embeddings; auto: linear under the transformer history encoder, else full",
                             choices=(*ITEM_TOWERS, "auto"))
    item_bias: bool = option(False, "a learned per-domain item bias (popularity prior), one more vector entry")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> TwoTowerConfig:
        """Check every field; raise ValueError naming the bad value. Returns self."""
        self.expert_hidden = tuple(self.expert_hidden)
        self.forward_hidden = tuple(self.forward_hidden)
        self.exclude_fields = tuple(self.exclude_fields)
        for name in ("embedding_dim", "se_reduction", "expert_out", "output_dim", "specific_experts",
                     "ple_levels", "transformer_layers", "transformer_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        k = self.shared_experts
        if k != DOMAINS_PLUS_ONE and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
            raise ValueError(f"shared_experts must be an int >= 1 or {DOMAINS_PLUS_ONE!r}, got {k!r}")
        for name in ("expert_hidden", "forward_hidden"):
            v = getattr(self, name)
            if any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in v):
                raise ValueError(f"{name} must hold ints >= 1, got {v!r}")
        choices = {"dial": ADAPTATIONS, "gate": GATES, "gate_input": GATE_INPUTS, "fusion": FUSIONS,
                   "backbone": tuple(BACKBONES)}
        for name, known in choices.items():
            if getattr(self, name) not in known:
                raise ValueError(f"{name} must be one of {known}, got {getattr(self, name)!r}")
        for name in ("dial_per_domain", "se_in_experts", "per_domain_features", "sparse_embeddings", "item_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("dropout", "transformer_dropout", "history_dropout"):
            v = getattr(self, name)
            if name == "history_dropout" and v == AUTO:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                also = f" or {AUTO!r}" if name == "history_dropout" else ""
                raise ValueError(f"{name} must be in [0, 1){also}, got {v!r}")
        if self.item_tower not in (*ITEM_TOWERS, AUTO):
            raise ValueError(f"item_tower must be one of {(*ITEM_TOWERS, AUTO)}, got {self.item_tower!r}")
        if self.history_encoder not in (*HISTORY_ENCODERS, AUTO):
            raise ValueError(f"history_encoder must be one of {(*HISTORY_ENCODERS, AUTO)}, "
                             f"got {self.history_encoder!r}")
        if self.embedding_dim % self.transformer_heads:
            raise ValueError(f"embedding_dim {self.embedding_dim} must be a multiple of transformer_heads "
                             f"{self.transformer_heads}")
        if (not isinstance(self.hash_buckets, int) or isinstance(self.hash_buckets, bool)
                or self.hash_buckets < 0 or self.hash_buckets == 1):
            raise ValueError(f"hash_buckets must be 0 (off) or an int >= 2, got {self.hash_buckets!r}")
        if self.se_in_experts and self.backbone != "adi":
            raise ValueError(f"se_in_experts puts SE blocks inside ADI's experts; backbone "
                             f"{self.backbone!r} has none (use backbone 'adi' or drop se_in_experts)")
        if self.gate_input == "domain" and self.backbone == "ple":
            raise ValueError("PLE's gates read the features of their level (gate_input 'features'); "
                             "gate_input 'domain' applies to the 'adi' and 'mmoe' backbones")
        return self

    def reads_field(self, field) -> bool:
        """Whether the towers read schema field ``field`` (a :class:`~adirec.data.schema.Field`)."""
        return field.name not in self.exclude_fields and (self.per_domain_features or not field.per_domain)

    def uses_domain_embedding(self) -> bool:
        """Whether a gate reads f_domain, the domain indicator's embedding: ADI's fusion gates
        (eq. 11-15) and a shared-expert gate on the domain (eq. 8)."""
        if self.backbone == "adi" and self.fusion in ("concat", "sum"):
            return True
        return self.backbone in _DOMAIN_GATED and self.gate_input == "domain"

    def resolved(self, num_domains: int, schema=None) -> TwoTowerConfig:
        """This config with the values that depend on the data made explicit: ``shared_experts=
        "domains+1"`` -> ``num_domains + 1``, and, given the data's ``schema``,
        ``history_encoder="auto"`` -> ``"transformer"`` when the behaviour history is in time order
        (``Field.ordered``), else ``"mean"``; then ``history_dropout="auto"`` by that encoder
        (:data:`AUTO_HISTORY_DROPOUT` for ``"mean"``, else 0) and ``item_tower="auto"`` (``"linear"``
        for ``"transformer"``, else ``"full"``). Self when there is nothing to resolve."""
        if not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(f"num_domains must be an int >= 1, got {num_domains!r}")
        changes: dict[str, Any] = {}
        if self.shared_experts == DOMAINS_PLUS_ONE:
            changes["shared_experts"] = num_domains + 1
        if self.history_encoder == AUTO and schema is not None:
            ordered = any(f.name == "hist_all" and f.ordered for f in schema.fields)
            changes["history_encoder"] = "transformer" if ordered else "mean"
        encoder = changes.get("history_encoder", self.history_encoder)
        if self.history_dropout == AUTO and encoder != AUTO:
            changes["history_dropout"] = AUTO_HISTORY_DROPOUT if encoder == "mean" else 0.0
        if self.item_tower == AUTO and encoder != AUTO:
            changes["item_tower"] = "linear" if encoder == "transformer" else "full"
        return dataclasses.replace(self, **changes) if changes else self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_dict(cls, values: dict, *, source: str = "model config") -> TwoTowerConfig:
        """The config saved as ``values`` (``dataclasses.asdict``); unknown fields (e.g. from a run
        written by another version of adirec) are an error that names them and ``source``."""
        unknown = sorted(set(values) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"{source}: unknown model config fields {unknown}; this version knows "
                             f"{cls.field_names()}. The run was written by another version of adirec: "
                             f"retrain it with this one")
        return cls(**values)
