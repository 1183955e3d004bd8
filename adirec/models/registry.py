"""Named model presets and the parameter budget of a fair comparison.

A preset (:class:`Preset`) is what a model name means: its TwoTowerConfig values, its training
defaults (TrainConfig fields) and whether it is one model per domain.

``build_config("adi-se", num_domains=3, fusion="sum")`` -> a validated TwoTowerConfig;
``train_defaults("mmoe")`` -> the TrainConfig fields the preset sets (apply them under the user's
options); ``build_model(name, schema, num_domains, config)`` -> the model (a
:class:`TwoTowerModel`, or a :class:`PerDomainModel` for ``dnn-single``);
``match_parameter_budget(...)`` -> the preset with its widths scaled to a parameter budget.

Every preset is the model its paper describes, with the paper's own defaults; a departure is a
named TwoTowerConfig option, never a preset default. Settings the papers leave open (the widths,
which fields feed the towers, batch statistics in the item tower) take TwoTowerConfig's defaults,
the same for every preset:

* ``adi-se``, ``adi-va``, ``adi-lt``: ADI (Jiang et al., CIKM 2022) with the SE block, vanilla
  attention or linear transformation as the per-domain adaptation layer (eq. 21-26); one shared
  expert mixed by the linear domain gate of eq. 8, domain-specific experts, CONCAT fusion
  (eq. 11-13), domain-specific forward networks (eq. 18), DSBN (eq. 20), self-training
  (Algorithm 1).
* ``adi-se-max``: ADI-SE with several shared networks (section 5.1.3), the larger model.
* ``dnn``: one network on the mixed data; it reads the per-domain features and ranks each
  domain's corpus, but has no domain-specific part.
* ``dnn-blind``: a network that knows nothing of domains: no per-domain feature, no domain
  indicator, one softmax over the whole corpus in training.
* ``dnn-single``: one ``dnn`` per domain, each trained on its own domain.
* ``shared-bottom``, ``cross-stitch``, ``mmoe`` (D + 1 experts, section 5.1.4; softmax gates on
  the features), ``ple`` (one specific expert per domain + one shared; softmax gates on the
  features), ``star``: the comparison methods (see :mod:`adirec.models.baselines`).

Fair comparison (ADI paper, section 5.1.4): every neural method reads the same inputs and uses
batch norm (ADI and STAR: per domain), and its parameter count is within +-10% of ADI-SE's at the
chosen size. The comparison backbones take the same inputs and domain-specific forward networks
as ADI and differ only in the backbone (see :mod:`adirec.models.baselines`).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from adirec.data.schema import Schema
from adirec.models.config import DOMAINS_PLUS_ONE, TwoTowerConfig
from adirec.models.adi import TwoTowerModel
from adirec.models.per_domain import PerDomainModel
from adirec.models.towers import SharedEmbeddings


@dataclass(frozen=True)
class Preset:
    """What a model name means.

    Attributes:
        description: one line for listings.
        model: TwoTowerConfig fields the preset sets (the rest keep the TwoTowerConfig default);
            ``shared_experts="domains+1"`` is resolved when the number of domains is known.
        train: TrainConfig fields the preset sets, as plain values (``self_training`` as a dict
            of SelfTrainingConfig fields); the user's options apply on top.
        per_domain: one model per domain, each trained on its own domain (PerDomainModel).
        one_domain: TwoTowerConfig fields that take the place of ``model`` when the data has a
            single domain (None: ``model`` everywhere). With one domain a domain gate, a
            domain-specific network and DSBN have nothing to tell apart, and the preset may then
            be better served by a plain network.
    """

    description: str
    model: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)
    per_domain: bool = False
    one_domain: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for part in ("model", "one_domain"):
            given = getattr(self, part)
            if given is None:
                continue
            unknown = sorted(set(given) - set(TwoTowerConfig.field_names()))
            if unknown:
                raise ValueError(f"preset {self.description!r}: unknown TwoTowerConfig fields {unknown} in {part}")
            object.__setattr__(self, part, MappingProxyType(dict(given)))
        if self.one_domain is not None:
            TwoTowerConfig(**self.one_domain)  # its values are checked now, not when a one-domain run starts
        object.__setattr__(self, "train", MappingProxyType(dict(self.train)))

    def model_fields(self, num_domains: int | None) -> Mapping[str, Any]:
        """The TwoTowerConfig fields the preset sets on data with ``num_domains`` domains
        (None: not known yet, the multi-domain fields)."""
        return self.one_domain if num_domains == 1 and self.one_domain is not None else self.model


# self-training is part of ADI (Algorithm 1), not of the comparison methods
_ADI_TRAIN = {"self_training": {"enabled": True}}
_BASELINE_TRAIN = {"self_training": {"enabled": False}}
# the comparison methods: no domain interest adaptation (that is ADI's), plain batch norm in the
# shared networks, one forward network (task tower) per domain as in ADI
_MULTI_TASK = dict(dial="none", dsbn=False, domain_forward=True)
# one network for every domain: no adaptation, one MLP, plain BN, one forward network
_DNN = dict(backbone="mlp", dial="none", dsbn=False, domain_forward=False)

# adirec's improvements, the same for adi-plus and dnn-plus so that "does domain adaptation pay?" is
# asked with equal machinery. The learning rate and the history dropout come from `adirec tune`
# studies on the validation data of XMRec and MovieLens-1M genre3 (README, "How adi-plus's defaults
# were chosen"); the linear item tower under the Transformer (item_tower auto) from seed-0 validation
# runs on the three timestamped MovieLens protocols; the cap of 30 epochs (patience 3 as everywhere)
# from the published runs of all three continued from 20 to 30 epochs, whose best validation had
# been at most two epochs from the 20th; the rest were set by hand from single validation runs
_PLUS_MODEL = dict(history_encoder="auto", history_dropout="auto", item_bias=True, item_tower="auto")
_PLUS_TRAIN = {"self_training": {"enabled": False}, "softmax": "auto", "batch_size": "auto", "lr": 5e-3,
               "epochs": 30}
_DNN_PLUS = dict(_DNN, **_PLUS_MODEL)

MODELS: dict[str, Preset] = {
    # experts a quarter of adi-se's (TwoTowerConfig's 256 / 128): about dnn-plus's dense size, and on
    # genre3's validation data (the ablation in benchmarks/results/movielens-genre3) better than full width.
    # On one domain, dnn-plus's network: on the one-domain sequential protocol it validated level with
    # ADI's 64 / 32 network at seed 0 and above it at seeds 1-2 (benchmarks/results/movielens-seq-loo/
    # validation; README, "How adi-plus's defaults were chosen")
    "adi-plus": Preset("ADI-SE with adirec's improvements: an order-aware history encoder and a linear item "
                       "tower on data with time, the full softmax on small corpora, a per-domain item bias, "
                       "narrower experts; on data with one domain, dnn-plus's network",
                       dict(dial="se", expert_hidden=(64,), expert_out=32, **_PLUS_MODEL), _PLUS_TRAIN,
                       one_domain=_DNN_PLUS),
    "dnn-plus": Preset("the mixed-data DNN with adi-plus's improvements (dnn-plus against adi-plus: does "
                       "domain adaptation pay?)", _DNN_PLUS, _PLUS_TRAIN),
    "adi-se": Preset("ADI with a per-domain SE block as adaptation layer (ADI-SE, Table 8's 3-SE)",
                     dict(dial="se"), _ADI_TRAIN),
    "adi-va": Preset("ADI with per-domain vanilla attention as adaptation layer (ADI-VA)",
                     dict(dial="va"), _ADI_TRAIN),
    "adi-lt": Preset("ADI with a per-domain linear transformation as adaptation layer (ADI-LT)",
                     dict(dial="lt"), _ADI_TRAIN),
    "adi-se-max": Preset("ADI-SE with three shared networks (ADI-SE (MAX), the larger model)",
                         dict(dial="se", shared_experts=3), _ADI_TRAIN),
    "dnn": Preset("one DNN on the mixed data, with the per-domain features and each domain's corpus",
                  _DNN, _BASELINE_TRAIN),
    "dnn-blind": Preset("one DNN that knows nothing of domains: no per-domain features, one softmax "
                        "over the whole corpus", dict(_DNN, per_domain_features=False),
                        {**_BASELINE_TRAIN, "corpus_negatives_only": False}),
    # the config is a sub-model's, which is a one-domain dnn
    "dnn-single": Preset("one DNN per domain, each trained on its own domain", _DNN, _BASELINE_TRAIN,
                         per_domain=True),
    "shared-bottom": Preset("shared-bottom: one shared MLP, one tower per domain",
                            dict(backbone="shared-bottom", **_MULTI_TASK), _BASELINE_TRAIN),
    "cross-stitch": Preset("cross-stitch networks: one column per domain, linked by cross-stitch units",
                           dict(backbone="cross-stitch", **_MULTI_TASK), _BASELINE_TRAIN),
    "mmoe": Preset("MMoE: D + 1 shared experts, one softmax gate per domain on the features",
                   dict(backbone="mmoe", shared_experts=DOMAINS_PLUS_ONE, gate="softmax",
                        gate_input="features", **_MULTI_TASK), _BASELINE_TRAIN),
    "ple": Preset("PLE (one level, CGC): one specific expert per domain and one shared, softmax gates "
                  "on the features", dict(backbone="ple", shared_experts=1, specific_experts=1, ple_levels=1,
                                          gate="softmax", gate_input="features", **_MULTI_TASK),
                  _BASELINE_TRAIN),
    # STAR's partitioned normalisation is domain-specific batch norm
    "star": Preset("STAR: a star topology of shared and per-domain weights, partitioned normalisation",
                   dict(backbone="star", dial="none", dsbn=True, domain_forward=True), _BASELINE_TRAIN),
}

#: presets served by :class:`PerDomainModel` (one model per domain, trained per domain)
PER_DOMAIN_MODELS = frozenset(name for name, preset in MODELS.items() if preset.per_domain)

#: SE layouts of the paper's Table 8 / Figure 4, as TwoTowerConfig changes to ``adi-se``:
#: 1-SE, one SE block shared by all domains at the input; 3-SE, one SE block per domain at the
#: input (ADI-SE itself); 4-SE, 3-SE plus an SE block inside every shared and domain-specific expert
SE_LAYOUTS: dict[str, dict[str, Any]] = {
    "1-SE": {"dial_per_domain": False},
    "3-SE": {},
    "4-SE": {"se_in_experts": True},
}

#: config fields that set the inputs and the size every method shares at "the chosen size"
SIZE_FIELDS = ("embedding_dim", "expert_hidden", "expert_out", "forward_hidden", "output_dim",
               "exclude_fields")


def _preset(name: str) -> Preset:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def build_config(name: str, num_domains: int | None = None, **overrides) -> TwoTowerConfig:
    """The preset ``name`` with ``overrides`` (any TwoTowerConfig field) applied, validated.

    With ``num_domains`` the values that depend on it are resolved (MMoE's ``shared_experts``
    becomes D + 1 unless overridden; on one domain a preset with ``one_domain`` fields starts from
    those), so the config records what the model is; without, they stay symbolic
    (``"domains+1"``) and the model resolves them when it is built. A preset's ``one_domain``
    fields are chosen here only: the config built without ``num_domains`` has the several-domain
    fields, and a model built from it on one domain keeps them.
    """
    preset = _preset(name)
    unknown = sorted(set(overrides) - set(TwoTowerConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; known: {TwoTowerConfig.field_names()}")
    config = TwoTowerConfig(**{**preset.model_fields(num_domains), **overrides})  # __post_init__ validates
    return config if num_domains is None else config.resolved(num_domains)


def train_defaults(name: str) -> dict:
    """The TrainConfig fields preset ``name`` sets (a fresh dict; nested dicts for nested configs),
    e.g. ``{"self_training": {"enabled": False}}`` for the comparison methods."""
    return copy.deepcopy(dict(_preset(name).train))


def build_model(name: str, schema: Schema, num_domains: int,
                config: TwoTowerConfig | None = None) -> TwoTowerModel | PerDomainModel:
    """The model of preset ``name`` (``config`` defaults to the preset's own)."""
    preset = _preset(name)
    config = config if config is not None else build_config(name, num_domains)
    if preset.per_domain:
        return PerDomainModel(schema, num_domains, config)
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
    base = build_config(name, num_domains, **overrides)

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
        return build_config(name, num_domains, **overrides)
    size = {k: v for k, v in overrides.items() if k in SIZE_FIELDS}
    target = parameter_counts(reference, schema, num_domains, build_config(reference, num_domains, **size))["dense"]
    return match_parameter_budget(name, schema, num_domains, target, tolerance=tolerance, **overrides)
