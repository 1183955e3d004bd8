"""The training objective of a two-tower model: which columns each row's softmax runs over, and how.

The equations live in :mod:`adirec.train.loss` (full softmax, eq. 2-3; sampled softmax with logQ
correction, eq. 4-5); this module assembles them for a batch:

* **Full softmax** (``TrainConfig.softmax="full"``, or ``"auto"`` when the domains' corpora hold at
  most ``full_softmax_max_items`` items together): a row of domain d is scored against every item
  of d's corpus (without ``corpus_negatives_only``: every item of every domain's corpus, one
  softmax over everything, as ``dnn-blind`` trains), the item tower run on those items in every
  step. No sampling, no correction: the exact objective of eq. 2-3.
* **Sampled softmax** (``"sampled"``, or ``"auto"`` above the threshold), eq. 4-5: a batch of rows
  is scored against the batch's own positives plus ``num_negatives`` items drawn from the
  proposal Q (in-batch + sampled, "mixed" negatives; Q unigram^alpha or uniform), each logit
  corrected by ``-log`` of its expected count; with ``corpus_negatives_only`` a row of domain d
  sees only columns of d's corpus. For batches of sequences (thousands of rows) the columns are
  each row's own positive plus the shared sampled negatives.

Rows come as a :class:`~adirec.data.batches.Batch` (one interaction each, plus self-training's
pseudo-positives, Algorithm 1) or as a :class:`~adirec.data.batches.SequenceBatch` (every position
of a batch of users' time-ordered sequences, the user tower run on all positions at once).
"""
from __future__ import annotations

import numpy as np
import torch

from adirec.data.batches import Batch, FeatureStore, SequenceBatch
from adirec.data.dataset import MultiDomainData
from adirec.models.layers import domain_groups
from adirec.train.config import TrainConfig
from adirec.train.loss import full_softmax_loss, sampled_softmax_loss
from adirec.train.sampler import NegativeSampler
from adirec.train.self_training import pseudo_positives


def uses_full_softmax(config: TrainConfig, data: MultiDomainData) -> bool:
    """Whether ``config.softmax`` means the full softmax on ``data`` (see the module docstring)."""
    if config.softmax == "auto":
        return sum(len(c) for c in data.corpus) <= config.full_softmax_max_items
    return config.softmax == "full"


