"""Command-line argument groups of the config dataclasses, shared by ``adirec`` (:mod:`adirec.cli`),
``adirec bench`` (:mod:`adirec.bench.cli`) and ``adirec tune`` (:mod:`adirec.tune`): the flags
are generated from the dataclasses' :func:`~adirec.options.option` fields and read back nested the
way the configs hold them; :func:`apply_sets` applies ``--set KEY=VALUE`` and :func:`train_plan`
turns ``adirec train``'s arguments into the configs of a run.

This module sits below the command modules, so none of them has to import another for these.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path

from adirec.data.spec import DataSpec
from adirec.models.config import TwoTowerConfig
from adirec.models.registry import MODELS, train_defaults
from adirec.options import add_options, coerce, given_options
from adirec.runs import read_run_config
from adirec.train.config import SelfTrainingConfig, TrainConfig

#: the preset ``adirec train`` (and :func:`adirec.api.train`) trains when none is named
DEFAULT_MODEL = "adi-plus"


def csv_ints(text: str) -> list[int]:
    """``10,50`` -> ``[10, 50]``: positive integers, for ``--k``-like options."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def csv_list(text: str) -> list[str]:
    """``a, b,`` -> ``["a", "b"]``."""
    return [x.strip() for x in text.split(",") if x.strip()]


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The data source and its options: every :func:`~adirec.options.option` field of DataSpec."""
    add_options(p.add_argument_group("data"), DataSpec, dest_prefix="data_")


def data_spec(args: argparse.Namespace) -> DataSpec:
    """The DataSpec of the parsed ``args``; ``--data`` is required."""
    given = given_options(args, DataSpec, dest_prefix="data_")
    if "source" not in given:
        raise ValueError("--data SRC is required (xmrec:DIR | recbole:DIR/PREFIX | table:PATH | parquet:DIR | "
                         "synthetic[:PRESET])")
    return DataSpec(**given)


def add_train_args(p: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """Every TrainConfig option (``--epochs``, ``--lr``, ...) and the self-training ones (``--st-*``)."""
    add_options(p.add_argument_group("training"), TrainConfig, dest_prefix="train_", skip=skip)
    add_options(p.add_argument_group("self-training (Algorithm 1)"), SelfTrainingConfig, dest_prefix="st_")


def given_train(args: argparse.Namespace) -> dict:
    """The training options given on the command line, nested like TrainConfig
    (``{"lr": 0.01, "self_training": {"p0": 0.05}}``)."""
    out = given_options(args, TrainConfig, dest_prefix="train_")
    st = given_options(args, SelfTrainingConfig, dest_prefix="st_")
    if st:
        out["self_training"] = st
    return out


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model`` and every TwoTowerConfig option; a flag not given keeps the preset's value."""
    g = p.add_argument_group("model", "the preset's settings, changed by these flags (defaults shown are "
                                      "ADI-SE's; see --dry-run for a preset's)")
    g.add_argument("--model", help=f"preset: one of {', '.join(sorted(MODELS))} (default: {DEFAULT_MODEL}, or "
                   f"the one in --config)")
    add_options(g, TwoTowerConfig, dest_prefix="model_")


def model_overrides(args: argparse.Namespace) -> dict:
    """The TwoTowerConfig options given on the command line."""
    return given_options(args, TwoTowerConfig, dest_prefix="model_")


def nested_update(base: dict, updates: dict) -> dict:
    """``base`` with ``updates`` applied, nested dicts merged key by key (a fresh dict)."""
    out = dict(base)
    for k, v in updates.items():
        out[k] = nested_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_sets(pairs: list[tuple[str, object]], *, data: dict, model: dict, train: dict) -> None:
    """Apply ``--set KEY=VALUE`` pairs in place. KEY is a field of TrainConfig, TwoTowerConfig or
    DataSpec, dotted for nesting (``self_training.p0``); prefix ``train.``, ``model.`` or ``data.``
    where a name exists in several (``data.seed``)."""
    classes = {"train": TrainConfig, "model": TwoTowerConfig, "data": DataSpec}
    names = {"train": {f.name for f in fields(TrainConfig)}, "model": {f.name for f in fields(TwoTowerConfig)},
             "data": {f.name for f in fields(DataSpec)}}
    nested = {("train", "self_training"): {f.name for f in fields(SelfTrainingConfig)}}
    targets = {"train": train, "model": model, "data": data}
    for key, value in pairs:
        parts = key.split(".")
        scope = parts.pop(0) if parts[0] in targets and len(parts) > 1 else None
        scopes = [scope] if scope else [s for s in ("train", "model", "data") if parts[0] in names[s]]
        if not scopes or parts[0] not in names[scopes[0]]:
            raise ValueError(f"--set {key}: no such setting; fields are those of TrainConfig, TwoTowerConfig "
                             f"and DataSpec (e.g. lr, embedding_dim, self_training.p0, data.seed)")
        if len(scopes) > 1:
            raise ValueError(f"--set {key}: the name is a field of {' and '.join(scopes)}; write "
                             f"{scopes[0]}.{key} or {scopes[1]}.{key}")
        where = targets[scopes[0]]
        if len(parts) == 2 and (scopes[0], parts[0]) in nested:
            if parts[1] not in nested[(scopes[0], parts[0])]:
                raise ValueError(f"--set {key}: {parts[0]} has no field {parts[1]!r}")
            where.setdefault(parts[0], {})
            if not isinstance(where[parts[0]], dict):
                where[parts[0]] = dict(where[parts[0]].__dict__)
            where[parts[0]][parts[1]] = coerce(SelfTrainingConfig, parts[1], value)
        elif len(parts) == 1:
            where[parts[0]] = coerce(classes[scopes[0]], parts[0], value)
        else:
            raise ValueError(f"--set {key}: only self_training.* is nested")


def train_plan(args: argparse.Namespace) -> tuple:
    """(data spec, model name, model overrides, train config) of ``adirec train``'s arguments:
    TrainConfig's defaults < the preset's training defaults < --config < flags < --set."""
    data, model, train, name = {}, {}, {}, None
    if args.config:
        path = Path(args.config)
        cfg = read_run_config(path.parent) if path.name == "config.json" else json.loads(path.read_text())
        name, data, model, train = cfg["model"], dict(cfg["data"]), dict(cfg["model_config"]), dict(cfg["train_config"])
    name = args.model or name or DEFAULT_MODEL
    data = {**data, **given_options(args, DataSpec, dest_prefix="data_")}
    model = {**model, **model_overrides(args)}
    train = nested_update(train, given_train(args))
    apply_sets(args.set, data=data, model=model, train=train)
    if "source" not in data:
        raise ValueError("--data SRC is required (xmrec:DIR | recbole:DIR/PREFIX | parquet:DIR | synthetic[:PRESET]), "
                         "unless --config names a run's config")
    train = nested_update(nested_update(asdict(TrainConfig()), train_defaults(name)), train)
    return DataSpec(**data), name, model, TrainConfig(**train)
