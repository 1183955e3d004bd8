"""The comparison backbones of the ADI paper (section 5.1.2), used as multi-domain towers.

Each is a :class:`~adirec.models.experts.Backbone` (``forward(x (B, in), domain (B,)) -> (B,
out_dim)``) registered in :data:`~adirec.models.experts.BACKBONES`, so a tower swaps ADI's
backbone for one of these and keeps everything else: the same inputs (field embeddings), the
same domain-specific forward networks on top (eq. 18, which play the part of the multi-task
models' per-task towers, with domains as tasks) and the same output head.

* ``shared-bottom``: one MLP shared by all domains; the domain towers are the forward networks.
* ``cross-stitch``: one MLP column per domain; after every layer a cross-stitch unit replaces
  each column's activations by a learned linear mix of all columns'; row b reads its domain's
  column (Misra et al., 2016).
* ``mmoe``: K shared experts mixed by one softmax gate per domain on the input features,
  ``softmax(W_d x)`` (Ma et al., 2018); the preset has D + 1 experts (ADI paper, section 5.1.4).
* ``ple``: per level, shared experts plus domain-specific experts, mixed by one softmax gate per
  domain on the level's input; one level is CGC (Tang et al., 2020). The preset has one
  specific expert per domain and one shared expert.
* ``star``: STAR's topology (Sheng et al., 2021): one fully connected network whose layer
  weights are the shared weights times (element-wise) the domain's weights and whose biases are
  the sum of both (the ADI paper's eq. 16-17, Network-Mul), with STAR's partitioned
  normalisation, which is domain-specific batch norm (eq. 20).

Every expert / column is an MLP with layers ``(*config.expert_hidden, config.expert_out)``, so
the width knobs, and the parameter budget matching in :mod:`adirec.models.registry`, are the same
for every method. Shapes: B batch, D domains, K experts, H expert output width.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from adirec.models.experts import BACKBONES, DomainExperts, DomainGate, MLPBackbone, SharedExperts
from adirec.models.layers import MLP, route_by_domain


def _layers(config) -> tuple[int, ...]:
    return (*config.expert_hidden, config.expert_out)


# -----------------------------------------------------------------------------
# shared-bottom


class SharedBottomBackbone(MLPBackbone):
    """Shared-bottom multi-task model with domains as tasks: one MLP for every domain.

    The per-domain towers are the tower's domain-specific forward networks (``domain_forward``),
    so shared-bottom differs from the plain ``dnn`` exactly by having one tower per domain.
    """


def build_shared_bottom(config, in_dim: int, num_domains: int,
                        domain_embedding: nn.Embedding | None = None) -> SharedBottomBackbone:
    return SharedBottomBackbone(in_dim, num_domains, _layers(config), config.dsbn, config.dropout)


# -----------------------------------------------------------------------------
# cross-stitch


class CrossStitchBackbone(nn.Module):
    """One MLP column per domain, linked by a cross-stitch unit after every layer.

    Layer i of column c gives a_c; the unit mixes the columns, ``h_c = sum_e alpha_i[c, e] a_e``,
    and h_c is column c's input to layer i + 1. Every row runs through all D columns (a column's
    input depends on the others), and row b's output is column ``domain[b]``. The mixing starts
    near the identity: ``alpha = (1 - s) I + s / (D - 1)`` off the diagonal with s = 0.1, so
    every column starts mostly on its own.
    """

    def __init__(
        self,
        in_dim: int,
        num_domains: int,
        layers: Sequence[int],
        dsbn: bool = False,
        dropout: float = 0.0,
        share: float = 0.1,
    ):
        super().__init__()
        layers = tuple(layers)
        if not layers:
            raise ValueError("cross-stitch layer sizes must not be empty")
        if not 0.0 <= share < 1.0:
            raise ValueError(f"cross-stitch share must be in [0, 1), got {share}")
        D = num_domains
        self.num_domains = D
        self.columns = nn.ModuleList(MLP(in_dim, layers, D, dsbn, dropout) for _ in range(D))
        off = share / (D - 1) if D > 1 else 0.0
        init = torch.full((D, D), off) + torch.eye(D) * (1.0 - share - off) if D > 1 else torch.ones(1, 1)
        self.stitch = nn.ParameterList(nn.Parameter(init.clone()) for _ in layers)  # (D, D) each
        self.out_dim = layers[-1]

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        # x: (B, in), domain: (B,)
        h: list[torch.Tensor] | tuple[torch.Tensor, ...] = [x] * self.num_domains
        for i, alpha in enumerate(self.stitch):
            a = torch.stack([col.after_linear(i, col.linears[i](h_c), domain)
                             for col, h_c in zip(cast(Iterable[MLP], self.columns), h, strict=True)])  # (D, B, H_i)
            h = torch.einsum("ce,ebh->cbh", alpha, a).unbind(0)  # D x (B, H_i), cross-stitch
        out = torch.stack(h, dim=1)  # (B, D, H)
        return out[torch.arange(x.shape[0], device=x.device), domain]  # (B, H): own column


def build_cross_stitch(config, in_dim: int, num_domains: int,
                       domain_embedding: nn.Embedding | None = None) -> CrossStitchBackbone:
    return CrossStitchBackbone(in_dim, num_domains, _layers(config), config.dsbn, config.dropout)


# -----------------------------------------------------------------------------
# MMoE


class MMoEBackbone(SharedExperts):
    """MMoE with domains as tasks: K shared experts, one gate per domain on the input features,
    ``h = sum_k g_{d,k}(x) E_k(x)`` with ``g_d(x) = softmax(W_d x)`` (MMoE's gate; the gate kind
    and input stay options). This is ADI's shared part (eq. 9) without the domain-specific
    experts; the gate weights of the last call are in ``last_weights`` (B, K)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], num_experts: int, num_domains: int,
                 gate: str = "softmax", dsbn: bool = False, dropout: float = 0.0, *,
                 gate_input: str = "features", domain_embedding: nn.Embedding | None = None):
        super().__init__(in_dim, hidden, num_experts, num_domains, gate, dsbn, dropout,
                         gate_input=gate_input, domain_embedding=domain_embedding)

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        return self.last_weights


