"""Training DNN-Single: every sub-model of a :class:`~adirec.models.per_domain.PerDomainModel`
trained by the ordinary :class:`~adirec.train.loop.Trainer` on its own domain's data only."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import cast

from adirec.data.dataset import MultiDomainData
from adirec.data.split import restrict_to_domain
from adirec.models.adi import TwoTowerModel
from adirec.models.per_domain import PerDomainModel
from adirec.train.config import TrainConfig
from adirec.train.loop import Trainer
from adirec.utils import save_weights


def fit_per_domain(
    model: PerDomainModel,
    data: MultiDomainData,
    config: TrainConfig,
    *,
    report_split: str = "test",
    protocol: str = "full",
    out_dir: str | Path | None = None,
) -> dict:
    """Train sub-model d with :class:`Trainer` on ``restrict_to_domain(data, d)``, for every d.

    Each sub-model validates and early-stops on its own domain. With ``out_dir``, every epoch row
    goes to ``metrics.jsonl`` with a ``"domain"`` key, and the assembled model (every sub-model at
    its best epoch) to ``model.safetensors``. Returns the summary: per-domain best epochs and
    validation values, total training time and parameters, and each sub-model's own summary.
    """
    if model.num_domains != data.num_domains:
        raise ValueError(f"model has {model.num_domains} domains, data {data.name} has {data.num_domains}")
    out = Path(out_dir) if out_dir is not None else None
    start = time.time()
    per_domain: dict[str, dict] = {}
    for d, name in enumerate(data.domains):
        trainer = Trainer(cast(TwoTowerModel, model.models[d]), restrict_to_domain(data, d), config,
                          report_split=report_split, protocol=protocol, out_dir=None)
        per_domain[name] = trainer.fit()
        if out is not None:
            with open(out / "metrics.jsonl", "a") as fh:
                for row in trainer.history:
                    fh.write(json.dumps({"domain": name, **row}) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
    metric = next(iter(per_domain.values()))["valid_metric"]
    summary = {
        "best_epoch": {n: s["best_epoch"] for n, s in per_domain.items()},
        "valid_metric": metric,
        f"best_valid_{metric}": {n: s[f"best_valid_{metric}"] for n, s in per_domain.items()},
        "epochs_run": {n: s["epochs_run"] for n, s in per_domain.items()},
        "train_seconds": time.time() - start,
        "params": model.num_parameters(),
        "device": next(iter(per_domain.values())).get("device"),
        "domains": per_domain,
    }
    if out is not None:
        save_weights(model, out / "model.safetensors")
    return summary
