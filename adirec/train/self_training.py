"""Cross-domain self-training with pseudo-labels (paper section 4.3, Algorithm 1, eq. 27).

Each positive interaction (u, v) of a source domain ``i`` is scored, without gradient, as if it
had happened in every other domain ``j``: the user's vector in domain j against the item's vector
in domain j (eq. 27's confidence, the model's own score). For every pair (i, j) the most confident
fraction ``p`` of the pair's candidates become pseudo-positives of domain ``j`` and are trained on
alongside the real batch. ``p`` starts at ``p0`` and grows by ``delta_p`` per epoch up to ``max_p``
(SelfTrainingConfig): early on the model's confidence means little, so few labels are trusted.

Candidates: a row of domain i is a candidate for domain j != i only when its item is in domain
j's corpus (``in_corpus[j, item]``): domain j can only be taught to recommend what it serves. On
data whose domains' catalogues are disjoint there are no candidates, and the result says so
(``candidates == 0``).

Batch statistics (DSBN, eq. 20): the candidates are scored in eval mode, so scoring never moves
any running statistics and a candidate that is not selected leaves no trace. A selected row is
returned with its target domain j; the trainer appends it to the batch, so in the training
forward pass it is normalised with domain j's batch statistics and moves domain j's running
statistics, like a real row of domain j. That is deliberate: the row is trained as a domain-j
example through domain j's networks, and train-mode batch norm cannot normalise a row with domain
j's batch statistics without counting it in them. The pseudo rows are at most ``max_p`` of the
other domains' rows of a batch, which bounds how far they can pull domain j's statistics toward
the users of other domains.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from adirec.models.layers import domain_groups


def select_top_fraction(confidence: torch.Tensor, p: float) -> torch.Tensor:
    """Indices of the ``floor(p * n)`` most confident entries of ``confidence`` (n,)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fraction p must be in [0, 1], got {p}")
    k = int(p * len(confidence))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=confidence.device)
    return torch.topk(confidence, k).indices


@dataclass(frozen=True)
class PseudoPositives:
    """The pseudo-positives of one batch and how they were found.

    Attributes:
        source: (n,) long, the row of the batch each pseudo-positive comes from: the pseudo row is
            that row's user and item (and place in the user's timeline) in the target domain.
        user, item, domain: (n,) long tensors; ``domain`` is the target domain j of each row.
            Rows come grouped by target domain, then by source domain, both ascending.
        candidates: (row, target domain) pairs that could be labelled: the row's domain is not
            the target and its item is in the target's corpus. 0 means self-training has
            nothing to label on this batch (e.g. disjoint catalogues).
        pairs: ``{(source i, target j): (candidates, selected)}`` for every pair with candidates.

    """

    source: torch.Tensor
    user: torch.Tensor
    item: torch.Tensor
    domain: torch.Tensor
    candidates: int = 0
    pairs: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)

    @property
    def num_selected(self) -> int:
        return int(self.user.numel())


def corpus_mask(corpus, num_items: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(D, I + 1) bool: ``mask[d, i]`` is True when item id i is in domain d's corpus
    (``corpus``: one array of item ids per domain, e.g. ``MultiDomainData.corpus``)."""
    mask = torch.zeros(len(corpus), num_items + 1, dtype=torch.bool)
    for d, items in enumerate(corpus):
        mask[d, torch.as_tensor(items, dtype=torch.long)] = True
    return mask.to(device) if device is not None else mask


def _scores_in_domain(model, store, user: torch.Tensor, item: torch.Tensor, target: int,
                      timestamp: torch.Tensor | None) -> torch.Tensor:
    """The model's score of each (user, item) pair as if it happened in domain ``target`` (n,),
    eq. 27's confidence. The user's history is the one the source row sees: the positives before
    it on data with time, else every positive but the item being scored."""
    dj = torch.full((len(user),), target, dtype=torch.long, device=user.device)
    before = None if timestamp is None else (timestamp, item)
    u = model.user_embedding(store.user_features(user, dj, exclude_item=item, device=user.device,
                                                 before=before), dj)  # (n, O)
    v = model.item_embedding(store.item_features(item, dj, device=user.device), dj)  # (n, O)
    return model.score(u, v)  # (n,)


@torch.no_grad()
def pseudo_positives(model, store, user: torch.Tensor, item: torch.Tensor, domain: torch.Tensor,
                     num_domains: int, p: float, *, in_corpus: torch.Tensor | None = None,
                     timestamp: torch.Tensor | None = None) -> PseudoPositives:
    """Algorithm 1, lines 4-8: the pseudo-positives of a batch of positives (user, item, domain),
    the top fraction ``p`` of each (source i, target j) pair's candidates by confidence.

    ``in_corpus``: (D, I + 1) bool, which items each domain serves (:func:`corpus_mask`); a
    pseudo-item for domain j must be in domain j's corpus. None means every item is in every
    corpus, which is right only when every domain serves the whole catalogue: callers that know
    the corpora pass them. ``timestamp`` (B,) places each row in its user's timeline, so that a
    candidate is scored with the history its source row sees.

    The model is scored in eval mode (see the module docstring on batch statistics) and put back
    in the mode it was in.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"pseudo-label fraction p must be in [0, 1], got {p}")
    if in_corpus is not None:
        if in_corpus.dim() != 2 or in_corpus.shape[0] != num_domains or in_corpus.dtype != torch.bool:
            raise ValueError(f"in_corpus must be a (num_domains={num_domains}, I + 1) bool tensor, "
                             f"got {tuple(in_corpus.shape)} {in_corpus.dtype}")
        if item.numel() and int(item.max()) >= in_corpus.shape[1]:
            raise ValueError(f"item id {int(item.max())} is outside in_corpus's {in_corpus.shape[1]} columns")
    empty = torch.zeros(0, dtype=torch.long, device=user.device)
    if num_domains < 2:
        return PseudoPositives(empty, empty, empty, empty)
    # the candidates of every target domain, before any scoring: counted even when p is 0
    eligible = []
    for j in range(num_domains):
        mask = domain != j  # (B,)
        if in_corpus is not None:
            mask &= in_corpus[j, item]
        eligible.append(torch.nonzero(mask).squeeze(1))  # (n_j,) row indices
    candidates = sum(len(rows) for rows in eligible)
    was_training = model.training
    model.eval()
    sources, domains, pairs = [], [], {}
    try:
        for j, rows in enumerate(eligible):
            if len(rows) == 0:
                continue
            times = None if timestamp is None else timestamp[rows]
            confidence = _scores_in_domain(model, store, user[rows], item[rows], j, times) if p > 0 else None
            for i, idx in domain_groups(domain[rows], num_domains):  # idx: positions within rows
                top = select_top_fraction(confidence[idx], p) if confidence is not None else idx[:0]
                keep = rows[idx[top]]
                pairs[(i, j)] = (len(idx), len(keep))
                sources.append(keep)
                domains.append(torch.full((len(keep),), j, dtype=torch.long, device=user.device))
    finally:
        model.train(was_training)
    if not sources:
        return PseudoPositives(empty, empty, empty, empty, candidates, pairs)
    source = torch.cat(sources)
    return PseudoPositives(source, user[source], item[source], torch.cat(domains), candidates, pairs)
