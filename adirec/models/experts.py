"""The backbone of a tower: shared experts with a domain gate, domain-specific experts, and
their fusion (paper section 4.2.1, eq. 8-17).

Every backbone follows :class:`Backbone`: ``forward(x (B, in_dim), domain (B,)) -> (B, out_dim)``
plus an ``out_dim`` attribute, and is built by a function
``(config, in_dim, num_domains, domain_embedding=None)`` registered in :data:`BACKBONES`. Other
backbones (shared-bottom, MMoE, PLE, ...) plug in by adding a builder there.

``f_domain`` is the embedding of the domain indicator (eq. 8, 11-15): an ``nn.Embedding(D, E)``
owned by the model (:class:`~adirec.models.towers.SharedEmbeddings`) and handed to the backbones
of both towers; each gate holds its own per-domain weights ``W^(d)`` and reads ``f_domain`` of
every domain at once, ``W^(d) f_domain^(d)`` for d = 0..D-1, then picks each row's domain.

Shapes: B batch, D domains, K shared experts, H expert output width, E width of f_domain.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import torch
import torch.nn as nn
import torch.nn.functional as F

from adirec.models.layers import MLP, route_by_domain, rows_of_domain


@runtime_checkable
class Backbone(Protocol):
    """What a tower needs from its backbone."""

    out_dim: int

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out_dim)
        ...

    def __call__(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:  # nn.Module's, runs forward
        ...


def _per_domain_weight(num_domains: int, rows: int, fan_in: int) -> nn.Parameter:
    """(D, rows, fan_in) weights, nn.Linear's initialisation (uniform +-1/sqrt(fan_in)) per domain."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(num_domains, rows, fan_in).uniform_(-bound, bound))


def domain_projection(weight: torch.Tensor, domain_embedding: nn.Embedding) -> torch.Tensor:
    """``W^(d) f_domain^(d)`` for every domain: weight (D, R, E), table (D, E) -> (D, R)."""
    return torch.einsum("dre,de->dr", weight, domain_embedding.weight)


# -----------------------------------------------------------------------------
# domain gate over the shared experts (eq. 8-9)

GATES = ("linear", "softmax")
GATE_INPUTS = ("domain", "features")


