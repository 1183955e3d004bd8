"""Cross-domain self-training with pseudo-labels (paper section 4.3, Algorithm 1, eq. 27).

Each interaction of domain ``i`` is scored, without gradient, as if it had happened in every
other domain ``j``; the most confident fraction ``p`` of those become pseudo-positives of domain
``j`` and are trained on alongside the real batch. ``p`` starts at ``p0`` and grows by ``delta_p``
per epoch up to ``max_p``: early on the model's confidence means little, so few labels are trusted.
"""
from __future__ import annotations

import torch


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
                     num_domains: int, p: float, *, timestamp: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Algorithm 1, lines 4-8: the selected pseudo-positives as (row of the batch it comes from
    (n,), target domain (n,)); the pseudo row is that row's user and item in the target domain.

    ``timestamp`` places each row in its user's timeline, so that a pseudo row sees the history
    its source row sees. The model is scored in eval mode so that batch statistics of the real
    batch are not disturbed by samples that may never be used.
    """
    empty = torch.zeros(0, dtype=torch.long, device=user.device)
    if p <= 0 or num_domains < 2:
        return empty, empty
    was_training = model.training
    model.eval()
    sources, targets = [], []
    for j in range(num_domains):
        rows = torch.nonzero(domain != j).squeeze(1)
        if len(rows) == 0:
            continue
        dj = torch.full((len(rows),), j, dtype=torch.long, device=user.device)
        before = None if timestamp is None else (timestamp[rows], item[rows])
        u = model.user_embedding(store.user_features(user[rows], dj, exclude_item=item[rows], device=user.device,
                                                     before=before), dj)
        v = model.item_embedding(store.item_features(item[rows], dj, device=user.device), dj)
        confidence = model.score(u, v)  # (n,) eq. 27's confidence of a label in domain j
        keep = rows[select_top_fraction(confidence, p)]
        sources.append(keep)
        targets.append(torch.full((len(keep),), j, dtype=torch.long, device=user.device))
    model.train(was_training)
    if not sources:
        return empty, empty
    return torch.cat(sources), torch.cat(targets)
