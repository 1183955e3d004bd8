"""DNN-Single: one two-tower model per domain, each trained only on its own domain.

:class:`PerDomainModel` holds D one-domain :class:`TwoTowerModel` s behind the two-tower
interface (``user_embedding`` / ``item_embedding`` / ``score`` / ``num_parameters``): the rows of
a batch are routed to the sub-model of their domain. :func:`restrict_to_domain` cuts a
multi-domain data set down to one domain, and :func:`fit_per_domain` trains every sub-model with
the ordinary :class:`~adirec.train.loop.Trainer` on its own domain's data only.

A sub-model never sees another domain, not even through features: in its one-domain data set a
user's whole behaviour history (``hist_all``) is the history in that domain, so the routed rows
get ``hist_domain`` (the history in the row's domain, from the full data's feature store) in
place of ``hist_all``. That is exactly what the one-domain feature store produces, so the model
can be served and evaluated with the full data's :class:`~adirec.data.batches.FeatureStore`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from adirec.data.dataset import HIST_ALL, HIST_DOMAIN, Candidates, MultiDomainData
from adirec.data.schema import Schema
from adirec.models.adi import TwoTowerConfig, TwoTowerModel
from adirec.models.layers import domain_groups
from adirec.train.loop import TrainConfig, Trainer
from adirec.utils import save_weights


def restrict_to_domain(data: MultiDomainData, domain: int) -> MultiDomainData:
    """Domain ``domain`` of ``data`` alone, as a one-domain data set (its domain index is 0).

    Keeps that domain's rows of every split, its candidate lists, its corpus and its slice of
    the per-domain feature tables; ids, vocabularies, schema and the user / item tables are
    unchanged, so a model trained on it reads the same features as on the full data.
    """
    if not 0 <= domain < data.num_domains:
        raise ValueError(f"{data.name}: domain index {domain} outside [0, {data.num_domains})")
    splits = {}
    for name, it in data.splits.items():
        part = it.take(np.flatnonzero(it.domain == domain))
        part.domain = np.zeros(len(part), dtype=np.int64)
        splits[name] = part
    candidates = {}
    for name, c in data.candidates.items():
        sel = c.domain == domain
        candidates[name] = Candidates(c.user[sel], np.zeros(int(sel.sum()), dtype=np.int64), c.items[sel])
    dname = data.domains[domain]
    return MultiDomainData(
        name=f"{data.name}[{dname}]", domains=[dname], schema=data.schema,
        user_keys=data.user_keys, item_keys=data.item_keys, splits=splits,
        user_table=data.user_table, item_table=data.item_table,
        user_domain_table={k: v[domain:domain + 1] for k, v in data.user_domain_table.items()},
        item_domain_table={k: v[domain:domain + 1] for k, v in data.item_domain_table.items()},
        corpus=[data.corpus[domain]], candidates=candidates,
        meta={**data.meta, "restricted_to": dname},
    )


class PerDomainModel(nn.Module):
    """D independent one-domain two-tower models; row b is served by the model of ``domain[b]``."""

    def __init__(self, schema: Schema, num_domains: int, config: TwoTowerConfig | None = None):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        names = {f.name for f in schema.fields}
        if HIST_ALL in names and HIST_DOMAIN not in names:
            raise ValueError(f"a per-domain model needs the {HIST_DOMAIN!r} field to give each "
                             f"sub-model its one-domain {HIST_ALL!r}; the schema has only {HIST_ALL!r}")
        self.config = (config or TwoTowerConfig()).validate()
        self.schema = schema
        self.num_domains = num_domains
        self.models = nn.ModuleList(TwoTowerModel(schema, 1, self.config) for _ in range(num_domains))

    def _route(self, side: str, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        if domain.dim() != 1:
            raise ValueError(f"domain must have shape (B,), got {tuple(domain.shape)}")
        out = None
        for d, idx in domain_groups(domain, self.num_domains):
            part = {k: v[idx] for k, v in features.items()}
            if side == "user" and HIST_ALL in part:
                part[HIST_ALL] = part[HIST_DOMAIN]  # the sub-model's world is its domain alone
            model = self.models[d]
            only = torch.zeros_like(idx)  # each sub-model has a single domain, index 0
            emb = model.user_embedding(part, only) if side == "user" else model.item_embedding(part, only)
            if out is None:
                out = emb.new_empty(domain.shape[0], emb.shape[1])  # (B, O)
            out[idx] = emb  # (n_d, O)
        return out if out is not None else torch.empty(0, self.config.output_dim, device=domain.device)

    def user_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return self._route("user", features, domain)  # (B, O)

    def item_embedding(self, features: dict[str, torch.Tensor], domain: torch.Tensor) -> torch.Tensor:
        return self._route("item", features, domain)  # (B, O)

    score = staticmethod(TwoTowerModel.score)

    def forward(
        self, features: dict[str, torch.Tensor], domain: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_embedding(features, domain), self.item_embedding(features, domain)

    def num_parameters(self) -> int:
        return sum(m.num_parameters() for m in self.models)


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
        trainer = Trainer(model.models[d], restrict_to_domain(data, d), config,
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