class DomainGate(nn.Module):
    """Per-domain gate: K mixing weights for the shared experts.

    Domain d has its own linear map ``W^(d)`` (K x width, no bias) of the gate's input:
      * ``"domain"`` (eq. 8): the input is ``f_domain``, so ``g = W^(d) f_domain`` (K,) is one
        mixture per domain, the same for every row of that domain;
      * ``"features"``: the input is the row's features x, ``g = W^(d) x`` (the gates of MMoE
        and PLE, ``softmax(W x)`` in their papers).
    The K weights are then
      * ``"linear"`` (eq. 8 as written, each output divided by their sum):
        ``w_k = (|g_k| + eps) / sum_j (|g_j| + eps)``. The absolute value keeps the weights
        non-negative (a convex mix, like softmax) and rules out a sum of mixed signs that
        cancels to ~0; ``eps`` (default 1e-6) keeps the denominator >= K*eps, so all-zero
        outputs give the uniform mix instead of 0/0.
      * ``"softmax"``: ``w = softmax(g)``.
    Both sum to 1 over the K experts.
    """

    def __init__(
        self,
        num_experts: int,
        num_domains: int,
        kind: str = "linear",
        *,
        source: str = "domain",
        in_dim: int | None = None,
        domain_embedding: nn.Embedding | None = None,
        eps: float = 1e-6,
    ):
        super().__init__()
        if kind not in GATES:
            raise ValueError(f"unknown gate {kind!r}; known: {GATES}")
        if source not in GATE_INPUTS:
            raise ValueError(f"unknown gate input {source!r}; known: {GATE_INPUTS}")
        if eps <= 0:
            raise ValueError(f"gate eps must be > 0, got {eps}")
        if source == "domain":
            if domain_embedding is None:
                raise ValueError("a gate on the domain (eq. 8) needs the domain indicator's embedding "
                                 "f_domain: pass domain_embedding")
            if domain_embedding.num_embeddings != num_domains:
                raise ValueError(f"domain_embedding has {domain_embedding.num_embeddings} rows for "
                                 f"{num_domains} domains")
            width = domain_embedding.embedding_dim
        else:
            if in_dim is None or in_dim < 1:
                raise ValueError(f"a gate on the features needs in_dim >= 1, got {in_dim}")
            width = in_dim
        self.kind, self.source, self.eps = kind, source, eps
        self.num_experts, self.num_domains = num_experts, num_domains
        self.domain_embedding = domain_embedding if source == "domain" else None
        self.weight = _per_domain_weight(num_domains, num_experts, width)  # (D, K, width)

    def logits(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """``g = W^(d) input`` of each row (B, K), before normalisation."""
        if self.domain_embedding is not None:  # source "domain"
            return rows_of_domain(domain_projection(self.weight, self.domain_embedding), domain)  # (B, K), eq. 8
        B = x.shape[0]
        # all D gates on every row is cheaper than gathering a (B, K, in) weight per row
        g_all = (x @ self.weight.flatten(0, 1).T).view(B, self.num_domains, self.num_experts)  # (B, D, K)
        return g_all[torch.arange(B, device=x.device), domain]  # (B, K)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        g = self.logits(x, domain)  # (B, K)
        if self.kind == "softmax":
            return g.softmax(dim=-1)  # (B, K)
        g = g.abs() + self.eps
        return g / g.sum(dim=-1, keepdim=True)  # (B, K), eq. 8


# -----------------------------------------------------------------------------
# shared experts (eq. 8-9) and domain-specific experts (eq. 10)


class SharedExperts(nn.Module):
    """K expert MLPs shared by all domains, mixed by the row's domain gate (eq. 9):
    ``E_shared = sum_k w_k^(d) E_k(x)``. The last gate weights are kept in ``last_weights``
    (B, K) for inspection.

    ``gate_input`` is the gate's input (see :class:`DomainGate`): ``"domain"`` (eq. 8, needs
    ``domain_embedding``) or ``"features"``. ``se_reduction`` puts an SE block inside each
    expert (Table 8's 4-SE; see :class:`~adirec.models.layers.MLP`), shared by all domains like
    the expert itself.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        num_experts: int,
        num_domains: int,
        gate: str = "linear",
        dsbn: bool = True,
        dropout: float = 0.0,
        *,
        gate_input: str = "domain",
        domain_embedding: nn.Embedding | None = None,
        se_reduction: int | None = None,
    ):
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if len(tuple(hidden)) == 0:
            raise ValueError("expert hidden sizes must not be empty")
        self.num_domains = num_domains
        experts = [MLP(in_dim, hidden, num_domains, dsbn, dropout, se_reduction) for _ in range(num_experts)]
        self.experts = nn.ModuleList(experts)
        self.gate = DomainGate(num_experts, num_domains, gate, source=gate_input, in_dim=in_dim,
                               domain_embedding=domain_embedding)
        self.out_dim = experts[0].out_dim
        self.last_weights: torch.Tensor | None = None

    def expert_outputs(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x, domain) for expert in self.experts], dim=1)  # (B, K, H)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        w = self.gate(x, domain)  # (B, K), eq. 8
        self.last_weights = w.detach()
        return (w.unsqueeze(-1) * self.expert_outputs(x, domain)).sum(dim=1)  # (B, H), eq. 9


class DomainExperts(nn.Module):
    """One MLP per domain (eq. 10); row b goes through the network of its own domain.

    The rows of each domain present are gathered, run through that domain's network and
    scattered back. Each network only ever sees its own domain's rows, so its batch norm is
    domain-specific by construction; it is a one-domain :class:`DomainSpecificBatchNorm`
    whatever ``dsbn`` says elsewhere, because a domain may have a single row in a batch and the
    plain ``nn.BatchNorm1d`` would crash on it. ``se_reduction``: an SE block inside each
    network (Table 8's 4-SE), which is therefore that domain's own.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], num_domains: int, dropout: float = 0.0,
                 se_reduction: int | None = None):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_domains = num_domains
        nets = [MLP(in_dim, hidden, num_domains=1, dsbn=True, dropout=dropout, se_reduction=se_reduction)
                for _ in range(num_domains)]
        self.nets = nn.ModuleList(nets)
        self.out_dim = nets[0].out_dim

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        def net(d: int, xd: torch.Tensor) -> torch.Tensor:  # the network's own single domain is 0
            return self.nets[d](xd, xd.new_zeros(xd.shape[0], dtype=torch.long))  # (n_d, H), eq. 10

        return route_by_domain(x, domain, self.num_domains, net, self.out_dim)  # (B, H)


