"""Embeddings and the user / item tower (paper section 4.1-4.2, eq. 6-7 and 18).

A tower maps one side's features to a vector:

    features -> field embeddings (B, F, E)          eq. 6-7
             -> domain interest adaptation (B, F, E) eq. 21-26
             -> flatten (B, F*E) -> backbone (B, H)  eq. 8-17 (gates read f_domain (D, E))
             -> domain-specific forward net (B, H')  eq. 18
             -> Linear (B, O) -> optional L2 norm

Both towers take their id embeddings from one :class:`SharedEmbeddings` owned by the model, so a
vocabulary used on both sides (the user's item history and the target item) is one table; the
domain indicator's embedding ``f_domain`` is one more table there, read by the gates of both
towers (each tower has its own gate weights).
"""
from __future__ import annotations

from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from adirec.data.dataset import HIST_ALL, HIST_DOMAIN
from adirec.data.schema import OOV, Field, Schema
from adirec.models.experts import BACKBONES, Backbone, DomainExperts
from adirec.models.config import TwoTowerConfig
from adirec.models.layers import MLP, make_adaptation
from adirec.models.sequence import HistoryEncoder, make_history_encoder

HISTORY_FIELDS = (HIST_ALL, HIST_DOMAIN)


class SharedEmbeddings(nn.Module):
    """One embedding table per vocabulary of the schema, plus one projection per dense field.

    Create it once per model and hand it to both towers; every field naming a vocabulary looks
    up the same table (eq. 6). Row ``OOV`` (0) is the padding row: all zeros and never trained,
    so padding and unseen ids contribute nothing.

    ``num_domains > 0`` adds ``domain`` (an ``nn.Embedding(num_domains, dim)``): ``f_domain``, the
    embedding of the domain indicator that ADI's gates read (eq. 8, 11-15); None otherwise. It
    is an ordinary dense table (never hashed, never sparse: it has D rows).

    High-cardinality ids: with ``hash_buckets = H > 0`` every vocabulary larger than ``H`` gets a
    table of ``H`` rows and its ids are hashed into rows ``1..H-1`` (row 0 stays padding), so
    the table no longer grows with the catalogue; colliding ids share a vector. With ``sparse``
    the tables produce sparse gradients (only the rows a batch touched), for an optimizer that
    updates only those rows (``torch.optim.SparseAdam``, see ``adirec.train.loop``).
    """

    # universal hashing ((a x + b) mod p) mod (H - 1) + 1, p = 2^31 - 1; (a x + b) stays < 2^63
    # for any id below 2^31
    _HASH_P, _HASH_A, _HASH_B = 2_147_483_647, 1_103_515_245, 12_345

    def __init__(self, schema: Schema, dim: int, hash_buckets: int = 0, sparse: bool = False,
                 num_domains: int = 0):
        super().__init__()
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        if hash_buckets < 0 or hash_buckets == 1:
            raise ValueError(f"hash_buckets must be 0 (off) or >= 2, got {hash_buckets}")
        self.dim = dim
        vocabs = sorted({f.vocab_name for f in schema.fields if f.vocab_name is not None})
        # vocabulary -> number of rows its ids are hashed into (vocabularies not listed: no hashing)
        self.hashed = {v: hash_buckets for v in vocabs if 0 < hash_buckets < schema.vocab_sizes[v]}
        self.tables = nn.ModuleDict(
            {v: nn.Embedding(self.hashed.get(v, schema.vocab_sizes[v]), dim, padding_idx=OOV, sparse=sparse)
             for v in vocabs}
        )
        self.dense = nn.ModuleDict(
            {f.name: nn.Linear(f.dim, dim) for f in schema.fields if f.kind == "dense"}
        )
        if num_domains < 0:
            raise ValueError(f"num_domains must be >= 0 (0: no domain embedding), got {num_domains}")
        self.domain = nn.Embedding(num_domains, dim) if num_domains else None  # (D, E): f_domain

    def rows(self, vocab: str, x: torch.Tensor) -> torch.Tensor:
        """Table rows of ids ``x`` of ``vocab``: the ids themselves, or their hashes (0 stays 0)."""
        buckets = self.hashed.get(vocab)
        if buckets is None:
            return x
        h = (x * self._HASH_A + self._HASH_B) % self._HASH_P % (buckets - 1) + 1
        return torch.where(x == OOV, torch.zeros_like(x), h)

    def embed(self, field: Field, x: torch.Tensor) -> torch.Tensor:
        """Embed one field's batch: categorical (B,), sequence (B, L) or dense (B, dim) -> (B, E)."""
        if field.kind == "categorical":
            return self.tables[field.id_vocab](self.rows(field.id_vocab, x))  # (B, E), eq. 6
        if field.kind == "sequence":
            e = self.tables[field.id_vocab](self.rows(field.id_vocab, x))  # (B, L, E)
            mask = (x != OOV).unsqueeze(-1).to(e.dtype)  # (B, L, 1)
            # mean over real entries only; an all-padding row divides 0 by 1 and stays zero
            count = mask.sum(dim=1).clamp(min=1.0)  # (B, 1)
            return (e * mask).sum(dim=1) / count  # (B, E), eq. 7
        if x.dim() == 1:
            x = x.unsqueeze(-1)  # a 1-wide dense field may come as (B,)
        projection = cast(nn.Linear, self.dense[field.name])
        return projection(x.to(projection.weight.dtype))  # (B, E)