def build_mmoe(config, in_dim: int, num_domains: int,
               domain_embedding: nn.Embedding | None = None) -> MMoEBackbone:
    return MMoEBackbone(in_dim, _layers(config), config.shared_experts, num_domains, config.gate,
                        config.dsbn, config.dropout, gate_input=config.gate_input,
                        domain_embedding=domain_embedding)


# -----------------------------------------------------------------------------
# PLE / CGC


class CGCLayer(nn.Module):
    """One extraction level of PLE (CGC): ``Ks`` shared experts, ``Kd`` experts per domain.

    A row of domain d mixes the Ks shared experts (run on the shared input) and domain d's Kd
    experts (run on the row's domain input) with domain d's gate, ``softmax(W_d x)`` on its
    domain input (PLE's gate; ``gate="linear"`` normalises as eq. 8 of ADI instead). Levels before
    the last also give a shared output for the next level: a gate shared by all domains mixes the
    same Ks + Kd experts on the shared input. (In multi-task PLE every sample runs every task's
    experts and the shared gate mixes them all; a row here belongs to one domain, so it runs only
    that domain's experts.) Gate weights of the last call: ``last_weights`` (B, Ks + Kd), shared
    experts first.
    """

    def __init__(
        self,
        in_dim: int,
        layers: Sequence[int],
        num_shared: int,
        num_specific: int,
        num_domains: int,
        gate: str = "softmax",
        dsbn: bool = False,
        dropout: float = 0.0,
        shared_output: bool = False,
    ):
        super().__init__()
        if num_shared < 1 or num_specific < 1:
            raise ValueError(f"PLE needs >= 1 shared and >= 1 specific expert, got {num_shared}, {num_specific}")
        shared = [MLP(in_dim, layers, num_domains, dsbn, dropout) for _ in range(num_shared)]
        self.shared = nn.ModuleList(shared)
        # slot k holds expert k of every domain; DomainExperts routes each row to its own domain's
        self.specific = nn.ModuleList(DomainExperts(in_dim, layers, num_domains, dropout)
                                      for _ in range(num_specific))
        n = num_shared + num_specific
        self.gate = DomainGate(n, num_domains, gate, source="features", in_dim=in_dim)
        self.shared_gate = DomainGate(n, 1, gate, source="features", in_dim=in_dim) if shared_output else None
        self.out_dim = shared[0].out_dim
        self.last_weights: torch.Tensor | None = None

    def forward(
        self, x_domain: torch.Tensor, x_shared: torch.Tensor, domain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        shared = [e(x_shared, domain) for e in self.shared]  # Ks x (B, H)
        specific = [e(x_domain, domain) for e in self.specific]  # Kd x (B, H)
        experts = torch.stack(shared + specific, dim=1)  # (B, Ks + Kd, H)
        w = self.gate(x_domain, domain)  # (B, Ks + Kd)
        self.last_weights = w.detach()
        out_domain = (w.unsqueeze(-1) * experts).sum(dim=1)  # (B, H)
        if self.shared_gate is None:
            return out_domain, None
        ws = self.shared_gate(x_shared, torch.zeros_like(domain))  # (B, Ks + Kd)
        return out_domain, (ws.unsqueeze(-1) * experts).sum(dim=1)  # (B, H), (B, H)


class PLEBackbone(nn.Module):
    """Progressive layered extraction: ``levels`` CGC layers stacked; one level is CGC."""

    def __init__(
        self,
        in_dim: int,
        num_domains: int,
        layers: Sequence[int],
        num_shared: int = 1,
        num_specific: int = 1,
        levels: int = 1,
        gate: str = "softmax",
        dsbn: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        if levels < 1:
            raise ValueError(f"PLE levels must be >= 1, got {levels}")
        self.levels = nn.ModuleList()
        dim = in_dim
        for level in range(levels):
            cgc = CGCLayer(dim, layers, num_shared, num_specific, num_domains, gate, dsbn, dropout,
                           shared_output=level < levels - 1)
            self.levels.append(cgc)
            dim = cgc.out_dim
        self.out_dim = dim

    @property
    def last_gate_weights(self) -> torch.Tensor | None:
        return cast(CGCLayer, self.levels[-1]).last_weights  # (B, Ks + Kd)

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        x_domain, x_shared = x, x  # (B, in) each: every path starts from the same input
        for cgc in self.levels:
            x_domain, x_shared = cgc(x_domain, x_shared, domain)
        return x_domain  # (B, H)


def build_ple(config, in_dim: int, num_domains: int,
              domain_embedding: nn.Embedding | None = None) -> PLEBackbone:
    return PLEBackbone(in_dim, num_domains, _layers(config), config.shared_experts,
                       config.specific_experts, config.ple_levels, config.gate, config.dsbn,
                       config.dropout)


# -----------------------------------------------------------------------------
# STAR


class StarBackbone(nn.Module):
    """STAR topology: one fully connected network, specialised per domain by its weights.

    Layer i of domain d uses ``W = W_i * W_{i,d}`` (element-wise, eq. 16) and
    ``b = b_i + b_{i,d}`` (eq. 17), then partitioned normalisation (domain-specific batch norm,
    eq. 20 in the paper's terms) and ReLU. The shared weights are ``self.shared`` (an MLP whose
    own Linear layers hold W_i, b_i); the domain factors start at W_{i,d} = 1, b_{i,d} = 0, where
    the network is exactly the shared MLP.
    """

    def __init__(
        self, in_dim: int, num_domains: int, layers: Sequence[int], dsbn: bool = True, dropout: float = 0.0
    ):
        super().__init__()
        if not tuple(layers):
            raise ValueError("STAR layer sizes must not be empty")
        self.num_domains = num_domains
        self.shared = MLP(in_dim, layers, num_domains, dsbn, dropout)
        linears = cast(Iterable[nn.Linear], self.shared.linears)
        self.domain_weight = nn.ParameterList(
            nn.Parameter(torch.ones(num_domains, *lin.weight.shape)) for lin in linears  # (D, out, in)
        )
        self.domain_bias = nn.ParameterList(
            nn.Parameter(torch.zeros(num_domains, lin.out_features)) for lin in linears  # (D, out)
        )
        self.out_dim = self.shared.out_dim

    def forward(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        h = x  # (B, in)
        for i, lin in enumerate(cast(Iterable[nn.Linear], self.shared.linears)):
            def layer(d: int, hd: torch.Tensor, i: int = i, lin: nn.Linear = lin) -> torch.Tensor:
                w = lin.weight * self.domain_weight[i][d]  # (out, in), eq. 16
                b = lin.bias + self.domain_bias[i][d]  # (out,), eq. 17
                return F.linear(hd, w, b)  # (n_d, out)

            z = route_by_domain(h, domain, self.num_domains, layer, lin.out_features)  # (B, out)
            h = self.shared.after_linear(i, z, domain)  # partitioned norm -> ReLU -> dropout
        return h  # (B, H)


def build_star(config, in_dim: int, num_domains: int,
               domain_embedding: nn.Embedding | None = None) -> StarBackbone:
    return StarBackbone(in_dim, num_domains, _layers(config), config.dsbn, config.dropout)


BACKBONES.update({
    "shared-bottom": build_shared_bottom,
    "cross-stitch": build_cross_stitch,
    "mmoe": build_mmoe,
    "ple": build_ple,
    "star": build_star,
})
