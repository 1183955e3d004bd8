"""Named model presets: ``build_config("adi-se", fusion="sum")`` -> a validated TwoTowerConfig."""
from __future__ import annotations

from functools import partial
from typing import Callable

from adirec.models.adi import TwoTowerConfig

# preset name -> factory; keyword arguments to the factory override the preset's own values
MODELS: dict[str, Callable[..., TwoTowerConfig]] = {
    "adi-se": partial(TwoTowerConfig, dial="se"),
    "adi-va": partial(TwoTowerConfig, dial="va"),
    "adi-lt": partial(TwoTowerConfig, dial="lt"),
    # no domain awareness anywhere: no adaptation, one MLP, plain BN, one forward network
    "dnn": partial(TwoTowerConfig, backbone="mlp", dial="none", dsbn=False, domain_forward=False),
}


def build_config(name: str, **overrides) -> TwoTowerConfig:
    """The preset ``name`` with ``overrides`` (any TwoTowerConfig field) applied, validated."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    unknown = sorted(set(overrides) - set(TwoTowerConfig.field_names()))
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; known: {TwoTowerConfig.field_names()}")
    return MODELS[name](**overrides)  # __post_init__ validates