class RetrievalObjective:
    """The loss of one batch; see the module docstring."""

    def __init__(self, model, store: FeatureStore, data: MultiDomainData, config: TrainConfig,
                 sampler: NegativeSampler, in_corpus: torch.Tensor, device: torch.device):
        self.model, self.store, self.config, self.sampler = model, store, config, sampler
        self.in_corpus, self.device = in_corpus, device
        self.num_domains = data.num_domains
        self.full = uses_full_softmax(config, data)
        self.corpus = [torch.as_tensor(np.asarray(c, dtype=np.int64)) for c in data.corpus]
        if not config.corpus_negatives_only:  # one softmax over the union of the corpora, in every domain
            self.corpus = [torch.unique(torch.cat(self.corpus))] * data.num_domains
        position = torch.full((data.num_domains, data.num_items + 1), -1, dtype=torch.long)  # (D, I + 1)
        for d, c in enumerate(self.corpus):
            position[d, c] = torch.arange(len(c))
        self.corpus_position = position.to(device)
        self._corpus_features: dict[int, dict[str, torch.Tensor]] = {}
        self.pseudo_candidates = 0
        # (D,) a row's weight by its domain (TrainConfig.domain_weighting; set by the Trainer); None: 1
        self.domain_factor: torch.Tensor | None = None

    # ------------------------------------------------------------------ batches
    def rows_loss(self, batch: Batch, p: float) -> tuple[torch.Tensor, int]:
        """Loss of a batch of rows plus its pseudo-positives (Algorithm 1 with fraction ``p``);
        returns (loss, number of pseudo rows)."""
        cfg, dev = self.config, self.device
        batch = batch.to(dev)
        pseudo = pseudo_positives(self.model, self.store, batch.user, batch.item, batch.domain, self.num_domains, p,
                                  in_corpus=self.in_corpus, timestamp=batch.timestamp)
        src = pseudo.source
        self.pseudo_candidates += pseudo.candidates
        user = torch.cat([batch.user, batch.user[src]])
        item = torch.cat([batch.item, batch.item[src]])
        domain = torch.cat([batch.domain, pseudo.domain])
        timestamp = torch.cat([batch.timestamp, batch.timestamp[src]])
        weight = torch.cat([batch.weight, torch.full((len(src),), cfg.self_training.weight, device=dev)])
        if self.domain_factor is not None:  # a pseudo row weighs as a row of the domain it is labelled for
            weight = weight * self.domain_factor[domain]
        u = self.model.user_embedding(self.store.user_features(user, domain, exclude_item=item, device=dev,
                                                               before=(timestamp, item)), domain)  # (B', O)
        if self.full:
            return self._full(u, item, domain, weight), len(src)
        return self._sampled_in_batch(u, item, domain, weight), len(src)

    def sequence_loss(self, batch: SequenceBatch) -> tuple[torch.Tensor, int]:
        """Loss of every position of a batch of sequences; returns (loss, rows)."""
        batch = batch.to(self.device)
        rows = batch.target > 0  # (B, L)
        features = self.store.position_features(batch.user, batch.domain, device=self.device)
        u = self.model.user_embedding_positions(features, batch.window, batch.window_domain, batch.domain,
                                                rows)  # (N, O)
        item, domain, weight = batch.target[rows], batch.domain[rows], batch.weight[rows]
        if self.domain_factor is not None:
            weight = weight * self.domain_factor[domain]
        if self.full:
            return self._full(u, item, domain, weight), len(item)
        return self._sampled_shared(u, item, domain, weight), len(item)

    # ------------------------------------------------------------------ objectives
    def corpus_matrix(self, d: int) -> torch.Tensor:
        """(|C_d|, O) vectors of the items a domain-d row's full softmax runs over (d's corpus, or
        every corpus's items without ``corpus_negatives_only``), with gradient."""
        if d not in self._corpus_features:  # the features of a corpus do not change: look them up once
            self._corpus_features[d] = self.store.item_features(self.corpus[d], d, device=self.device)
        ids = self._corpus_features[d]
        dom = torch.full((len(self.corpus[d]),), d, dtype=torch.long, device=self.device)
        return self.model.item_embedding(ids, dom)

    def _full(self, u: torch.Tensor, item: torch.Tensor, domain: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Eq. 2-3 per domain: each row against its domain's whole corpus (or every corpus)."""
        total = u.new_zeros(())
        for d, rows in domain_groups(domain, self.num_domains):
            target = self.corpus_position[d, item[rows]]  # (n,)
            if bool((target < 0).any()):
                raise ValueError(f"a training row's item is not in domain {d}'s corpus")
            total = total + full_softmax_loss(u.index_select(0, rows), self.corpus_matrix(d), target,
                                              reduction="sum", temperature=self.config.temperature,
                                              weight=weight[rows])
        return total / weight.sum().clamp_min(1e-12)

    def _item_columns(self, u: torch.Tensor, domain: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """(B, N) scores of every row against every column, the item tower run once per distinct
        column item and per domain present."""
        distinct, where = torch.unique(columns, return_inverse=True)
        distinct_host = distinct.cpu()  # feature lookups run on the host: one copy for all domains
        logits = torch.empty(len(u), len(columns), dtype=u.dtype, device=u.device)  # (B, N)
        for d in torch.unique(domain).tolist():
            rows = domain == d
            dvec = torch.full((len(distinct),), d, dtype=torch.long, device=u.device)
            v = self.model.item_embedding(self.store.item_features(distinct_host, d, device=u.device), dvec)  # (N', O)
            logits[rows] = u[rows] @ v[where].T
        return logits

    def _sampled_in_batch(self, u, item, domain, weight) -> torch.Tensor:
        """Eq. 4-5 over in-batch positives plus shared sampled negatives."""
        cfg, dev = self.config, self.device
        negatives = self.sampler.sample(cfg.num_negatives)
        columns = torch.cat([item, negatives])  # (N,) = in-batch positives + sampled negatives
        logits = self._item_columns(u, domain, columns)  # (B, N)
        if cfg.corpus_negatives_only:  # a domain's softmax runs over that domain's corpus only
            outside = ~self.in_corpus[:, columns][domain]  # (B, N); columns first: never (B, I)
            diagonal = torch.arange(len(u), device=dev)
            outside[diagonal, diagonal] = False  # never the positive
            logits = logits.masked_fill(outside, float("-inf"))
        log_q = self.sampler.log_q(columns, len(u), cfg.num_negatives)
        return sampled_softmax_loss(logits, torch.arange(len(u), device=dev), item, columns, log_q,
                                    temperature=cfg.temperature, weight=weight)

    def _sampled_shared(self, u, item, domain, weight) -> torch.Tensor:
        """Eq. 4-5 with each row's own positive plus the shared sampled negatives as columns (a
        batch of sequences has too many rows for in-batch columns)."""
        cfg, dev = self.config, self.device
        negatives = self.sampler.sample(max(1, cfg.num_negatives))  # (M,)
        pos = u.new_empty(len(u))  # (N,)
        neg = u.new_empty(len(u), len(negatives))  # (N, M)
        for d in torch.unique(domain).tolist():
            rows = domain == d
            distinct, where = torch.unique(item[rows], return_inverse=True)
            dvec = torch.full((len(distinct),), d, dtype=torch.long, device=dev)
            vp = self.model.item_embedding(self.store.item_features(distinct.cpu(), d, device=dev), dvec)  # (n', O)
            pos[rows] = (u[rows] * vp[where]).sum(-1)
            dvec = torch.full((len(negatives),), d, dtype=torch.long, device=dev)
            vn = self.model.item_embedding(self.store.item_features(negatives.cpu(), d, device=dev), dvec)  # (M, O)
            neg[rows] = u[rows] @ vn.T
        if cfg.corpus_negatives_only:
            neg = neg.masked_fill(~self.in_corpus[:, negatives][domain], float("-inf"))
        neg = neg.masked_fill(negatives.unsqueeze(0) == item.unsqueeze(1), float("-inf"))  # accidental hits
        log_q_pos = self.sampler.log_q(item, 0, len(negatives))  # (N,)
        log_q_neg = self.sampler.log_q(negatives, 0, len(negatives))  # (M,)
        z = torch.cat([(pos / cfg.temperature - log_q_pos).unsqueeze(1),
                       neg / cfg.temperature - log_q_neg.unsqueeze(0)], dim=1)  # (N, 1 + M), eq. 5
        loss = torch.nn.functional.cross_entropy(z, torch.zeros(len(u), dtype=torch.long, device=dev),
                                                 reduction="none")  # eq. 4
        return (loss * weight).sum() / weight.sum().clamp_min(1e-12)