class NetMulExperts(SharedExperts):
    """Shared experts fused with the domain-specific network by network multiplication
    (STAR style, eq. 16-17).

    The domain-specific network of domain d is a set of per-layer factors (W_d, b_d) with the
    experts' layer shapes. Expert k run for a row of domain d uses, at each layer,
    ``W = W_k * W_d`` (element-wise, eq. 16) and ``b = b_k + b_d`` (eq. 17); the K fused outputs
    are then mixed by the domain gate as in eq. 9. The factors start at W_d = 1, b_d = 0, so every
    domain starts from the shared experts.
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], num_experts: int, num_domains: int,
                 gate: str = "linear", dsbn: bool = True, dropout: float = 0.0, **kwargs):
        super().__init__(in_dim, hidden, num_experts, num_domains, gate, dsbn, dropout, **kwargs)
        linears = cast(Iterable[nn.Linear], cast(MLP, self.experts[0]).linears)
        self.domain_weight = nn.ParameterList(
            nn.Parameter(torch.ones(num_domains, *lin.weight.shape)) for lin in linears  # (D, out, in)
        )
        self.domain_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(num_domains, lin.out_features)) for lin in linears  # (D, out)
        )

    def expert_outputs(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        outs = []
        for expert in cast(Iterable[MLP], self.experts):
            h = x  # (B, in)
            for i, lin in enumerate(cast(Iterable[nn.Linear], expert.linears)):
                def layer(d: int, hd: torch.Tensor, i: int = i, lin: nn.Linear = lin) -> torch.Tensor:
                    w = lin.weight * self.domain_weight[i][d]  # (out, in), eq. 16
                    b = lin.bias + self.domain_bias[i][d]  # (out,), eq. 17
                    return F.linear(hd, w, b)  # (n_d, out)

                z = route_by_domain(h, domain, self.num_domains, layer, lin.out_features)  # (B, out)
                h = expert.after_linear(i, z, domain)  # norm over the whole batch, as in MLP
            outs.append(h)
        return torch.stack(outs, dim=1)  # (B, K, H)


# -----------------------------------------------------------------------------
# fusion of the shared and the domain-specific outputs (eq. 11-17)


class ConcatFusion(nn.Module):
    """CONCAT fusion (eq. 11-13), output width 3H:

    ``beta_1 = sigmoid(W_spec^(d) f_domain)`` (H,) (eq. 11),
    ``beta_2 = sigmoid(W_shared^(d) f_domain)`` (H,) (eq. 12),
    ``E = concat(beta_1 * E_spec | (beta_1 * E_spec) * (beta_2 * E_shared) | beta_2 * E_shared)`` (eq. 13),
    all products element-wise. The gates are one vector per domain (they read only the domain).
    """

    def __init__(self, width: int, num_domains: int, domain_embedding: nn.Embedding):
        super().__init__()
        self.domain_embedding = domain_embedding
        self.w_spec = _per_domain_weight(num_domains, width, domain_embedding.embedding_dim)  # (D, H, E)
        self.w_shared = _per_domain_weight(num_domains, width, domain_embedding.embedding_dim)  # (D, H, E)
        self.out_dim = 3 * width

    def gates(self, domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta_1 = rows_of_domain(torch.sigmoid(domain_projection(self.w_spec, self.domain_embedding)),
                                domain)  # (B, H), eq. 11
        beta_2 = rows_of_domain(torch.sigmoid(domain_projection(self.w_shared, self.domain_embedding)),
                                domain)  # (B, H), eq. 12
        return beta_1, beta_2

    def forward(self, shared: torch.Tensor, specific: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        beta_1, beta_2 = self.gates(domain)
        spec, shar = beta_1 * specific, beta_2 * shared  # (B, H) each
        return torch.cat([spec, spec * shar, shar], dim=-1)  # (B, 3H), eq. 13


class SumFusion(nn.Module):
    """SUM fusion (eq. 14-15), output width H:

    ``alpha = sigmoid(W_gate^(d) f_domain + b)`` (H,) (eq. 14),
    ``E = alpha * E_spec + (1 - alpha) * E_shared`` (eq. 15), element-wise; ``b`` (H,) is shared
    by all domains and starts at 0.
    """

    def __init__(self, width: int, num_domains: int, domain_embedding: nn.Embedding):
        super().__init__()
        self.domain_embedding = domain_embedding
        self.w_gate = _per_domain_weight(num_domains, width, domain_embedding.embedding_dim)  # (D, H, E)
        self.bias = nn.Parameter(torch.zeros(width))  # (H,)
        self.out_dim = width

    def gate(self, domain: torch.Tensor) -> torch.Tensor:
        # (B, H), eq. 14
        return rows_of_domain(torch.sigmoid(domain_projection(self.w_gate, self.domain_embedding) + self.bias),
                              domain)

    def forward(self, shared: torch.Tensor, specific: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        alpha = self.gate(domain)  # (B, H)
        return alpha * specific + (1 - alpha) * shared  # (B, H), eq. 15


#: fusions that combine two outputs; "netmul" instead fuses the networks' weights (NetMulExperts)
OUTPUT_FUSIONS: dict[str, type[ConcatFusion | SumFusion]] = {"concat": ConcatFusion, "sum": SumFusion}
FUSIONS = (*OUTPUT_FUSIONS, "netmul")


# -----------------------------------------------------------------------------
# backbones


class ADIBackbone(nn.Module):
    """Shared experts + domain gate + domain-specific experts + fusion (section 4.2.1).

    Every expert, shared or domain-specific, is an MLP with layers ``(*hidden, out)``. The
    output is ``3*out`` wide with CONCAT fusion (eq. 13), ``out`` otherwise.

    ``domain_embedding`` is f_domain, which the gate (with ``gate_input="domain"``, eq. 8) and
    the CONCAT / SUM fusion gates (eq. 11-15) read; ``gate_input="features"`` instead mixes the
    shared experts by the row's features (a named departure from eq. 8). ``se_in_experts`` puts
    an SE block inside every shared and domain-specific expert (Table 8's 4-SE, with the
    per-domain SE at the input of the tower).
    """

    def __init__(
        self,
        in_dim: int,
        num_domains: int,
        num_experts: int = 1,
        hidden: Sequence[int] = (256,),
        out: int = 128,
        gate: str = "linear",
        fusion: str = "concat",
        dsbn: bool = True,
        dropout: float = 0.0,
        *,
        gate_input: str = "domain",
        domain_embedding: nn.Embedding | None = None,
        se_in_experts: bool = False,
        se_reduction: int = 4,
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; known: {FUSIONS}")
        layers = (*hidden, out)
        inner_se = se_reduction if se_in_experts else None
        shared: dict[str, Any] = dict(gate_input=gate_input, domain_embedding=domain_embedding,
                                      se_reduction=inner_se)
        self.fusion_kind = fusion
        self.shared: SharedExperts
        self.specific: DomainExperts | None
        self.fusion: ConcatFusion | SumFusion | None
        if fusion == "netmul":
            self.shared = NetMulExperts(in_dim, layers, num_experts, num_domains, gate, dsbn, dropout, **shared)
            self.specific = None  # lives inside self.shared as the per-domain factors
            self.fusion = None
            self.out_dim = self.shared.out_dim
        else:
            if domain_embedding is None:
                raise ValueError(f"{fusion!r} fusion gates on the domain indicator's embedding f_domain "
                                 f"(eq. 11-15): pass domain_embedding")
            self.shared = SharedExperts(in_dim, layers, num_experts, num_domains, gate, dsbn, dropout, **shared)
            self.specific = DomainExperts(in_dim, layers, num_domains, dropout, inner_se)
            self.fusion = OUTPUT_FUSIONS[fusion](self.shared.out_dim, num_domains, domain_embedding)
            self.out_dim = self.fusion.out_dim

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        return self.shared.last_weights  # (B, K)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # x: (B, in_dim), domain: (B,)
        h_shared = self.shared(x, domain)  # (B, H), eq. 8-9 (16-17 with netmul)
        if self.fusion is None or self.specific is None:  # netmul: nothing left to fuse
            return h_shared
        h_specific = self.specific(x, domain)  # (B, H), eq. 10
        return self.fusion(h_shared, h_specific, domain)  # (B, out_dim), eq. 11-15


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
# registry: name -> builder(config, in_dim, num_domains, domain_embedding) -> Backbone
# ``config`` is a TwoTowerConfig (config.py) resolved for the number of domains; builders read
# only the fields they need; ``domain_embedding`` is f_domain, None where the config needs none
# (TwoTowerConfig.uses_domain_embedding).


def build_adi_backbone(config, in_dim: int, num_domains: int,
                       domain_embedding: nn.Embedding | None = None) -> ADIBackbone:
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
        gate_input=config.gate_input,
        domain_embedding=domain_embedding,
        se_in_experts=config.se_in_experts,
        se_reduction=config.se_reduction,
    )


def build_mlp_backbone(config, in_dim: int, num_domains: int,
                       domain_embedding: nn.Embedding | None = None) -> MLPBackbone:
    hidden = (*config.expert_hidden, config.expert_out)
    return MLPBackbone(in_dim, num_domains, hidden, config.dsbn, config.dropout)


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "adi": build_adi_backbone,
    "mlp": build_mlp_backbone,
}
