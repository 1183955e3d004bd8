"""Building blocks shared by every tower: domain routing, domain-specific batch norm, the MLP,
and the domain interest adaptation layer.

Paper: Jiang et al., "Adaptive Domain Interest Network for Multi-domain Recommendation",
CIKM 2022 (arXiv 2206.09672). Equation numbers below refer to that paper.

Shapes: B batch, F fields, E embedding dim, D domains, H hidden width.
A domain indicator is always a (B,) long tensor with values in [0, D).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# routing rows by domain


def domain_groups(domain: torch.Tensor, num_domains: int) -> list[tuple[int, torch.Tensor]]:
    """Split a batch by domain: ``[(d, row_index (n_d,)), ...]`` for every domain present.

    One sort and one host sync per call, whatever D is, so the callers can loop over the few
    domains present instead of over rows.
    """
    if domain.dim() != 1:
        raise ValueError(f"domain indicator must be 1-D (B,), got shape {tuple(domain.shape)}")
    if domain.numel() == 0:
        return []
    counts = torch.bincount(domain, minlength=num_domains).tolist()  # raises on negative ids
    if len(counts) > num_domains:
        raise ValueError(f"domain indicator out of range [0, {num_domains}): max {len(counts) - 1}")
    order = torch.argsort(domain, stable=True)
    return [(d, idx) for d, idx in enumerate(order.split(counts)) if idx.numel() > 0]


# -----------------------------------------------------------------------------
# domain-specific batch normalisation (eq. 20)


class DomainSpecificBatchNorm(nn.Module):
    """Batch norm with its own running mean/var and its own affine (gamma, beta) per domain.

    Each domain owns a full ``nn.BatchNorm1d``; the rows of a mixed-domain batch are split by
    domain and each group goes through its own norm (eq. 20). Consequences, on purpose:

    * training: domain d's rows are normalised with domain d's batch statistics and only domain
      d's running statistics move; eval: domain d's running statistics are used.
    * a domain absent from the batch is not touched at all: its running stats stay, and its
      gamma/beta receive no gradient (``grad is None``, not zero), so no optimizer, not even one
      with momentum or weight decay, changes them on that step.
    * a domain with a single row in a training batch has no batch variance. Those rows are
      normalised with that domain's *running* statistics (as in eval) and the running
      statistics are not updated; gamma/beta still get their gradient. This never crashes
      (``nn.BatchNorm1d`` would) and never pollutes the running stats with a one-row estimate.
    """

    def __init__(self, num_features: int, num_domains: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_features = num_features
        self.num_domains = num_domains
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(num_features, eps=eps, momentum=momentum) for _ in range(num_domains)
        )

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # x: (B, H), domain: (B,)
        out = torch.empty_like(x)
        for d, idx in domain_groups(domain, self.num_domains):
            bn = self.norms[d]
            xd = x[idx]  # (n_d, H)
            if self.training and xd.shape[0] == 1:
                yd = F.batch_norm(
                    xd, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
                )
            else:
                yd = bn(xd)
            out[idx] = yd
        return out  # (B, H)


# -----------------------------------------------------------------------------
# MLP: Linear -> norm -> ReLU -> dropout per layer


class MLP(nn.Module):
    """A stack of ``Linear -> norm -> ReLU -> dropout`` layers.

    The norm is :class:`DomainSpecificBatchNorm` when ``dsbn`` (every norm of the network is
    domain-specific, as in the paper) and a plain ``nn.BatchNorm1d`` otherwise. An empty
    ``hidden`` gives the identity (``out_dim == in_dim``).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        num_domains: int = 1,
        dsbn: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        hidden = tuple(hidden)
        if in_dim < 1:
            raise ValueError(f"MLP in_dim must be >= 1, got {in_dim}")
        if any(h < 1 for h in hidden):
            raise ValueError(f"MLP hidden sizes must be >= 1, got {hidden}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dsbn = dsbn
        self.out_dim = hidden[-1] if hidden else in_dim
        dims = (in_dim, *hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.norms = nn.ModuleList(
            DomainSpecificBatchNorm(h, num_domains) if dsbn else nn.BatchNorm1d(h) for h in hidden
        )
        self.dropout = nn.Dropout(dropout)

    def remove_norms(self) -> None:
        """Drop the normalisation layers (``Linear -> ReLU -> dropout``)."""
        self.norms = None

    def after_linear(self, i: int, z: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """norm -> ReLU -> dropout of layer ``i``; split out so that network multiplication
        (experts.py, eq. 16-17) can run this MLP with its Linear weights swapped."""
        if self.norms is not None:
            z = self.norms[i](z, domain) if self.dsbn else self.norms[i](z)
        return self.dropout(F.relu(z))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # x: (B, in_dim), domain: (B,)
        for i, linear in enumerate(self.linears):
            x = self.after_linear(i, linear(x), domain)
        return x  # (B, out_dim)


# -----------------------------------------------------------------------------
# domain interest adaptation layer (section 4.2.2, eq. 21-26)
#
# Every variant keeps one set of parameters per domain, picks a row's set by its domain
# indicator and maps field embeddings (B, F, E) -> (B, F, E). Each stores the per-field weights
# it used on its last forward in ``last_weights`` (B, F) (None where the method has none), and
# ``field_weights(e, domain)`` recomputes them without changing anything, for heat maps of
# attention per domain and field.


class Adaptation(nn.Module):
    """Base of the adaptation layers; the identity (``dial="none"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.last_weights: torch.Tensor | None = None

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return e


class LinearAdaptation(Adaptation):
    """Linear transformation (eq. 21-22): per domain and field an element-wise gain and shift,
    ``e'_f = w_{d,f} * e_f + b_{d,f}``.

    Starts as the identity (gain 1, shift 0) so that every domain begins from the shared
    embedding and only moves away where its data asks for it. Its per-field weight is the mean
    gain of the field, the closest thing this method has to an attention weight.
    """

    def __init__(self, num_fields: int, dim: int, num_domains: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_domains, num_fields, dim))  # (D, F, E)
        self.bias = nn.Parameter(torch.zeros(num_domains, num_fields, dim))  # (D, F, E)

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.weight[domain].mean(-1)  # (B, F)

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # e: (B, F, E)
        w, b = self.weight[domain], self.bias[domain]  # (B, F, E) each
        self.last_weights = w.mean(-1).detach()  # (B, F)
        return e * w + b  # (B, F, E)


class VanillaAttentionAdaptation(Adaptation):
    """Vanilla attention (eq. 23-24): a learned query per domain scores each field embedding,
    a softmax over fields turns the scores into weights, and each field is scaled by its weight:
    ``a_{d,f} = softmax_f(q_d . e_f / sqrt(E))``, ``e'_f = a_{d,f} e_f``.
    """

    def __init__(self, num_fields: int, dim: int, num_domains: int):
        super().__init__()
        # random, not zero: a zero query would give every domain the same uniform weights
        self.query = nn.Parameter(torch.randn(num_domains, dim) / math.sqrt(dim))  # (D, E)
        self.scale = 1.0 / math.sqrt(dim)

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        scores = torch.einsum("bfe,be->bf", e, self.query[domain]) * self.scale  # (B, F), eq. 23
        return scores.softmax(dim=-1)  # (B, F), eq. 23

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        a = self.field_weights(e, domain)  # (B, F)
        self.last_weights = a.detach()
        return e * a.unsqueeze(-1)  # (B, F, E), eq. 24


class SEAdaptation(Adaptation):
    """Squeeze-and-excitation per domain (eq. 25-26).

    Squeeze: each field embedding is mean-pooled to a scalar, z (B, F). Excitation: two FC
    layers of domain d with reduction ``r`` (F -> max(1, F // r) -> F), ReLU between and a
    sigmoid after, give one weight per field for that domain (eq. 25). Re-weight: each field
    embedding is multiplied by its weight (eq. 26).
    """

    def __init__(self, num_fields: int, dim: int, num_domains: int, reduction: int = 4):
        super().__init__()
        if reduction < 1:
            raise ValueError(f"SE reduction must be >= 1, got {reduction}")
        hidden = max(1, num_fields // reduction)
        self.hidden = hidden
        # one pair of FC layers per domain, stored stacked so a row's set is one gather;
        # initialised like nn.Linear (uniform in +-1/sqrt(fan_in)), independently per domain
        b1, b2 = 1.0 / math.sqrt(num_fields), 1.0 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(num_domains, num_fields, hidden).uniform_(-b1, b1))  # (D, F, h)
        self.b1 = nn.Parameter(torch.empty(num_domains, hidden).uniform_(-b1, b1))  # (D, h)
        self.w2 = nn.Parameter(torch.empty(num_domains, hidden, num_fields).uniform_(-b2, b2))  # (D, h, F)
        self.b2 = nn.Parameter(torch.empty(num_domains, num_fields).uniform_(-b2, b2))  # (D, F)

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        z = e.mean(dim=-1)  # (B, F) squeeze
        s = F.relu(torch.einsum("bf,bfh->bh", z, self.w1[domain]) + self.b1[domain])  # (B, h)
        logits = torch.einsum("bh,bhf->bf", s, self.w2[domain]) + self.b2[domain]  # (B, F)
        return torch.sigmoid(logits)  # (B, F), eq. 25

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        a = self.field_weights(e, domain)  # (B, F)
        self.last_weights = a.detach()
        return e * a.unsqueeze(-1)  # (B, F, E), eq. 26


class HiddenSE(SEAdaptation):
    """The SE block of eq. 25-26 on a hidden vector (B, H) instead of field embeddings.

    Each of the H units is its own "field" of width 1, so the squeeze is the identity and the
    per-domain excitation maps H -> max(1, H // r) -> H. Used for the extra SE placements inside
    the backbone (the paper's 3-SE / 4-SE variants, Table 8).
    """

    def __init__(self, width: int, num_domains: int, reduction: int = 4):
        super().__init__(width, 1, num_domains, reduction)

    def forward(self, h: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return super().forward(h.unsqueeze(-1), domain).squeeze(-1)  # (B, H)


ADAPTATIONS = ("se", "va", "lt", "none")


def make_adaptation(
    kind: str, num_fields: int, dim: int, num_domains: int, se_reduction: int = 4
) -> Adaptation:
    """Domain interest adaptation layer by name: "se" | "va" | "lt" | "none" (identity)."""
    if kind == "se":
        return SEAdaptation(num_fields, dim, num_domains, se_reduction)
    if kind == "va":
        return VanillaAttentionAdaptation(num_fields, dim, num_domains)
    if kind == "lt":
        return LinearAdaptation(num_fields, dim, num_domains)
    if kind == "none":
        return Adaptation()
    raise ValueError(f"unknown adaptation {kind!r}; known: {ADAPTATIONS}")
