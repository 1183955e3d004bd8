"""Cross-domain self-training with pseudo-labels (paper section 4.3, Algorithm 1, eq. 27).

Each interaction of domain ``i`` is scored, without gradient, as if it had happened in every
other domain ``j``; the most confident fraction ``p`` of those become pseudo-positives of domain
``j`` and are trained on alongside the real batch. ``p`` starts at ``p0`` and grows by ``delta_p``
per epoch up to ``max_p``: early on the model's confidence means little, so few labels are trusted.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SelfTrainingConfig:
    """Attributes:
        enabled: add pseudo-labelled samples to the loss.
        start_epoch: first epoch (0-based) that uses pseudo-labels.
        p0: fraction of candidate samples kept as pseudo-positives at ``start_epoch``.
        delta_p: growth of that fraction per epoch.
        max_p: ceiling of the fraction.
        weight: weight of a pseudo-labelled sample in the loss (real samples weigh 1).
    """

    enabled: bool = True
    start_epoch: int = 1
    p0: float = 0.02
    delta_p: float = 0.02
    max_p: float = 0.1
    weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("p0", "delta_p", "max_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"self-training {name} must be in [0, 1], got {v}")
        if self.start_epoch < 0:
            raise ValueError(f"self-training start_epoch must be >= 0, got {self.start_epoch}")
        if self.weight < 0:
            raise ValueError(f"self-training weight must be >= 0, got {self.weight}")

    def fraction(self, epoch: int) -> float:
        """p for ``epoch`` (0 when disabled or before ``start_epoch``)."""
        if not self.enabled or epoch < self.start_epoch:
            return 0.0
        return min(self.max_p, self.p0 + self.delta_p * (epoch - self.start_epoch))


def select_top_fraction(confidence: torch.Tensor, p: float) -> torch.Tensor:
    """Indices of the ``floor(p * n)`` most confident entries of ``confidence`` (n,)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"fraction p must be in [0, 1], got {p}")
    k = int(p * len(confidence))
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=confidence.device)
    return torch.topk(confidence, k).indices


@torch.no_grad()
def pseudo_positives(model, store, user: torch.Tensor, item: torch.Tensor, domain: torch.Tensor,
                     num_domains: int, p: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 1, lines 4-8: (user, item, target domain) of the selected pseudo-positives.

    The model is scored in eval mode so that batch statistics of the real batch are not
    disturbed by samples that may never be used.
    """
    empty = torch.zeros(0, dtype=torch.long, device=user.device)
    if p <= 0 or num_domains < 2:
        return empty, empty, empty
    was_training = model.training
    model.eval()
    users, items, domains = [], [], []
    for j in range(num_domains):
        rows = torch.nonzero(domain != j).squeeze(1)
        if len(rows) == 0:
            continue
        dj = torch.full((len(rows),), j, dtype=torch.long, device=user.device)
        u = model.user_embedding(store.user_features(user[rows], dj, exclude_item=item[rows], device=user.device), dj)
        v = model.item_embedding(store.item_features(item[rows], dj, device=user.device), dj)
        confidence = model.score(u, v)  # (n,) eq. 27's confidence of a label in domain j
        keep = rows[select_top_fraction(confidence, p)]
        users.append(user[keep]); items.append(item[keep]); domains.append(torch.full((len(keep),), j, device=user.device))
    model.train(was_training)
    if not users:
        return empty, empty, empty
    return torch.cat(users), torch.cat(items), torch.cat(domains).long()
