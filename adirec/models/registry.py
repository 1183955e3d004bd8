"""Named model presets and the parameter budget of a fair comparison.

``build_config("adi-se", fusion="sum")`` -> a validated TwoTowerConfig;
``build_model(name, schema, num_domains, config)`` -> the model (a :class:`TwoTowerModel`, or a
:class:`PerDomainModel` for ``dnn-single``); ``match_parameter_budget(...)`` -> the preset with
its widths scaled to a parameter budget.

Fair comparison (ADI paper, section 5.1.4): every neural method reads the same inputs and uses
batch norm (ADI and STAR: per domain), and its parameter count is within +-10% of ADI-SE's at the
chosen size. The comparison backbones take the same inputs and domain-specific forward networks
as ADI and differ only in the backbone (see :mod:`adirec.models.baselines`).
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Callable

import torch
import torch.nn as nn

from adirec.data.schema import Schema
from adirec.models.config import TwoTowerConfig
from adirec.models.adi import TwoTowerModel
from adirec.models.per_domain import PerDomainModel
from adirec.models.towers import SharedEmbeddings

# the comparison methods: no domain interest adaptation (that is ADI's), plain batch norm in the
# shared networks, one forward network (task tower) per domain as in ADI
_MULTI_TASK = dict(dial="none", dsbn=False, domain_forward=True)
# no domain awareness anywhere: no adaptation, one MLP, plain BN, one forward network
_DNN = dict(backbone="mlp", dial="none", dsbn=False, domain_forward=False)

# preset name -> factory; keyword arguments to the factory override the preset's own values
MODELS: dict[str, Callable[..., TwoTowerConfig]] = {
    "adi-se": partial(TwoTowerConfig, dial="se"),
    "adi-va": partial(TwoTowerConfig, dial="va"),
    "adi-lt": partial(TwoTowerConfig, dial="lt"),
    "adi-se-max": partial(TwoTowerConfig, dial="se", shared_experts=3),
    "dnn": partial(TwoTowerConfig, **_DNN),
    # one dnn per domain, each trained on its domain only (PerDomainModel); the config is a
    # sub-model's, which is a one-domain dnn
    "dnn-single": partial(TwoTowerConfig, **_DNN),
    "shared-bottom": partial(TwoTowerConfig, backbone="shared-bottom", **_MULTI_TASK),
    "cross-stitch": partial(TwoTowerConfig, backbone="cross-stitch", **_MULTI_TASK),
    "mmoe": partial(TwoTowerConfig, backbone="mmoe", shared_experts=3, **_MULTI_TASK),
    "ple": partial(TwoTowerConfig, backbone="ple", shared_experts=1, specific_experts=1, ple_levels=1,
                   **_MULTI_TASK),
    # STAR's partitioned normalisation is domain-specific batch norm
    "star": partial(TwoTowerConfig, backbone="star", dial="none", dsbn=True, domain_forward=True),
}

#: presets served by :class:`PerDomainModel` (one model per domain, trained per domain)
PER_DOMAIN_MODELS = frozenset({"dnn-single"})

#: SE placements of the paper's Table 8 / Figure 4 (``se_placements`` of an ``adi-se`` config;
#: the first SE block is always the DIAL at the input embeddings)
SE_LAYOUTS: dict[str, tuple[str, ...]] = {
    "1-SE": (),
    "3-SE": ("shared", "specific"),
    "4-SE": ("shared", "specific", "fusion"),
}

#: config fields that set the inputs and the size every method shares at "the chosen size"
SIZE_FIELDS = ("embedding_dim", "expert_hidden", "expert_out", "forward_hidden", "output_dim",
               "exclude_fields")


def build_config(name: str, **overrides) -> TwoTowerConfig:
    """The preset ``name`` with ``overrides`` (any TwoTowerConfig field) applied, validated."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    unknown = sorted(set(overrides) - set(TwoTowerConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; known: {TwoTowerConfig.field_names()}")
    return MODELS[name](**overrides)  # __post_init__ validates


def build_model(name: str, schema: Schema, num_domains: int, config: TwoTowerConfig | None = None) -> nn.Module:
    """The model of preset ``name`` (``config`` defaults to the preset's own)."""
    config = config if config is not None else build_config(name)
    if name in PER_DOMAIN_MODELS:
        return PerDomainModel(schema, num_domains, config)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return TwoTowerModel(schema, num_domains, config)


# -----------------------------------------------------------------------------
# parameter budget


