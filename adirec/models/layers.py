"""Building blocks shared by every tower: domain routing, domain-specific batch norm, the
domain interest adaptation layer and the MLP.

Paper: Jiang et al., "Adaptive Domain Interest Network for Multi-domain Recommendation",
CIKM 2022 (arXiv 2206.09672). Equation numbers below refer to that paper.

Shapes: B batch, F fields, E embedding dim, D domains, H hidden width.
A domain indicator is always a (B,) long tensor with values in [0, D).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import cast

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


def route_by_domain(x: torch.Tensor, domain: torch.Tensor, num_domains: int,
                    fn: Callable[[int, torch.Tensor], torch.Tensor], width: int) -> torch.Tensor:
    """``fn(d, x_d)`` on the rows ``x_d`` (n_d, ...) of every domain d present, put back in the
    batch's row order: (B, width).

    A batch of a single domain (the item tower over one domain's corpus, a one-domain network)
    goes through ``fn`` whole, with no copy. Otherwise each domain's rows are gathered with
    ``index_select``, whose backward is one ``index_add``: plain ``x[idx]`` would backpropagate
    through an accumulating ``index_put``, slower on the CPU.
    """
    groups = domain_groups(domain, num_domains)
    if len(groups) == 1:
        return fn(groups[0][0], x)
    out = x.new_empty(x.shape[0], width)  # (B, width)
    for d, idx in groups:
        out[idx] = fn(d, x.index_select(0, idx))  # (n_d, width)
    return out


def rows_of_domain(table: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
    """Each row's slice of a per-domain table: ``table[domain]``, (D, ...) -> (B, ...).

    ``index_select``, whose backward is an ``index_add`` of B rows onto D: ``table[domain]``
    would backpropagate through an accumulating ``index_put``, which costs more than a small
    layer's whole computation on the CPU."""
    return table.index_select(0, domain)  # (B, ...)


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
        def norm(d: int, xd: torch.Tensor) -> torch.Tensor:  # (n_d, H)
            bn = cast(nn.BatchNorm1d, self.norms[d])
            if self.training and xd.shape[0] == 1:
                return F.batch_norm(xd, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False,
                                    eps=bn.eps)
            return bn(xd)

        return route_by_domain(x, domain, self.num_domains, norm, self.num_features)  # (B, H)


# -----------------------------------------------------------------------------
# domain interest adaptation layer (section 4.2.2, eq. 21-26)
#
# Every variant maps field embeddings (B, F, E) -> (B, F, E). With ``per_domain`` (the paper's
# layer) it keeps one set of parameters per domain and picks a row's set by its domain indicator;
# without, one set serves every domain (Table 8's 1-SE: a single SE block shared by all domains).
# ``num_sets`` is the number of sets held (D or 1), for an SE layer the number of SE blocks.
# Each variant stores the per-field weights of its last forward in ``last_weights`` (B, F) (None
# where the method has none), and ``field_weights(e, domain)`` recomputes them without changing
# anything, for heat maps of attention per domain and field.


class Adaptation(nn.Module):
    """Base of the adaptation layers; the identity (``dial="none"``)."""

    def __init__(self, num_domains: int = 1, per_domain: bool = True) -> None:
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.per_domain = per_domain
        self.num_sets = num_domains if per_domain else 1
        self.last_weights: torch.Tensor | None = None

    def parameter_set(self, domain: torch.Tensor) -> torch.Tensor:
        """Index of each row's parameter set (B,): its domain, or 0 when one set serves all."""
        return domain if self.per_domain else torch.zeros_like(domain)

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor | None:
        return None

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return e


class LinearAdaptation(Adaptation):
    """Linear transformation (eq. 21-22): per domain and field an element-wise gain and shift,
    ``F'_i = w_i^(d) * F_i + b_i^(d)``.

    Starts as the identity (gain 1, shift 0) so that every domain begins from the shared
    embedding and only moves away where its data asks for it. Its per-field weight is the mean
    gain of the field, the closest thing this method has to an attention weight.
    """

    def __init__(self, num_fields: int, dim: int, num_domains: int, per_domain: bool = True):
        super().__init__(num_domains, per_domain)
        self.weight = nn.Parameter(torch.ones(self.num_sets, num_fields, dim))  # (D, F, E)
        self.bias = nn.Parameter(torch.zeros(self.num_sets, num_fields, dim))  # (D, F, E)

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return rows_of_domain(self.weight, self.parameter_set(domain)).mean(-1)  # (B, F)

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # e: (B, F, E)
        s = self.parameter_set(domain)
        w, b = rows_of_domain(self.weight, s), rows_of_domain(self.bias, s)  # (B, F, E) each
        self.last_weights = w.mean(-1).detach()  # (B, F)
        return e * w + b  # (B, F, E), eq. 21-22


class VanillaAttentionAdaptation(Adaptation):
    """Vanilla attention (eq. 23-24): one learned query per field and domain, ``Q_i^(d)`` (E,),
    scores its field's embedding and a sigmoid turns the score into that field's weight:
    ``alpha_i = sigmoid(Q_i^(d) . F_i)`` (eq. 23), ``F'_i = alpha_i F_i`` (eq. 24).

    Each field is weighed on its own (a sigmoid per field, not a softmax over fields), so the
    weights need not sum to one: a domain may keep every field, or damp several at once.
    """

    def __init__(self, num_fields: int, dim: int, num_domains: int, per_domain: bool = True):
        super().__init__(num_domains, per_domain)
        # nn.Linear's initialisation, independently per domain and field
        bound = 1.0 / math.sqrt(dim)
        self.query = nn.Parameter(torch.empty(self.num_sets, num_fields, dim).uniform_(-bound, bound))  # (D, F, E)

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        q = rows_of_domain(self.query, self.parameter_set(domain))  # (B, F, E)
        return torch.sigmoid((q * e).sum(dim=-1))  # (B, F), eq. 23

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        a = self.field_weights(e, domain)  # (B, F)
        self.last_weights = a.detach()
        return e * a.unsqueeze(-1)  # (B, F, E), eq. 24


class SEAdaptation(Adaptation):
    """Squeeze-and-excitation (eq. 25-26), one SE block per domain (or one for all domains).

    Squeeze: each field embedding is mean-pooled to a scalar, ``z = [mean(F_1), ..., mean(F_F)]``
    (B, F). Excitation: two fully connected layers with reduction ``r`` (F -> max(1, F // r) -> F),
    ReLU between and a sigmoid after, ``alpha = sigmoid(W_2 ReLU(W_1 z))`` (eq. 25), one weight per
    field. Re-weight: ``F'_i = alpha_i F_i`` (eq. 26). The FC layers have no bias, as eq. 25 writes
    them.
    """

    def __init__(self, num_fields: int, dim: int, num_domains: int, reduction: int = 4,
                 per_domain: bool = True):
        super().__init__(num_domains, per_domain)
        if reduction < 1:
            raise ValueError(f"SE reduction must be >= 1, got {reduction}")
        hidden = max(1, num_fields // reduction)
        self.hidden = hidden
        # each block's pair of FC layers, stored stacked so a row's block is one gather;
        # initialised like nn.Linear (uniform in +-1/sqrt(fan_in)), independently per block
        b1, b2 = 1.0 / math.sqrt(num_fields), 1.0 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(self.num_sets, num_fields, hidden).uniform_(-b1, b1))  # (D, F, h)
        self.w2 = nn.Parameter(torch.empty(self.num_sets, hidden, num_fields).uniform_(-b2, b2))  # (D, h, F)

    def field_weights(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        z = e.mean(dim=-1)  # (B, F), squeeze
        if self.num_sets == 1:
            # one block for every row: plain matrix products. Gathering a row's block would copy
            # (F, h) weights per row, which inside an expert (F = the hidden width) costs more
            # than the rest of the network
            hidden = F.relu(z @ self.w1[0])  # (B, h)
            return torch.sigmoid(hidden @ self.w2[0])  # (B, F), eq. 25
        s = self.parameter_set(domain)
        hidden = F.relu(torch.einsum("bf,bfh->bh", z, rows_of_domain(self.w1, s)))  # (B, h)
        return torch.sigmoid(torch.einsum("bh,bhf->bf", hidden, rows_of_domain(self.w2, s)))  # (B, F), eq. 25

    def forward(self, e: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        a = self.field_weights(e, domain)  # (B, F)
        self.last_weights = a.detach()
        return e * a.unsqueeze(-1)  # (B, F, E), eq. 26


class HiddenSE(SEAdaptation):
    """The SE block of eq. 25-26 on a hidden vector (B, H) instead of field embeddings.

    Each of the H units is its own "field" of width 1, so the squeeze is the identity and the
    excitation maps H -> max(1, H // r) -> H. Used inside the experts for Table 8's 4-SE layout
    (see :class:`MLP`).
    """

    def __init__(self, width: int, num_domains: int = 1, reduction: int = 4, per_domain: bool = True):
        super().__init__(width, 1, num_domains, reduction, per_domain)

    def forward(self, h: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return super().forward(h.unsqueeze(-1), domain).squeeze(-1)  # (B, H)


ADAPTATIONS = ("se", "va", "lt", "none")


def make_adaptation(kind: str, num_fields: int, dim: int, num_domains: int, se_reduction: int = 4,
                    per_domain: bool = True) -> Adaptation:
    """Domain interest adaptation layer by name: "se" | "va" | "lt" | "none" (identity).
    ``per_domain=False``: one layer shared by every domain instead of one per domain."""
    if kind == "se":
        return SEAdaptation(num_fields, dim, num_domains, se_reduction, per_domain)
    if kind == "va":
        return VanillaAttentionAdaptation(num_fields, dim, num_domains, per_domain)
    if kind == "lt":
        return LinearAdaptation(num_fields, dim, num_domains, per_domain)
    if kind == "none":
        return Adaptation(num_domains, per_domain)
    raise ValueError(f"unknown adaptation {kind!r}; known: {ADAPTATIONS}")


# -----------------------------------------------------------------------------
# dropout


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: in training each element is zeroed with probability ``p`` and the rest
    are scaled by ``1 / (1 - p)``; the identity otherwise.

    On the CPU the mask comes from 15-bit uniform integers, four from each draw of torch's
    generator (``random_`` on int64 gives 63 uniform bits: the low 15 bits of each 16-bit lane
    are used), so ``p`` is rounded to a multiple of 1 / 32768 and the scale uses the rounded
    value: in float32 and float64 the expectation is still ``x``. Why: ``torch.nn.functional.dropout``
    draws its mask with ``bernoulli_``, which on an AMD EPYC CPU made dropout about 3x slower
    (forward and backward; benchmarks/README.md, "Dropout and Adam"). On other devices it is
    ``torch.nn.functional.dropout``.
    """
    _check_dropout(p)
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    threshold = min(round(p * _DROPOUT_LEVELS), _DROPOUT_LEVELS - 1)
    n = x.numel()
    draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()  # [0, 2^63)
    uniform = draws.view(torch.int16)[:n].view(x.shape).bitwise_and_(_DROPOUT_LEVELS - 1)  # [0, 2^15)
    keep = (uniform >= threshold).to(x.dtype).mul_(_DROPOUT_LEVELS / (_DROPOUT_LEVELS - threshold))
    return x * keep


_DROPOUT_LEVELS = 1 << 15


def _check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {p}")


class Dropout(nn.Module):
    """:func:`dropout` as a module (``nn.Dropout``'s interface: ``p``, active in training)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        _check_dropout(p)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


# -----------------------------------------------------------------------------
# MLP: Linear -> norm -> ReLU -> dropout per layer


class MLP(nn.Module):
    """A stack of ``Linear -> norm -> ReLU -> dropout`` layers.

    The norm is :class:`DomainSpecificBatchNorm` when ``dsbn`` (every norm of the network is
    domain-specific, as in the paper) and a plain ``nn.BatchNorm1d`` otherwise. An empty
    ``hidden`` gives the identity (``out_dim == in_dim``).

    ``se_reduction`` (an int) puts an SE block inside the network, on the first layer's
    activations (eq. 25-26 with each unit a field; after the first layer's dropout, before the
    second layer, or at the output of a one-layer network). The block belongs to the network:
    one set of weights whatever the row's domain, so inside a shared expert it is shared by all
    domains and inside a domain-specific expert it is that domain's (Table 8's 4-SE layout).
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        num_domains: int = 1,
        dsbn: bool = False,
        dropout: float = 0.0,
        se_reduction: int | None = None,
    ):
        super().__init__()
        hidden = tuple(hidden)
        if in_dim < 1:
            raise ValueError(f"MLP in_dim must be >= 1, got {in_dim}")
        if any(h < 1 for h in hidden):
            raise ValueError(f"MLP hidden sizes must be >= 1, got {hidden}")
        _check_dropout(dropout)
        if se_reduction is not None and not hidden:
            raise ValueError("an SE block inside an MLP needs at least one layer")
        self.dsbn = dsbn
        self.out_dim = hidden[-1] if hidden else in_dim
        dims = (in_dim, *hidden)
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.norms: nn.ModuleList | None = nn.ModuleList(
            DomainSpecificBatchNorm(h, num_domains) if dsbn else nn.BatchNorm1d(h) for h in hidden
        )
        self.dropout = Dropout(dropout)
        self.inner_se = HiddenSE(hidden[0], 1, se_reduction) if se_reduction is not None else None

    def remove_norms(self) -> None:
        """Drop the normalisation layers (``Linear -> ReLU -> dropout``)."""
        self.norms = None

    def after_linear(self, i: int, z: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """norm -> ReLU -> dropout (-> inner SE after the first layer) of layer ``i``; split out
        so that network multiplication (eq. 16-17) can run this MLP with its Linear weights
        swapped."""
        if self.norms is not None:
            z = self.norms[i](z, domain) if self.dsbn else self.norms[i](z)
        z = self.dropout(F.relu(z))
        if i == 0 and self.inner_se is not None:
            z = self.inner_se(z, torch.zeros_like(domain))  # (B, H_0), eq. 25-26, the network's own block
        return z

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # x: (B, in_dim), domain: (B,)
        for i, linear in enumerate(self.linears):
            x = self.after_linear(i, linear(x), domain)
        return x  # (B, out_dim)
