"""Negative proposal ``Q`` for the sampled softmax: unigram^alpha (default) or uniform."""
from __future__ import annotations

import numpy as np
import torch

PROPOSALS = ("unigram", "uniform")


class NegativeSampler:
    """Draws extra negatives from ``Q`` and tells the logQ correction of any column.

    A batch's own items are negatives for the other rows too; they arrive with the data
    frequency ``p(v)``. With ``B`` in-batch items and ``M`` sampled ones, item ``v`` is expected
    ``B p(v) + M Q(v)`` times among the negatives, and the log of that is the correction.
    """

    def __init__(self, item_counts: np.ndarray, *, proposal: str = "unigram", alpha: float = 0.75,
                 seed: int = 0, device: torch.device | str = "cpu"):
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"proposal alpha must be in [0, 1], got {alpha}")
        counts = np.asarray(item_counts, dtype=np.float64).copy()
        counts[0] = 0.0  # never propose the unknown item
        if counts.sum() <= 0:
            raise ValueError("item counts are all zero: nothing to sample")
        q = counts ** alpha if proposal == "unigram" else (counts > 0).astype(np.float64)
        # drawn where the loss runs: no host round trip per step (a GPU draws other numbers
        # than the CPU for the same seed)
        self.data_p = torch.from_numpy((counts / counts.sum()).astype(np.float32)).to(device)
        self.q = torch.from_numpy((q / q.sum()).astype(np.float32)).to(device)
        self.generator = torch.Generator(device=self.q.device).manual_seed(seed)

    def sample(self, num: int) -> torch.Tensor:
        if num == 0:  # in-batch negatives only
            return torch.zeros(0, dtype=torch.long, device=self.q.device)
        return torch.multinomial(self.q, num, replacement=True, generator=self.generator)

    def log_q(self, columns: torch.Tensor, num_in_batch: int, num_sampled: int) -> torch.Tensor:
        expected = num_in_batch * self.data_p[columns] + num_sampled * self.q[columns]
        return torch.log(expected.clamp_min(1e-12))
