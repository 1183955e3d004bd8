"""The backbone of a tower: shared experts with a domain gate, domain-specific experts, and
their fusion (paper section 4.2.1, eq. 8-17).

Every backbone follows :class:`Backbone`: ``forward(x (B, in_dim), domain (B,)) -> (B, out_dim)``
plus an ``out_dim`` attribute, and is built by a function ``(config, in_dim, num_domains)``
registered in :data:`BACKBONES`. Other backbones (shared-bottom, MMoE, PLE, ...) plug in by
adding a builder there.

Shapes: B batch, D domains, K shared experts, H expert output width.
"""
from __future__ import annotations

import math
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from adirec.models.layers import MLP, HiddenSE, domain_groups


@runtime_checkable
class Backbone(Protocol):
    """What a tower needs from its backbone."""

    out_dim: int

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out_dim)
        ...


# -----------------------------------------------------------------------------
# domain gate over the shared experts (eq. 8-9)

GATES = ("linear", "softmax")


class DomainGate(nn.Module):
    """Per-domain gate: K mixing weights for the shared experts, from the input x.

    Domain d has its own linear map ``g = W_d x + b_d`` (B, K). The weights are
      * ``"linear"`` (eq. 8 as written, normalising the linear outputs by their sum):
        ``w_k = (|g_k| + eps) / sum_j (|g_j| + eps)``. The absolute value keeps the weights
        non-negative (a convex mix, like softmax) and rules out a sum of mixed signs that
        cancels to ~0; ``eps`` (default 1e-6) keeps the denominator >= K*eps, so all-zero
        outputs give the uniform mix instead of 0/0.
      * ``"softmax"``: ``w = softmax(g)``.
    Both sum to 1 over the K experts.
    """

    def __init__(
        self, in_dim: int, num_experts: int, num_domains: int, kind: str = "softmax", eps: float = 1e-6
    ):
        super().__init__()
        if kind not in GATES:
            raise ValueError(f"unknown gate {kind!r}; known: {GATES}")
        if eps <= 0:
            raise ValueError(f"gate eps must be > 0, got {eps}")
        self.kind, self.eps = kind, eps
        self.num_experts, self.num_domains = num_experts, num_domains
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's init, independently per domain
        self.weight = nn.Parameter(torch.empty(in_dim, num_domains * num_experts).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_domains, num_experts).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        # all D gates on every row is cheaper than gathering a (B, in, K) weight per row
        g_all = (x @ self.weight).view(B, self.num_domains, self.num_experts)  # (B, D, K)
        g = g_all[torch.arange(B, device=x.device), domain] + self.bias[domain]  # (B, K), eq. 8
        if self.kind == "softmax":
            return g.softmax(dim=-1)  # (B, K)
        g = g.abs() + self.eps
        return g / g.sum(dim=-1, keepdim=True)  # (B, K), eq. 8


# -----------------------------------------------------------------------------
# shared experts (eq. 8-9) and domain-specific experts (eq. 10)


class SharedExperts(nn.Module):
    """K expert MLPs shared by all domains, mixed by the row's domain gate (eq. 9):
    ``h_shared = sum_k w_k(x, d) E_k(x)``. The last gate weights are kept in ``last_weights``
    (B, K) for inspection."""

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        num_experts: int,
        num_domains: int,
        gate: str = "softmax",
        dsbn: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if len(tuple(hidden)) == 0:
            raise ValueError("expert hidden sizes must not be empty")
        self.num_domains = num_domains
        self.experts = nn.ModuleList(
            MLP(in_dim, hidden, num_domains, dsbn, dropout) for _ in range(num_experts)
        )
        self.gate = DomainGate(in_dim, num_experts, num_domains, gate)
        self.out_dim = self.experts[0].out_dim
        self.last_weights: torch.Tensor | None = None

    def expert_outputs(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x, domain) for expert in self.experts], dim=1)  # (B, K, H)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        w = self.gate(x, domain)  # (B, K)
        self.last_weights = w.detach()
        return (w.unsqueeze(-1) * self.expert_outputs(x, domain)).sum(dim=1)  # (B, H), eq. 9


