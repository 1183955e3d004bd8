"""Runs the suites of :mod:`adirec.bench.suites` into one output directory, resumably.

Layout of ``OUT``::

    bench.json                          data source, protocol, split and cut-offs of this bench
    ease_lambda.json                    EASE's lambda chosen on a hold-out from training (auto)
    runs/<suite>/<key>/seed<k>/         a neural run (adirec.runs.train_run) + bench.json
    runs/<suite>/<key>/reference/       a reference (fitted and evaluated directly) + bench.json
    results.json, results.md, *.png     written by :mod:`adirec.bench.report`

A run is finished when its ``bench.json`` exists (written last, atomically); a rerun skips it.
Each ``bench.json`` records a hash of everything that determines the run's result (model
config after budget matching, training config, seed, data, protocol); a finished run whose hash
differs from the one asked for is an error, not a silent mix of settings. A run identical to a
finished one elsewhere in ``OUT`` (ADI-SE appears in several suites) reuses its result and says
so (``reused_from``). A directory left by an interrupted run is trained again from scratch,
unless its training had finished, in which case it is only evaluated.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path

import numpy as np
import torch

from adirec.bench.suites import BUDGET_REFERENCE, RunSpec, suite_runs, select
from adirec.data.batches import FeatureStore
from adirec.data.dataset import MultiDomainData
from adirec.eval.protocols import SeenItems, evaluate
from adirec.models.references import build_reference, select_ease_lambda
from adirec.data.spec import DataSpec
from adirec.runs import default_protocol, default_split, evaluate_run, load_run, train_run
from adirec.train.config import SelfTrainingConfig, TrainConfig
from adirec.utils import atomic_write_json

#: training-config fields that do not change a run's result (left out of its hash)
_NOT_HASHED = ("progress", "num_threads", "device")
#: lambdas tried when EASE's lambda is chosen on the hold-out
EASE_GRID = (100.0, 200.0, 500.0, 1000.0, 2000.0)


@dataclass
class BenchConfig:
    """Attributes:
        data: how to load the data set (its ``seed`` is the data's, not the training seed).
        out: output directory.
        suites: suite names (see :data:`adirec.bench.suites.SUITES`).
        seeds: how many training seeds per neural run.
        first_seed: the first of them: seeds ``first_seed .. first_seed+seeds-1`` (several bench
            processes can share one ``out``, each with its own seeds; ``results.md`` of the last
            one to finish, or of a rerun, covers every finished run).
        methods: keep only runs whose key or model name is listed (None = all).
        size: TwoTowerConfig fields applied to every neural run ("the chosen size").
        train: TrainConfig fields applied to every neural run (epochs, batch_size, ...).
        ease_lambda: EASE's lambda, or ``"auto"``: chosen on a hold-out from training.
        ks: cut-offs; default [10] for sampled candidate lists, [20, 50, 100] for full ranking.
        threads: torch threads (None = torch's default).
        progress: per-epoch progress bars of the trainer.
    """

    data: DataSpec
    out: Path
    suites: list[str]
    seeds: int = 1
    first_seed: int = 0
    methods: list[str] | None = None
    size: dict = dc_field(default_factory=dict)
    train: dict = dc_field(default_factory=dict)
    ease_lambda: float | str = "auto"
    ks: list[int] | None = None
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.first_seed < 0:
            raise ValueError(f"first_seed must be >= 0, got {self.first_seed}")
        if self.ease_lambda != "auto" and not (isinstance(self.ease_lambda, (int, float)) and self.ease_lambda > 0):
            raise ValueError(f"ease_lambda must be 'auto' or a number > 0, got {self.ease_lambda!r}")
        if self.ks is not None and (not self.ks or min(self.ks) < 1):
            raise ValueError(f"cut-offs must be positive integers, got {self.ks}")
        from adirec.models.config import TwoTowerConfig
        unknown = sorted(set(self.size) - set(TwoTowerConfig.field_names()))
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}; known: {TwoTowerConfig.field_names()}")
        defaults = TwoTowerConfig()
        for k, v in list(self.size.items()):  # a tuple field given one value: expert_hidden=64
            if isinstance(getattr(defaults, k), tuple) and not isinstance(v, (tuple, list)):
                self.size[k] = (v,)
            elif isinstance(v, list):
                self.size[k] = tuple(v)
        try:
            TwoTowerConfig(**self.size)  # validates values early, before any training
        except TypeError as e:
            raise ValueError(f"bad model config values {self.size}: {e}") from None
        # the seed, progress, threads and self-training are set per run by the bench
        allowed = set(TrainConfig.__dataclass_fields__) - {"seed", "progress", "num_threads", "self_training"}
        unknown = sorted(set(self.train) - allowed)
        if unknown:
            raise ValueError(f"training config fields {unknown} cannot be set for a bench; allowed: {sorted(allowed)}")
        TrainConfig(**self.train)


@dataclass
class Task:
    spec: RunSpec
    seed: int | None  # None: a reference (deterministic, run once)
    run_dir: Path


def _hash(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fmt_seconds(s: float) -> str:
    return f"{s / 60:.1f}min" if s >= 90 else f"{s:.1f}s"


class Bench:
    """Plans and runs a bench; see the module docstring. ``run()`` returns the results dict."""

    def __init__(self, config: BenchConfig, data: MultiDomainData | None = None, log=print):
        self.cfg = config
        self.log = log
        t0 = time.time()
        self.data = data if data is not None else config.data.load()
        self.load_seconds = time.time() - t0
        self.protocol = default_protocol(self.data)
        self.split = default_split(self.data)
        self.ks = list(config.ks or ([10] if self.protocol == "sampled" else [20, 50, 100]))
        self.meta = {"data": asdict(config.data), "data_name": self.data.name, "domains": self.data.domains,
                     "protocol": self.protocol, "split": self.split, "ks": self.ks,
                     "main_metric": f"recall@{self.ks[len(self.ks) // 2]}"}
        self.skipped: list[dict] = []
        self.failed: list[dict] = []
        self._size_target: int | None = None
        self._configs: dict = {}

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[Task]:
        from adirec.models.registry import MODELS
        everything = [spec for suite in self.cfg.suites for spec in suite_runs(suite)]
        unmatched = [m for m in self.cfg.methods or () if not select(everything, [m])]
        if unmatched:
            raise ValueError(f"--methods {unmatched} match no run of suite(s) {self.cfg.suites}; runs: "
                             + ", ".join(f"{r.suite}/{r.key}" for r in everything))
        tasks = []
        for suite in self.cfg.suites:
            for spec in select(suite_runs(suite), self.cfg.methods):
                base = self.cfg.out / "runs" / suite / spec.key
                if spec.kind == "reference":
                    tasks.append(Task(spec, None, base / "reference"))
                elif spec.model not in MODELS:
                    self.skipped.append({"suite": suite, "key": spec.key, "reason": f"model {spec.model!r} is not registered"})
                else:
                    seeds = range(self.cfg.first_seed, self.cfg.first_seed + self.cfg.seeds)
                    tasks += [Task(spec, s, base / f"seed{s}") for s in seeds]
        return tasks

    def _check_out(self) -> None:
        path = self.cfg.out / "bench.json"
        if path.is_file():
            old = json.loads(path.read_text())
            for k in ("data", "protocol", "split", "ks"):
                if old.get(k) != self.meta[k]:
                    raise ValueError(f"{self.cfg.out} holds a bench with {k}={old.get(k)!r}, not {self.meta[k]!r}; "
                                     f"choose another --out")
        atomic_write_json(path, self.meta)

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        from adirec.bench.report import collect_records, write_results
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        self._check_out()
        tasks = self.plan()
        for s in self.skipped:
            self.log(f"skipped {s['suite']}/{s['key']}: {s['reason']}")
        done = {r["hash"]: r for r in collect_records(self.cfg.out) if "hash" in r}
        start, ran = time.time(), 0
        self.log(f"bench {self.data.name}: {len(tasks)} runs ({self.protocol} ranking, split {self.split}, "
                 f"{', '.join(f'recall@{k}' for k in self.ks)}) -> {self.cfg.out}")
        for n, task in enumerate(tasks, 1):
            name = f"{task.spec.suite}/{task.spec.key}" + ("" if task.seed is None else f" seed {task.seed}")
            prefix = f"[{n}/{len(tasks)}] {name}"
            try:
                t0 = time.time()
                record, status = self._run_task(task, done)
            except Exception as e:  # one broken run must not lose a long bench; reported at the end
                self.failed.append({"suite": task.spec.suite, "key": task.spec.key, "seed": task.seed,
                                    "error": f"{type(e).__name__}: {e}"})
                self.log(f"{prefix}: FAILED: {type(e).__name__}: {e}")
                continue
            done.setdefault(record["hash"], record)
            main = record["metrics"].get(self.meta["main_metric"], {}).get("mean", float("nan"))
            if status == "trained":
                ran += 1
            elapsed = time.time() - start
            left = len(tasks) - n
            eta = f", ~{_fmt_seconds(elapsed / ran * left)} left" if ran and left else ""
            self.log(f"{prefix}: {status} in {_fmt_seconds(time.time() - t0)}, "
                     f"mean {self.meta['main_metric']} {main:.4f}  (elapsed {_fmt_seconds(elapsed)}{eta})")
        results = write_results(self.cfg.out, self.meta, skipped=self.skipped, failed=self.failed)
        self.log(f"results: {self.cfg.out / 'results.md'}, {self.cfg.out / 'results.json'}")
        return results

    def _run_task(self, task: Task, done: dict) -> tuple[dict, str]:
        request = self._request(task)
        h = _hash({k: v for k, v in request.items() if k != "budget"})
        path = task.run_dir / "bench.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            if rec.get("hash") != h:
                raise ValueError(f"{task.run_dir} holds a finished run with other settings "
                                 f"(hash {rec.get('hash')} != {h}); use another --out or delete it")
            return rec, "done before"
        base = {"suite": task.spec.suite, "key": task.spec.key, "label": task.spec.label, "model": task.spec.model,
                "kind": task.spec.kind, "seed": task.seed, "group": task.spec.group, "x": task.spec.x,
                "budget": request.get("budget"), "hash": h, "request": request}
        if h in done:  # the same computation finished under another suite
            src = done[h]
            rec = {**src, **base, "reused_from": src.get("reused_from") or src.get("run_dir")}
            rec["run_dir"] = str(task.run_dir.relative_to(self.cfg.out))
            task.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, rec)
            return rec, f"reused {src.get('run_dir')}"
        if task.spec.kind == "reference":
            rec = {**base, **self._run_reference(task, request)}
        else:
            rec = {**base, **self._run_neural(task, request, h)}
        rec["run_dir"] = str(task.run_dir.relative_to(self.cfg.out))
        atomic_write_json(path, rec)
        return rec, "trained"

    # ---------------------------------------------------------- requests
    def _request(self, task: Task) -> dict:
        """Everything that determines the run's result (hashed)."""
        common = {"data": self.meta["data"], "protocol": self.protocol, "split": self.split, "ks": self.ks}
        if task.spec.kind == "reference":
            return {**common, "reference": task.spec.model, "kwargs": self._reference_kwargs(task.spec.model)}
        mcfg, budget = self._model_config(task.spec)
        tcfg = self._train_config(task.spec, task.seed)
        train = {k: v for k, v in asdict(tcfg).items() if k not in _NOT_HASHED}
        return {**common, "model": task.spec.model, "model_config": asdict(mcfg), "train_config": train,
                "budget": budget}  # budget: how the config was found; the config itself decides

    def _model_config(self, spec: RunSpec):
        """(TwoTowerConfig, budget info): the preset at the bench's size, width-matched to ADI-SE's
        dense parameter count when the spec asks for it."""
        from adirec.models import registry
        cache_key = (spec.model, spec.overrides, spec.match_budget)
        if cache_key in self._configs:  # the budget search builds many models: once per spec
            return self._configs[cache_key]
        overrides = {**self.cfg.size, **spec.override_dict()}
        schema, D = self.data.schema, self.data.num_domains
        if not spec.match_budget:
            found = registry.build_config(spec.model, D, **overrides), None
        else:
            if self._size_target is None:
                ref = registry.build_config(BUDGET_REFERENCE, D, **self.cfg.size)
                self._size_target = int(registry.parameter_counts(BUDGET_REFERENCE, schema, D, ref)["dense"])
            found = (registry.match_parameter_budget(spec.model, schema, D, self._size_target, **overrides),
                     {"reference": BUDGET_REFERENCE, "target_dense": self._size_target})
        self._configs[cache_key] = found
        return found

    def _train_config(self, spec: RunSpec, seed: int) -> TrainConfig:
        """The preset's training defaults, the bench's options, and the run's self-training switch
        (None: the preset's; self-training is part of ADI, not of the baselines)."""
        from adirec.models.registry import train_defaults
        kw = {**train_defaults(spec.model), **self.cfg.train}
        if spec.self_training is not None:
            kw["self_training"] = {**kw.get("self_training", {}), "enabled": spec.self_training}
        return TrainConfig(seed=seed, progress=self.cfg.progress, num_threads=self.cfg.threads, **kw)

    def _reference_kwargs(self, name: str) -> dict:
        if not name.startswith("ease"):
            return {}
        if self.cfg.ease_lambda != "auto":
            return {"lam": float(self.cfg.ease_lambda)}
        scope = "pooled" if name == "ease-pooled" else "domain"
        path = self.cfg.out / "ease_lambda.json"
        chosen = json.loads(path.read_text()) if path.is_file() else {}
        if scope not in chosen:
            metric = TrainConfig(**self.cfg.train).early_stopping_metric or "recall@50"  # full ranking
            self.log(f"choosing EASE lambda ({scope}) on a hold-out from training, {metric}, grid {list(EASE_GRID)} ...")
            lam, scores = select_ease_lambda(self.data, EASE_GRID, scope=scope, metric=metric)
            chosen[scope] = {"lam": lam, "metric": metric, "holdout": {str(k): v for k, v in scores.items()}}
            atomic_write_json(path, chosen)
            self.log(f"EASE ({scope}): lambda {lam:g} ({metric} on the hold-out: "
                     + ", ".join(f"{k:g}: {v:.4f}" for k, v in scores.items()) + ")")
        return {"lam": chosen[scope]["lam"]}

    # -------------------------------------------------------------- runs
    def _run_reference(self, task: Task, request: dict) -> dict:
        t0 = time.time()
        model = build_reference(task.spec.model, **request["kwargs"]).fit(self.data)
        fit_seconds = time.time() - t0
        t1 = time.time()
        result = evaluate(model, self.data, split=self.split, protocol=self.protocol, ks=self.ks,
                          seen=SeenItems(self.data))
        eval_seconds = time.time() - t1
        task.run_dir.mkdir(parents=True, exist_ok=True)
        return {"config": request["kwargs"], "params": model.num_parameters(), "params_dense": None,
                "train_seconds": fit_seconds, "eval_seconds": eval_seconds,
                "seconds": fit_seconds + eval_seconds, "best_epoch": None,
                "metrics": result.metrics(self.data.domains)}

    def _run_neural(self, task: Task, request: dict, h: str) -> dict:
        from adirec.models.config import TwoTowerConfig
        run_dir, marker = task.run_dir, task.run_dir / "bench_request.json"
        trained = (marker.is_file() and json.loads(marker.read_text()).get("hash") == h
                   and (run_dir / "summary.json").is_file() and (run_dir / "model.safetensors").is_file())
        if not trained:
            if run_dir.exists():  # left by an interrupted run: start it again
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True)
            atomic_write_json(marker, {"hash": h})
            mcfg = TwoTowerConfig.from_dict(request["model_config"])
            train_run(self.cfg.data, task.spec.model, run_dir, model_overrides=asdict(mcfg),
                      train_config=self._train_config(task.spec, task.seed), data=self.data,
                      report_split=self.split)
        report = evaluate_run(run_dir, protocol=self.protocol, split=self.split, ks=self.ks, data=self.data,
                              device=self.cfg.train.get("device", "auto"))
        summary = json.loads((run_dir / "summary.json").read_text())
        model, _, cfg = load_run(run_dir, self.data)
        train_seconds = float(summary.get("train_seconds") or 0.0)
        return {"config": cfg["model_config"], "train_config": cfg["train_config"],
                "params": report["params"], "params_dense": dense_parameters(model),
                "train_seconds": train_seconds, "eval_seconds": report["eval_seconds"],
                "seconds": train_seconds + report["eval_seconds"], "best_epoch": report["best_epoch"],
                "epochs_run": summary.get("epochs_run"), "device": summary.get("device"), "metrics": report["metrics"],
                "dial_weights": dial_weights(model, self.data, self.split)}


def dense_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the embedding tables (:class:`SharedEmbeddings`): the part in which the
    methods differ, and the one the fair comparison's budget is set on."""
    from adirec.models.towers import SharedEmbeddings
    emb = {id(p) for m in model.modules() if isinstance(m, SharedEmbeddings) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


@torch.no_grad()
def dial_weights(model, data: MultiDomainData, split: str, max_rows: int = 2048) -> dict | None:
    """Mean per-field weights of the domain interest adaptation layers (Figure 5), per domain:
    ``{"user": {"fields": [...], "domains": [...], "weights": (D, F) nested list}, "item": ...}``.

    Users: those evaluated in the domain (up to ``max_rows``, evenly spaced); items: the domain's
    corpus. None for models without an adaptation layer that weighs fields.
    """
    from adirec.models.adi import TwoTowerModel
    from adirec.models.layers import Adaptation
    if not isinstance(model, TwoTowerModel):
        return None
    model.eval()
    dev = next(model.parameters()).device
    store = FeatureStore(data)
    target = data.splits[split]
    out = {}
    for side, tower in (("user", model.user_tower), ("item", model.item_tower)):
        if type(tower.adaptation).field_weights is Adaptation.field_weights:
            continue  # the identity: no weights
        rows = []
        for d in range(data.num_domains):
            if side == "user":
                ids = np.unique(target.user[(target.domain == d) & (target.weight > 0) & (target.user > 0)])
            else:
                ids = np.asarray(data.corpus[d])
            if len(ids) == 0:
                rows.append([float("nan")] * tower.embeddings.num_fields)
                continue
            if len(ids) > max_rows:
                ids = ids[np.linspace(0, len(ids) - 1, max_rows).astype(np.int64)]
            dom = torch.full((len(ids),), d, dtype=torch.long, device=dev)
            feats = (store.user_features(ids, dom, device=dev) if side == "user"
                     else store.item_features(ids, d, device=dev))
            w = tower.adaptation.field_weights(tower.embeddings(feats), dom)  # (B, F)
            rows.append(w.mean(dim=0).tolist())
        out[side] = {"fields": [f.name for f in tower.embeddings.fields], "domains": list(data.domains),
                     "weights": rows}
    return out or None