def parameter_counts(name: str, schema: Schema, num_domains: int,
                     config: TwoTowerConfig | None = None) -> dict[str, int]:
    """``{"total", "embedding", "dense"}`` parameters of the model, without allocating it.

    ``embedding``: the id tables and dense-field projections (:class:`SharedEmbeddings`; a
    per-domain model has one set per sub-model); ``dense``: everything else.
    """
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(name, schema, num_domains, config)
    params = {id(p): p for p in model.parameters()}
    emb = {id(p) for m in model.modules() if isinstance(m, SharedEmbeddings) for p in m.parameters()}
    total = sum(p.numel() for p in params.values())
    embedding = sum(params[i].numel() for i in emb)
    return {"total": total, "embedding": embedding, "dense": total - embedding}


def scale_widths(config: TwoTowerConfig, multiplier: float) -> TwoTowerConfig:
    """``config`` with every backbone width (``expert_hidden``, ``expert_out``) times ``multiplier``,
    rounded, at least 1. Inputs, forward networks and the output width stay as they are."""
    if not multiplier > 0:
        raise ValueError(f"width multiplier must be > 0, got {multiplier}")
    return dataclasses.replace(
        config,
        expert_hidden=tuple(max(1, round(h * multiplier)) for h in config.expert_hidden),
        expert_out=max(1, round(config.expert_out * multiplier)),
    )


def match_parameter_budget(name: str, schema: Schema, num_domains: int, target_params: int,
                           *, tolerance: float = 0.1, **overrides) -> TwoTowerConfig:
    """The preset ``name`` (with ``overrides``) with its backbone widths scaled so that its
    count of *dense* (non-embedding) parameters is within ``tolerance`` (+-10%) of
    ``target_params``.

    Why dense: the embedding tables are identical for every method (same inputs, same
    vocabularies) and usually dominate the total, so a total-count rule would let methods differ
    several-fold in the networks the comparison is about; the dense count is where they differ.
    Both counts are given by :func:`parameter_counts` (and reported by the bench). For
    ``dnn-single`` the count is that of all D sub-models together, the method's whole size.

    The preset is returned unchanged when it is already within the tolerance; otherwise a
    bisection on the width multiplier (log scale) looks for the closest count, stopping once
    within 1%. Raises ValueError when no width reaches the tolerance (e.g. the parts that do not
    scale already exceed the budget).
    """
    if target_params < 1:
        raise ValueError(f"target_params must be >= 1, got {target_params}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
    base = build_config(name, **overrides)

    def dense(m: float) -> int:
        return parameter_counts(name, schema, num_domains, scale_widths(base, m))["dense"]

    def error(count: int) -> float:
        return abs(count - target_params) / target_params

    count = dense(1.0)
    if error(count) <= tolerance:
        return base
    # bracket the target: the count grows with the multiplier
    lo, hi = 1.0, 1.0
    if count > target_params:
        while lo > 1e-3 and dense(lo) > target_params:
            lo /= 2
    else:
        while hi < 1e3 and dense(hi) < target_params:
            hi *= 2
    best_m, best = 1.0, count
    for m in (lo, hi):
        c = dense(m)
        if error(c) < error(best):
            best_m, best = m, c
    for _ in range(40):
        if error(best) <= 0.01 or hi / lo < 1.0001:
            break
        mid = math.sqrt(lo * hi)
        c = dense(mid)
        if error(c) < error(best):
            best_m, best = mid, c
        if c < target_params:
            lo = mid
        else:
            hi = mid
    if error(best) > tolerance:
        raise ValueError(f"{name}: no backbone width gives {target_params} dense parameters within "
                         f"+-{tolerance:.0%}; closest is {best} at width multiplier {best_m:.3g}")
    return scale_widths(base, best_m)


def budget_matched_config(name: str, schema: Schema, num_domains: int, *, reference: str = "adi-se",
                          tolerance: float = 0.1, **overrides) -> TwoTowerConfig:
    """``name`` sized to the dense parameter count of ``reference`` at the same size.

    The reference is built with the overrides that set the shared size and inputs
    (:data:`SIZE_FIELDS`); the method gets all of ``overrides`` and is then width-matched.
    ``name == reference`` returns the reference itself.
    """
    if name == reference:
        return build_config(name, **overrides)
    size = {k: v for k, v in overrides.items() if k in SIZE_FIELDS}
    target = parameter_counts(reference, schema, num_domains, build_config(reference, **size))["dense"]
    return match_parameter_budget(name, schema, num_domains, target, tolerance=tolerance, **overrides)


def train_defaults(name: str) -> dict:
    """TrainConfig field overrides that preset ``name`` trains with (nested like TrainConfig)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return {}