class DomainExperts(nn.Module):
    """One MLP per domain (eq. 10); row b goes through the network of its own domain.

    The rows of each domain present are gathered, run through that domain's network and
    scattered back. Each network only ever sees its own domain's rows, so its batch norm is
    domain-specific by construction; it is a one-domain :class:`DomainSpecificBatchNorm`
    whatever ``dsbn`` says elsewhere, because a domain may have a single row in a batch and the
    plain ``nn.BatchNorm1d`` would crash on it.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], num_domains: int, dropout: float = 0.0):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_domains = num_domains
        self.nets = nn.ModuleList(
            MLP(in_dim, hidden, num_domains=1, dsbn=True, dropout=dropout) for _ in range(num_domains)
        )
        self.out_dim = self.nets[0].out_dim

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(x.shape[0], self.out_dim)  # (B, H)
        for d, idx in domain_groups(domain, self.num_domains):
            only = torch.zeros_like(idx)  # the network's own single domain
            out[idx] = self.nets[d](x[idx], only)  # (n_d, H), eq. 10
        return out


class NetMulExperts(SharedExperts):
    """Shared experts fused with the domain-specific network by network multiplication
    (STAR style, eq. 16-17).

    The domain-specific network of domain d is a set of per-layer factors (W_d, b_d) with the
    experts' layer shapes. Expert k run for a row of domain d uses, at each layer,
    ``W = W_k * W_d`` (element-wise, eq. 16) and ``b = b_k + b_d`` (eq. 17); the K fused outputs
    are then mixed by the domain gate as in eq. 9. The factors start at W_d = 1, b_d = 0, so every
    domain starts from the shared experts.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        num_experts: int,
        num_domains: int,
        gate: str = "softmax",
        dsbn: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__(in_dim, hidden, num_experts, num_domains, gate, dsbn, dropout)
        linears = self.experts[0].linears
        self.domain_weight = nn.ParameterList(
            nn.Parameter(torch.ones(num_domains, *lin.weight.shape)) for lin in linears  # (D, out, in)
        )
        self.domain_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(num_domains, lin.out_features)) for lin in linears  # (D, out)
        )

    def expert_outputs(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        groups = domain_groups(domain, self.num_domains)
        outs = []
        for expert in self.experts:
            h = x  # (B, in)
            for i, lin in enumerate(expert.linears):
                z = h.new_empty(h.shape[0], lin.out_features)  # (B, out)
                for d, idx in groups:
                    w = lin.weight * self.domain_weight[i][d]  # (out, in), eq. 16
                    b = lin.bias + self.domain_bias[i][d]  # (out,), eq. 17
                    z[idx] = F.linear(h[idx], w, b)
                h = expert.after_linear(i, z, domain)  # norm over the whole batch, as in MLP
            outs.append(h)
        return torch.stack(outs, dim=1)  # (B, K, H)


# -----------------------------------------------------------------------------
# fusion of the shared and the domain-specific outputs (eq. 11-17)


def fuse_concat(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    return torch.cat([shared, specific], dim=-1)  # (B, 2H), eq. 11-13


def fuse_sum(shared: torch.Tensor, specific: torch.Tensor) -> torch.Tensor:
    return shared + specific  # (B, H), eq. 14-15


# fusions that combine two outputs; "netmul" instead fuses the networks' weights (NetMulExperts)
OUTPUT_FUSIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "concat": fuse_concat,
    "sum": fuse_sum,
}
FUSIONS = (*OUTPUT_FUSIONS, "netmul")

# where extra SE blocks (HiddenSE) may sit inside the ADI backbone, on top of the DIAL SE at the
# input embeddings: after the shared experts, after the domain-specific experts, after fusion
SE_PLACEMENTS = ("shared", "specific", "fusion")


# -----------------------------------------------------------------------------
# backbones


class ADIBackbone(nn.Module):
    """Shared experts + domain gate + domain-specific experts + fusion (section 4.2.1).

    Every expert, shared or domain-specific, is an MLP with layers ``(*hidden, out)``. With
    fusion "concat" the output is 2*out wide, otherwise ``out``.

    ``se_placements`` adds a per-domain SE block (eq. 25-26 on the hidden units) after the
    shared experts ("shared"), the domain-specific experts ("specific") and/or the fusion
    ("fusion"); with "netmul" the shared and specific networks are one, so only "fusion" applies.
    """

    def __init__(
        self,
        in_dim: int,
        num_domains: int,
        num_experts: int = 1,
        hidden: Sequence[int] = (256,),
        out: int = 128,
        gate: str = "softmax",
        fusion: str = "concat",
        dsbn: bool = True,
        dropout: float = 0.0,
        se_placements: Sequence[str] = (),
        se_reduction: int = 4,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; known: {FUSIONS}")
        se_placements = tuple(se_placements)
        unknown = [p for p in se_placements if p not in SE_PLACEMENTS]
        if unknown:
            raise ValueError(f"unknown SE placements {unknown}; known: {SE_PLACEMENTS}")
        if fusion == "netmul" and set(se_placements) - {"fusion"}:
            raise ValueError(f"fusion 'netmul' has no separate shared/specific outputs; "
                             f"only the 'fusion' SE placement applies, got {se_placements}")
        layers = (*hidden, out)
        self.fusion = fusion
        if fusion == "netmul":
            self.shared = NetMulExperts(in_dim, layers, num_experts, num_domains, gate, dsbn, dropout)
            self.specific = None  # lives inside self.shared as the per-domain factors
            self.out_dim = self.shared.out_dim
        else:
            self.shared = SharedExperts(in_dim, layers, num_experts, num_domains, gate, dsbn, dropout)
            self.specific = DomainExperts(in_dim, layers, num_domains, dropout)
            self.out_dim = self.shared.out_dim * (2 if fusion == "concat" else 1)
        widths = {"shared": self.shared.out_dim, "specific": self.shared.out_dim, "fusion": self.out_dim}
        self.se = nn.ModuleDict({p: HiddenSE(widths[p], num_domains, se_reduction) for p in se_placements})

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        return self.shared.last_weights  # (B, K)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # x: (B, in_dim), domain: (B,)
        h_shared = self._se("shared", self.shared(x, domain), domain)  # (B, H), eq. 8-9 (16-17 netmul)
        if self.specific is None:
            return self._se("fusion", h_shared, domain)
        h_specific = self._se("specific", self.specific(x, domain), domain)  # (B, H), eq. 10
        fused = OUTPUT_FUSIONS[self.fusion](h_shared, h_specific)  # (B, out_dim)
        return self._se("fusion", fused, domain)

    def _se(self, placement: str, h: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.se[placement](h, domain) if placement in self.se else h  # (B, H), eq. 25-26


class MLPBackbone(nn.Module):
    """A plain DNN: one MLP for all domains. Domain-aware only through DSBN, if enabled."""

    def __init__(
        self, in_dim: int, num_domains: int, hidden: Sequence[int], dsbn: bool = False, dropout: float = 0.0
    ):
        super().__init__()
        if len(tuple(hidden)) == 0:
            raise ValueError("MLP backbone hidden sizes must not be empty")
        self.mlp = MLP(in_dim, hidden, num_domains, dsbn, dropout)
        self.out_dim = self.mlp.out_dim

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.mlp(x, domain)  # (B, out_dim)


# -----------------------------------------------------------------------------
# registry: name -> builder(config, in_dim, num_domains) -> Backbone
# ``config`` is a TwoTowerConfig (adi.py); builders read only the fields they need.


def build_adi_backbone(config, in_dim: int, num_domains: int) -> ADIBackbone:
    return ADIBackbone(
        in_dim,
        num_domains,
        num_experts=config.shared_experts,
        hidden=config.expert_hidden,
        out=config.expert_out,
        gate=config.gate,
        fusion=config.fusion,
        dsbn=config.dsbn,
        dropout=config.dropout,
        se_placements=getattr(config, "se_placements", ()),
        se_reduction=config.se_reduction,
    )


def build_mlp_backbone(config, in_dim: int, num_domains: int) -> MLPBackbone:
    hidden = (*config.expert_hidden, config.expert_out)
    return MLPBackbone(in_dim, num_domains, hidden, config.dsbn, config.dropout)


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "adi": build_adi_backbone,
    "mlp": build_mlp_backbone,
}