class FieldEmbeddings(nn.Module):
    """The embeddings of one side's fields, stacked in schema order: (B, F, E).

    The user's behaviour history over all domains (``hist_all``) is summarised by ``encoder``
    (:mod:`adirec.models.sequence`: the paper's mean, eq. 7, or an order-aware encoder); other
    sequences (the history within the domain, item genres) by their mean. In training,
    ``history_dropout`` drops each history item with that probability.
    """

    def __init__(self, schema: Schema, side: str, shared: SharedEmbeddings, exclude: tuple[str, ...] = (),
                 encoder: HistoryEncoder | None = None, history_dropout: float = 0.0):
        super().__init__()
        self.side = side
        self.fields = [f for f in schema.side(side) if f.name not in exclude]
        if not self.fields:
            left_out = [f.name for f in schema.side(side) if f.name in exclude]
            raise ValueError(f"no {side!r}-side fields to read (schema has {[f.name for f in schema.side(side)]}, "
                             f"left out: {left_out}); a tower needs at least one: change exclude_fields "
                             f"or per_domain_features")
        self.shared = shared  # registered in both towers: the same tables, not copies
        self.num_fields = len(self.fields)
        self.dim = shared.dim
        self.encoder = encoder if encoder is not None else HistoryEncoder()
        self.history_dropout = history_dropout

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.history_dropout > 0):
            return x
        return x.masked_fill(torch.rand(x.shape, device=x.device) < self.history_dropout, OOV)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = [f.name for f in self.fields if f.name not in features]
        if missing:
            raise KeyError(f"{self.side} tower: features missing fields {missing}")
        out = []
        for f in self.fields:
            if f.name in HISTORY_FIELDS:
                x = self._drop(features[f.name])  # (B, L)
                e = self.shared.tables[f.id_vocab](self.shared.rows(f.id_vocab, x))  # (B, L, E)
                enc = self.encoder if f.name == HIST_ALL else _MEAN
                out.append(enc.last(e, x != OOV))  # (B, E)
            else:
                out.append(self.shared.embed(f, features[f.name]))  # (B, E)
        return torch.stack(out, dim=1)  # (B, F, E)

    def forward_positions(self, features: dict[str, torch.Tensor], window: torch.Tensor,
                          window_domain: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """Every position of a batch of users' sequences at once: (B, L, F, E).

        ``window`` (B, L): the items, right-aligned, position t being the last item a row at t
        sees; ``window_domain`` (B, L): each item's domain; ``domain`` (B, L): the domain of the
        row at t (its target's). ``features`` holds every other field per position, (B, L, ...).
        ``hist_all`` at t is ``encoder.causal`` of the window; ``hist_domain`` the mean of the
        window's items up to t in the row's domain.
        """
        B, L = window.shape
        x = self._drop(window)
        present = x != OOV  # (B, L)
        e = self.shared.tables["item_id"](self.shared.rows("item_id", x))  # (B, L, E)
        out = []
        for f in self.fields:
            if f.name == HIST_ALL:
                out.append(self.encoder.causal(e, present))  # (B, L, E)
            elif f.name == HIST_DOMAIN:
                idx = torch.arange(L, device=x.device)
                allowed = ((idx[:, None] >= idx[None, :])[None] & present[:, None, :]
                           & (window_domain[:, None, :] == domain[:, :, None])).to(e.dtype)  # (B, L, L)
                out.append(allowed @ e / allowed.sum(-1, keepdim=True).clamp(min=1.0))  # (B, L, E), eq. 7
            else:
                v = features[f.name]
                flat = v.reshape(B * L, *v.shape[2:])
                out.append(self.shared.embed(f, flat).view(B, L, -1))  # (B, L, E)
        return torch.stack(out, dim=2)  # (B, L, F, E)


_MEAN = HistoryEncoder()


class IdentityBackbone(nn.Module):
    """No backbone: the flattened field embeddings go straight to the head (``item_tower="linear"``)."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return x  # (B, F*E)


class Tower(nn.Module):
    """The user or the item tower: ``forward(features, domain (B,)) -> (B, output_dim)``.

    ``features`` may hold the other side's fields too; only this side's are read.
    """

    def __init__(
        self,
        config: TwoTowerConfig,
        schema: Schema,
        side: str,
        num_domains: int,
        embeddings: SharedEmbeddings,
    ):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        config = config.resolved(num_domains, schema)
        self.side = side
        self.num_domains = num_domains
        self.l2_normalize = config.l2_normalize
        ignored = tuple(f.name for f in schema.fields if not config.reads_field(f))
        encoder = None
        if side == "user" and any(f.name == HIST_ALL and config.reads_field(f) for f in schema.fields):
            encoder = make_history_encoder(config.history_encoder, config.embedding_dim, schema[HIST_ALL].dim,
                                           layers=config.transformer_layers, heads=config.transformer_heads,
                                           dropout=config.transformer_dropout)
        assert not isinstance(config.history_dropout, str) and config.item_tower != "auto", \
            "auto is resolved with the schema"
        self.embeddings = FieldEmbeddings(schema, side, embeddings, ignored, encoder, float(config.history_dropout))
        n_fields, dim = self.embeddings.num_fields, self.embeddings.dim
        self.adaptation = make_adaptation(config.dial, n_fields, dim, num_domains, config.se_reduction,
                                          per_domain=config.dial_per_domain)
        if config.uses_domain_embedding() and embeddings.domain is None:
            raise ValueError(f"the {config.backbone!r} backbone's gates read the domain embedding "
                             f"f_domain, but the shared embeddings have none (build them with num_domains)")
        self.backbone: Backbone
        if side == "item" and config.item_tower == "linear":
            self.backbone = IdentityBackbone(n_fields * dim)  # the head alone maps the fields
        else:
            self.backbone = BACKBONES[config.backbone](config, n_fields * dim, num_domains,
                                                       domain_embedding=embeddings.domain)
        h = self.backbone.out_dim
        self.forward_net: DomainExperts | MLP
        if side == "item" and config.item_tower == "linear":
            self.forward_net = MLP(h, (), num_domains)  # empty: the identity
        elif config.domain_forward:
            # one forward network per domain, rows routed by domain like the domain experts
            self.forward_net = DomainExperts(h, config.forward_hidden, num_domains, config.dropout)
        else:
            self.forward_net = MLP(h, config.forward_hidden, num_domains, config.dsbn, config.dropout)
        self.head = nn.Linear(self.forward_net.out_dim, config.output_dim)
        if side == "item" and not config.item_tower_norm:
            # the item tower sees in-batch positives plus sampled negatives in training but the
            # whole corpus at serving time: batch statistics of the one do not describe the other
            for m in self.modules():
                if isinstance(m, MLP):
                    m.remove_norms()
        self.output_dim = config.output_dim

    def forward(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        e = self.embeddings(features)  # (B, F, E)
        if domain.shape != (e.shape[0],):
            raise ValueError(f"domain must have shape ({e.shape[0]},), got {tuple(domain.shape)}")
        return self._above_fields(e, domain)

    def forward_positions(self, features: dict[str, torch.Tensor], window: torch.Tensor, window_domain: torch.Tensor,
                          domain: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The vectors of the rows ``rows`` (B, L) bool of a batch of sequences (user side only):
        the same computation as :meth:`forward` on each row, with every position's history
        encoded in one pass (:meth:`FieldEmbeddings.forward_positions`). Returns (N, O), N = rows.sum()."""
        e = self.embeddings.forward_positions(features, window, window_domain, domain)  # (B, L, F, E)
        where = rows.flatten().nonzero().squeeze(1)  # (N,); index_select: a cheap backward (route_by_domain)
        return self._above_fields(e.flatten(0, 1).index_select(0, where), domain[rows])  # (N, O)

    def _above_fields(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # checked once here: an out-of-range id would otherwise surface as an opaque IndexError
        if e.shape[0] and not (0 <= int(domain.min()) and int(domain.max()) < self.num_domains):
            raise ValueError(
                f"domain indicator out of range [0, {self.num_domains}): "
                f"min {int(domain.min())}, max {int(domain.max())}"
            )
        e = self.adaptation(e, domain)  # (B, F, E), eq. 21-26
        h = self.backbone(e.flatten(1), domain)  # (B, H), eq. 8-17
        h = self.forward_net(h, domain)  # (B, H'), eq. 18
        out = self.head(h)  # (B, O)
        return F.normalize(out, dim=-1) if self.l2_normalize else out
