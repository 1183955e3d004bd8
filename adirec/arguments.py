"""Command-line argument groups of the config dataclasses, shared by ``adirec`` (:mod:`adirec.cli`)
and ``adirec bench`` (:mod:`adirec.bench.cli`): the flags are generated from the dataclasses'
:func:`~adirec.options.option` fields, and read back nested the way the configs hold them.

This module sits below both command modules, so neither has to import the other for them.
"""
from __future__ import annotations

import argparse

from adirec.data.spec import DataSpec
from adirec.models.config import TwoTowerConfig
from adirec.models.registry import MODELS
from adirec.options import add_options, given_options
from adirec.train.config import SelfTrainingConfig, TrainConfig


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
    g.add_argument("--model", help=f"preset: one of {', '.join(sorted(MODELS))} (default: adi-se, or the "
                   f"one in --config)")
    add_options(g, TwoTowerConfig, dest_prefix="model_")


def model_overrides(args: argparse.Namespace) -> dict:
    """The TwoTowerConfig options given on the command line."""
    return given_options(args, TwoTowerConfig, dest_prefix="model_")
