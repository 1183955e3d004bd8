"""Run directories: what ``adirec train`` writes and ``adirec evaluate`` / export read.

A run directory holds ``config.json`` (data source, model name and config, training config),
``metrics.jsonl`` (one line per epoch), ``checkpoints/epoch_NNN.safetensors``,
``model.safetensors`` (the best epoch), and ``summary.json`` (best epoch, wall time, parameters).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from adirec.data.batches import FeatureStore
from adirec.data.dataset import MultiDomainData
from adirec.data.spec import DataSpec
from adirec.eval.protocols import SeenItems, evaluate
from adirec.models.config import TwoTowerConfig
from adirec.models.per_domain import PerDomainModel
from adirec.train.per_domain import fit_per_domain
from adirec.models.registry import budget_matched_config, build_config, build_model
from adirec.train.distributed import resolve_device
from adirec.train.config import TrainConfig
from adirec.train.loop import Trainer, TwoTowerScorer
from adirec.utils import atomic_write_json, load_weights


def default_protocol(data: MultiDomainData) -> str:
    """``sampled`` where the source ships candidate lists, else ``full``."""
    return "sampled" if data.candidates else "full"


def default_split(data: MultiDomainData) -> str:
    return "test" if len(data.splits["test"]) else "valid"


def train_run(spec: DataSpec, model_name: str, out_dir: str | Path, *,
              model_overrides: dict | None = None, train_config: TrainConfig | None = None,
              data: MultiDomainData | None = None, report_split: str | None = None,
              match_budget: bool = False) -> dict:
    """Train ``model_name`` on ``spec`` and write a run directory. Returns the summary.

    ``match_budget``: scale the model's backbone widths to ADI-SE's dense parameter count at
    the same size (registry.budget_matched_config); the saved config holds the scaled widths.
    A per-domain model (``dnn-single``) trains each sub-model on its own domain only.
    """
    out = Path(out_dir)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a run; choose another --out")
    tcfg = train_config or TrainConfig()
    mcfg = build_config(model_name, **(model_overrides or {}))
    t0 = time.time()
    data = data if data is not None else spec.load()
    load_seconds = time.time() - t0
    report_split = report_split or default_split(data)
    if match_budget:
        mcfg = budget_matched_config(model_name, data.schema, data.num_domains, **(model_overrides or {}))
    torch.manual_seed(tcfg.seed)
    model = build_model(model_name, data.schema, data.num_domains, mcfg)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", {
        "model": model_name, "data": asdict(spec), "data_name": data.name, "domains": data.domains,
        "report_split": report_split, "model_config": asdict(mcfg), "train_config": asdict(tcfg),
        "schema": data.schema.to_dict(),
    })
    if isinstance(model, PerDomainModel):
        summary = fit_per_domain(model, data, tcfg, report_split=report_split,
                                 protocol=default_protocol(data), out_dir=out)
    else:
        trainer = Trainer(model, data, tcfg, report_split=report_split,
                          protocol=default_protocol(data), out_dir=out)
        summary = trainer.fit()
    summary["load_seconds"] = load_seconds
    atomic_write_json(out / "summary.json", summary)
    return summary


def load_run(run_dir: str | Path, data: MultiDomainData | None = None):
    """(model with its best weights, on the CPU; data; config dict) of a finished run."""
    run = Path(run_dir)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json)")
    cfg = json.loads(cfg_path.read_text())
    if data is None:
        data = DataSpec(**cfg["data"]).load()
    if data.domains != cfg["domains"]:
        raise ValueError(f"{run}: data domains {data.domains} differ from the run's {cfg['domains']}")
    model = build_model(cfg["model"], data.schema, data.num_domains, TwoTowerConfig(**cfg["model_config"]))
    load_weights(model, run / "model.safetensors")
    model.eval()
    return model, data, cfg


def evaluate_run(run_dir: str | Path, *, protocol: str | None = None, split: str | None = None,
                 ks: list[int] = (10, 50), data: MultiDomainData | None = None, device: str = "auto") -> dict:
    """Evaluate a run on ``device`` (see :func:`adirec.train.distributed.resolve_device`); the
    dict is what ``adirec evaluate --json`` writes."""
    model, data, cfg = load_run(run_dir, data)
    model.to(resolve_device(device))
    protocol = protocol or default_protocol(data)
    split = split or cfg.get("report_split") or default_split(data)
    scorer = TwoTowerScorer(model, FeatureStore(data), data.num_items)
    t0 = time.time()
    result = evaluate(scorer, data, split=split, protocol=protocol, ks=list(ks), seen=SeenItems(data))
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        "model": cfg["model"], "data": data.name, "protocol": protocol, "split": split,
        "params": model.num_parameters(), "train_seconds": summary.get("train_seconds"),
        "eval_seconds": time.time() - t0, "best_epoch": summary.get("best_epoch"),
        "queries": int(len(result.query_domain)),
        "metrics": result.metrics(data.domains),
    }
