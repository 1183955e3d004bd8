"""Runs the suites of :mod:`adirec.bench.suites` into one output directory, resumably.

Layout of ``OUT``::

    bench.json                          data source, protocol, split and cut-offs of this bench
    ease_lambda.json                    EASE's lambda chosen on a hold-out from training (auto)
    runs/<suite>/<key>/seed<k>/         a neural run (adirec.runs.train_run) + bench.json
    runs/<suite>/<key>/reference/       a reference (fitted and evaluated directly) + bench.json
    results.json, results.md, *.png     written by :mod:`adirec.bench.report`

A run is finished when its ``bench.json`` exists (written last, atomically); a rerun skips it.
Each ``bench.json`` records what determines the run's result (model config after budget
matching, training config, seed, protocol, split, cut-offs) and its hash; a finished run asked
for with other settings is an error naming the settings that differ, not a silent mix. A run
identical to a finished one elsewhere in ``OUT`` (ADI-SE appears in several suites) reuses its
result and says so (``reused_from``); so does a run of another preset that resolves to the same
network and training on this data (``adi-plus`` and ``dnn-plus`` on one domain, where
``adi-plus`` builds ``dnn-plus``'s network), since the preset's name decides nothing else. A
directory left by an interrupted run is trained again from scratch, unless its training had
finished, in which case it is only evaluated. A finished run asked for with a higher epoch cap
(``--epochs``) and nothing else changed trains on from where it ended, unless it stopped early,
in which case it already is the run with the higher cap (:func:`adirec.runs.check_epoch_cap_raise`).

One ``OUT`` holds one data set: ``OUT/bench.json`` records the data's fingerprint (a hash of
the loaded rows, vocabularies and features) and the DataSpec. A later bench into the same
``OUT`` must load the same data: the fingerprints are compared, or, for a ``bench.json``
written before fingerprints were recorded, the DataSpecs, a field the older file lacks counting
as its default (options added since then keep the old behaviour at their defaults). Settings
that do not change the data (progress bars, threads, the device) never count.

Versions. A setting added to a config after a run was recorded is compared at its default in
the same way. Code changes that keep the settings are not detected by the comparison; every run
records the commit it was trained at (:mod:`adirec.bench.provenance`) and ``results.md`` names
every commit its rows come from.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import time
from typing import Any
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path

import numpy as np
import torch

from adirec.arguments import csv_ints
from adirec.bench.provenance import environment, run_provenance
from adirec.bench.suites import SUITES, RunSpec, parse_suites, suite_runs, select
from adirec.data.batches import FeatureStore
from adirec.data.dataset import MultiDomainData
from adirec.data.fingerprint import fingerprint
from adirec.eval.protocols import SeenItems, evaluate
from adirec.models.references import (RECENCY_REFERENCES, TUNED_REFERENCES, build_reference, has_time,
                                      select_settings)
from adirec.data.spec import DataSpec
from adirec.data.split import EVAL_HISTORIES, history_view
from adirec.models.config import TwoTowerConfig
from adirec.options import option
from adirec.runs import (RESUME_FREE, RunError, built_config, check_epoch_cap_raise, default_protocol, default_split,
                         evaluate_run, load_run, read_run_config, stopped_early, train_run)
from adirec.train.config import SelfTrainingConfig, TrainConfig
from adirec.utils import atomic_write_json, use_threads

#: training-config fields that do not change a run's result (left out of its hash)
_NOT_HASHED = RESUME_FREE  # where and how visibly a run trains, not what
#: lambdas tried when EASE's lambda is chosen on the hold-out
EASE_GRID = (100.0, 200.0, 500.0, 1000.0, 2000.0)
#: recency decays tried for the recency-weighted references (1.0 = no weighting)
DECAY_GRID = (0.8, 0.9, 0.95, 0.98, 1.0)
#: lambdas tried for seq-linear (its Gram matrix counts transitions, fewer than co-occurrences)
SEQ_LINEAR_GRID = (100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
#: key of each tuned reference's choice in OUT/ease_lambda.json (the plain EASE keys are the ones
#: earlier versions wrote)
_CHOICE_KEY = {"ease": "domain", "ease-pooled": "pooled", "ease-recency": "domain-recency",
               "ease-pooled-recency": "pooled-recency", "seq-linear": "seq-linear"}


# flag parsers: argparse shows an ArgumentTypeError's message as it is
def _ease_lambda(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number > 0, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"EASE lambda must be > 0, got {text!r}")
    return v


def _suites(text: str) -> list[str]:
    try:
        return parse_suites(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


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
        methods: keep only runs whose key, model name or kind is listed (None = all).
        size: TwoTowerConfig fields applied to every neural run ("the chosen size").
        train: TrainConfig fields applied to every neural run (epochs, batch_size, ...).
        ease_lambda: EASE's lambda, or ``"auto"``: chosen on a hold-out from training.
        ks: cut-offs; default [10] for sampled candidate lists and for one-domain data (the
            sequential protocol: HR@10), [20, 50, 100] for full ranking over several domains.
        publish: also copy the tables, JSON and figures (never runs or data) to this directory,
            e.g. ``benchmarks/results/NAME`` (a figure or number in the README comes from there).
        resume_from: a published bench whose finished runs are restored into ``out`` before the
            bench runs (:meth:`Bench.restore`).
        history: what a user's history holds when the test split is ranked, for every row
            (:data:`adirec.data.split.EVAL_HISTORIES`): ``train``, or ``train+valid`` (the
            validation positives too: leave-one-out as published sequential recommenders are
            evaluated; models and references are still fitted on the training split).
        threads: torch threads (None = torch's default).
        progress: per-epoch progress bars of the trainer.
    """

    data: DataSpec
    out: Path = option(help="output directory (resumable: a rerun skips finished runs)", metavar="DIR")
    suites: list[str] = option(help=f"{', '.join(SUITES)}, a comma-separated list, or all", flag="--suite",
                               parse=_suites, metavar="NAME")
    seeds: int = option(1, "training seeds per neural run")
    first_seed: int = option(0, "first training seed: runs seeds S..S+N-1; bench processes with different "
                             "seeds may share one --out")
    methods: list[str] | None = option(None, "only these runs, by key (mmoe-k2), suite/key (paper/adi-se), "
                                       "model name (mmoe: every run of that preset) or kind (references, "
                                       "neural), comma-separated", parse=_names, metavar="NAMES")
    size: dict = dc_field(default_factory=dict)
    train: dict = dc_field(default_factory=dict)
    ease_lambda: float | str = option("auto", "EASE's lambda, or auto: chosen on a hold-out from training",
                                      parse=_ease_lambda, metavar="LAMBDA")
    ks: list[int] | None = option(None, "cut-offs (default 10 with candidate lists or one domain, else "
                                  "20,50,100)", flag="--k", parse=csv_ints, metavar="K1,K2")
    publish: Path | None = option(None, "also copy results.md, results.json, bench.json, the EASE choices and "
                                  "the figures (never runs or data) to DIR, e.g. benchmarks/results/NAME",
                                  metavar="DIR")
    resume_from: Path | None = option(None, "a published bench (a --publish directory) of the same data, "
                                      "protocol, split and cut-offs: its finished runs are put into --out "
                                      "first and not run again, so a long bench goes on in another place or "
                                      "session", metavar="DIR")
    history: str = option("train", "what users' histories hold when the test split is ranked, for every row: "
                          "train, or train+valid (leave-one-out as published sequential recommenders are "
                          "evaluated; every model is still fitted on the training split)",
                          choices=EVAL_HISTORIES)
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.out is None or not str(self.out):
            raise ValueError("an output directory is required (--out DIR)")
        self.out = Path(self.out)
        if self.resume_from is not None:
            self.resume_from = Path(self.resume_from)
            if not (self.resume_from / "results.json").is_file():
                raise ValueError(f"--resume-from {self.resume_from} holds no results.json: name a directory "
                                 "that --publish wrote")
            if self.resume_from.resolve() == self.out.resolve():
                raise ValueError(f"--resume-from {self.resume_from} is the bench's own --out; name what "
                                 "--publish wrote")
        if self.publish is not None:
            self.publish = Path(self.publish)
            if self.publish.resolve() == self.out.resolve():
                raise ValueError(f"--publish {self.publish} is the bench's own --out; name another directory")
        if not self.suites:
            raise ValueError(f"name at least one suite (--suite): {', '.join(SUITES)} or all")
        self.suites = list(self.suites)
        unknown = [x for x in self.suites if x not in SUITES]
        if unknown:
            raise ValueError(f"unknown suite(s) {unknown}; known: {', '.join(SUITES)}")
        if self.history not in EVAL_HISTORIES:
            raise ValueError(f"history must be one of {', '.join(EVAL_HISTORIES)}, got {self.history!r}")
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


def estimate_left(seconds_by_kind: dict[str, list[float]], kinds_left: list[str]) -> str:
    """The time the runs of ``kinds_left`` still need, from the runs of the same kind that ran:
    a neural run takes minutes and a reference seconds, so one mean over both misleads. Runs of
    a kind with none measured yet are counted, not guessed; before any run has taken time (a
    bench whose runs were all done before), nothing is estimated."""
    if not any(seconds_by_kind.values()):
        return ""
    known = [k for k in kinds_left if seconds_by_kind.get(k)]
    unknown = len(kinds_left) - len(known)
    parts = []
    if known:
        seconds = sum(sum(seconds_by_kind[k]) / len(seconds_by_kind[k]) for k in known)
        parts.append(f"~{_fmt_seconds(seconds)} left")
    if unknown:
        parts.append(f"{unknown} run{'s' if unknown > 1 else ''} not yet timed")
    return ", ".join(parts)


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
        single = self.data.num_domains == 1
        # one domain is the sequential protocol (HR@10); several: the multi-domain tables
        self.ks = list(config.ks or ([10] if self.protocol == "sampled" or single else [20, 50, 100]))
        one_relevant = _one_relevant_per_query(self.data, self.split)
        self.meta: dict[str, Any] = {
            "data": asdict(config.data), "data_name": self.data.name, "domains": self.data.domains,
            "protocol": self.protocol, "split": self.split, "ks": self.ks,
            "main_metric": f"recall@{self.ks[len(self.ks) // 2]}",
            # with one relevant item per query Recall@N is the hit rate; the sequential
            # protocol's tables call it that
            "metric_names": {"recall": "HR" if single and one_relevant else "Recall", "ndcg": "NDCG"},
            "table_metrics": [f"recall@{k}" for k in self.ks] + ([f"ndcg@{k}" for k in self.ks] if single else []),
            "one_relevant_per_query": one_relevant,
            "data_fingerprint": fingerprint(self.data),
            "data_summary": _data_summary(self.data), "has_time": has_time(self.data)}
        if config.history != "train":  # absent for the default, so earlier benches stay the same bench
            self.meta["history"] = config.history
        self.skipped: list[dict] = []
        self.failed: list[dict] = []
        self._size_targets: dict[str, int] = {}  # budget preset -> its dense parameter count
        self._configs: dict[tuple, tuple[TwoTowerConfig, dict | None]] = {}

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
                    if spec.model in RECENCY_REFERENCES and not self.meta["has_time"]:
                        self.skipped.append({"suite": suite, "key": spec.key, "reason": "recency weighting needs "
                                             "timestamps; this data set has none"})
                    else:
                        tasks.append(Task(spec, None, base / "reference"))
                elif spec.model not in MODELS:
                    self.skipped.append({"suite": suite, "key": spec.key,
                                         "reason": f"model {spec.model!r} is not registered"})
                elif suite == "plus-ablation" and len(self.meta["domains"]) == 1:
                    # every row would be the same network: there are no domain components to take out
                    self.skipped.append({"suite": suite, "key": spec.key,
                                         "reason": "on one domain adi-plus builds dnn-plus's network, which has no "
                                                   "domain components to take apart"})
                else:
                    seeds = range(self.cfg.first_seed, self.cfg.first_seed + self.cfg.seeds)
                    tasks += [Task(spec, s, base / f"seed{s}") for s in seeds]
        return tasks

    def _differences(self, old: dict) -> list[str]:
        """What makes the bench described by ``old`` (an ``OUT/bench.json``) another bench than this
        one: other data, protocol, split or cut-offs. A ``bench.json`` written before fingerprints
        were recorded is compared by its DataSpec."""
        problems = [f"{k}={old.get(k)!r}, not {self.meta[k]!r}" for k in ("protocol", "split", "ks")
                    if old.get(k) != self.meta[k]]
        if old.get("history", "train") != self.cfg.history:
            problems.append(f"history={old.get('history', 'train')!r}, not {self.cfg.history!r}")
        stored = (old.get("data_fingerprint") or {}).get("sha256")
        if stored is not None:
            if stored != self.meta["data_fingerprint"]["sha256"]:
                from adirec.data.fingerprint import describe_difference
                problems.append("other data (" + describe_difference(old["data_fingerprint"],
                                                                    self.meta["data_fingerprint"]) + ")")
        else:
            problems += [f"data {k}={a!r}, not {b!r}" for k, (a, b) in
                         sorted(data_spec_difference(old.get("data") or {}, self.meta["data"]).items())]
        return problems

    def _check_out(self) -> None:
        """Refuse an ``OUT`` that holds a bench of other data or another protocol (see the module
        docstring); accept one written by an earlier version for the same data."""
        path = self.cfg.out / "bench.json"
        if path.is_file():
            problems = self._differences(json.loads(path.read_text()))
            if problems:
                raise ValueError(f"{self.cfg.out} holds a bench with " + "; ".join(problems)
                                 + ". Choose another --out, or the settings it was run with")
        atomic_write_json(path, self.meta)

    def restore(self, source: Path) -> tuple[int, int]:
        """Put the finished runs of the published bench ``source`` (``--resume-from``) into ``OUT``:
        each run record of its ``results.json`` becomes the run's ``bench.json``, as if the run had
        finished here, and its reference settings (``ease_lambda.json``) join ``OUT``'s. The
        published bench must hold the same data (by its fingerprint; a bench published before
        fingerprints were recorded is refused), protocol, split and cut-offs; every record and
        setting is checked before anything is written. A run that ``OUT`` already holds, finished
        or in progress, is kept as it is; a reference setting that ``OUT`` chose otherwise is an
        error. A restored run asked for with other settings is refused like any finished run.
        Returns (restored, kept)."""
        def refuse(why: str) -> ValueError:
            return ValueError(f"--resume-from {source}: {why}")

        path = Path(source) / "results.json"
        try:
            published = json.loads(path.read_text())
            meta, records = published["bench"], published["runs"]
            if not isinstance(meta, dict) or not isinstance(records, list):
                raise TypeError("'bench' must be an object and 'runs' a list")
            if not isinstance(meta.get("data_fingerprint"), dict) or "sha256" not in meta["data_fingerprint"]:
                raise KeyError("the data's fingerprint (written by a version that recorded none)")
            problems = self._differences(meta)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise refuse(f"{path} is not a bench's results.json ({type(e).__name__}: {e})") from None
        if problems:
            raise refuse("a bench with " + "; ".join(problems) + "; its runs cannot continue here")
        targets, seen = [], set()
        for record in records:
            rel = _restorable_run_dir(record)
            if rel is None:
                name = record.get("run_dir") if isinstance(record, dict) else record
                raise refuse(f"a run record that is not a finished run of runs/SUITE/KEY/RUN ({name!r})")
            if rel in seen:
                raise refuse(f"two run records of {rel}")
            seen.add(rel)
            targets.append((self.cfg.out / rel, record))
        settings_path, here = Path(source) / "ease_lambda.json", self.cfg.out / "ease_lambda.json"
        settings: dict = {}
        if settings_path.is_file():
            try:
                settings = json.loads(settings_path.read_text())
                if not (isinstance(settings, dict) and all(isinstance(v, dict) and "lam" in v and "lambdas" in v
                                                           for v in settings.values())):
                    raise TypeError("expected an object of settings, each with 'lam' and 'lambdas'")
            except (OSError, ValueError, TypeError) as e:
                raise refuse(f"{settings_path} holds no reference settings ({type(e).__name__}: {e})") from None
        mine = json.loads(here.read_text()) if here.is_file() else {}
        clash = sorted(k for k in settings.keys() & mine.keys() if settings[k] != mine[k])
        if clash:
            raise refuse(f"its reference settings {clash} differ from the ones {here} holds; "
                         "restore into another --out")
        if settings.keys() - mine.keys():  # the settings first: a restored reference run needs them
            atomic_write_json(here, {**mine, **settings})
        restored = kept = 0
        for run_dir, record in targets:
            # finished here, or begun here (perhaps by another bench sharing OUT): left alone
            if run_dir.exists() and any(run_dir.iterdir()):
                kept += 1
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            # a record restored before keeps its first origin
            atomic_write_json(run_dir / "bench.json", {"restored_from": str(source), **record})
            restored += 1
        self.log(f"restored {restored} finished run{'s' if restored != 1 else ''} from {source}"
                 + (f" ({kept} already in {self.cfg.out}, kept)" if kept else ""))
        return restored, kept

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        from adirec.bench.report import collect_records, metric_label, publish, write_results
        use_threads(self.cfg.threads)
        self.cfg.out.mkdir(parents=True, exist_ok=True)
        self._check_out()
        tasks = self.plan()  # before the restore: a bad --methods writes nothing
        if self.cfg.resume_from is not None:
            self.restore(self.cfg.resume_from)
        for s in self.skipped:
            self.log(f"skipped {s['suite']}/{s['key']}: {s['reason']}")
        done: dict[str, dict] = {}
        for r in collect_records(self.cfg.out):
            if "request" in r:
                done.setdefault(computation_hash(r["request"]), r)
        start = time.time()
        seconds_by_kind: dict[str, list[float]] = {}  # neural / reference: the runs that ran, for the ETA
        shown = ", ".join(metric_label(m, self.meta) for m in self.meta["table_metrics"])
        self.log(f"bench {self.data.name}: {len(tasks)} runs ({self.protocol} ranking, split {self.split}, "
                 f"{shown}) -> {self.cfg.out}")
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
            done.setdefault(computation_hash(record["request"]), record)
            main = record["metrics"].get(self.meta["main_metric"], {}).get("mean", float("nan"))
            if status in ("trained", "fitted"):
                seconds_by_kind.setdefault(task.spec.kind, []).append(time.time() - t0)
            elapsed = time.time() - start
            eta = estimate_left(seconds_by_kind, [t.spec.kind for t in tasks[n:]])
            eta = f", {eta}" if eta else ""
            self.log(f"{prefix}: {status} in {_fmt_seconds(time.time() - t0)}, "
                     f"mean {self.meta['main_metric']} {main:.4f}  (elapsed {_fmt_seconds(elapsed)}{eta})")
        meta = {**self.meta, "ease_choices": self._ease_choices()}
        results = write_results(self.cfg.out, meta, skipped=self.skipped, failed=self.failed,
                                provenance=environment())
        self.log(f"results: {self.cfg.out / 'results.md'}, {self.cfg.out / 'results.json'}")
        if self.cfg.publish is not None:
            copied = publish(self.cfg.out, self.cfg.publish)
            self.log(f"published {len(copied)} files to {self.cfg.publish}: {', '.join(copied)}")
        return results

    def _run_task(self, task: Task, done: dict) -> tuple[dict, str]:
        request = self._request(task)
        h = request_hash(request)
        path = task.run_dir / "bench.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            stored = rec.get("request")
            if stored is not None and request_hash(stored) == h:
                return rec, "done before"
            changes = request_difference(stored or {}, request)
            if any(k.startswith("model_config.") for k in changes) and self._same_network(rec, request):
                # "auto" asked now, the value it resolves to on this data recorded then (or back)
                changes = {k: v for k, v in changes.items() if not k.startswith("model_config.")}
                if not changes:
                    rec = {**rec, "request": request, "hash": h}
                    if (task.run_dir / "bench_request.json").is_file():
                        atomic_write_json(task.run_dir / "bench_request.json", {"hash": h})
                    atomic_write_json(path, rec)
                    return rec, "done before (the same network: the settings resolve to the recorded ones here)"
            old, new = changes.get("train_config.epochs", (None, None))
            raised = (task.spec.kind == "neural" and set(changes) == {"train_config.epochs"}
                      and isinstance(old, int) and isinstance(new, int) and new > old)
            if not raised:
                raise ValueError(f"{task.run_dir} holds a finished run with other settings ("
                                 + "; ".join(f"{k}: {a!r} there, {b!r} now"
                                             for k, (a, b) in sorted(changes.items())[:6])
                                 + (f"; {len(changes) - 6} more" if len(changes) > 6 else "")
                                 + "); use another --out or delete that run directory")
            if "reused_from" not in rec:
                return self._raise_epoch_cap(task, rec, request, h, old, new)
            # a reuse of another run holds no training of its own: reused again, or trained, below
        base = self._record_base(task, request, h)
        same = done.get(computation_hash(request))
        if same is not None:  # the same computation finished under another suite or preset
            src = same
            # a reuse happens here: the restored count of results.md is of restored records only
            rec = {**{k: v for k, v in src.items() if k not in ("restored_from", "epoch_cap_raised")}, **base,
                   "reused_from": src.get("reused_from") or src.get("run_dir")}
            rec["run_dir"] = str(task.run_dir.relative_to(self.cfg.out))
            task.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, rec)
            as_preset = ("" if src.get("model") == task.spec.model
                         else f" (the same network and training as {src.get('model')})")
            return rec, f"reused {src.get('run_dir')}{as_preset}"
        if task.spec.kind == "reference":
            rec = {**base, **self._run_reference(task, request)}
        else:
            rec = {**base, **self._run_neural(task, request, h)}
        rec["run_dir"] = str(task.run_dir.relative_to(self.cfg.out))
        atomic_write_json(path, rec)
        return rec, "fitted" if task.spec.kind == "reference" else "trained"

    def _same_network(self, rec: dict, request: dict) -> bool:
        """Whether the finished run of record ``rec`` built the network ``request`` asks for on this
        data: the same preset and, once the request's data-dependent values (``auto``) are
        resolved, the config the run recorded as built (``rec["config"]``)."""
        built_then = rec.get("config")
        if ((rec.get("request") or {}).get("model") != request.get("model") or not isinstance(built_then, dict)
                or "model_config" not in request):
            return False
        from adirec.models import registry
        try:
            config = TwoTowerConfig.from_dict(normal_request(request)["model_config"])
            with torch.device("meta"):  # shapes only
                model = registry.build_model(request["model"], self.data.schema, self.data.num_domains, config)
        except (TypeError, ValueError, KeyError, RuntimeError):  # a config this version cannot build
            return False
        now = normal_request({"model_config": asdict(built_config(model, config))})["model_config"]
        return now == normal_request({"model_config": built_then})["model_config"]

    def _record_base(self, task: Task, request: dict, h: str) -> dict:
        return {"suite": task.spec.suite, "key": task.spec.key, "label": task.spec.label, "model": task.spec.model,
                "kind": task.spec.kind, "seed": task.seed, "group": task.spec.group, "x": task.spec.x,
                "budget": request.get("budget"), "hash": h, "request": request}

    def _raise_epoch_cap(self, task: Task, rec: dict, request: dict, h: str, old: int, new: int) -> tuple[dict, str]:
        """A finished run asked for again with a higher epoch cap and nothing else changed: a run that
        reached its cap trains on to the new one, ending where a run with that cap from the start ends
        (:func:`adirec.runs.check_epoch_cap_raise`); a run that stopped early already is that run."""
        run_dir, path = task.run_dir, task.run_dir / "bench.json"
        if not (run_dir / "config.json").is_file():
            raise ValueError(f"{run_dir} holds the record of a run finished with a cap of {old} epochs but not the "
                             f"run (a record restored from a published bench): train it again in another --out")
        tcfg = self._train_config(task.spec, task.seed)
        try:
            check_epoch_cap_raise(run_dir, read_run_config(run_dir), tcfg)
        except RunError as e:
            raise ValueError(f"{e} (asked for a cap of {new} epochs, the run had {old})") from None
        if stopped_early(run_dir):
            trained = rec.get("train_config", {}).get("epochs", old)  # the cap it trained with
            rec = {**rec, "request": request, "hash": h,
                   "epoch_cap_raised": {"from": trained, "to": new, "trained": False}}
            atomic_write_json(run_dir / "bench_request.json", {"hash": h})
            atomic_write_json(path, rec)
            return rec, f"stopped early after {rec.get('epochs_run')} epochs, so it stands for a cap of {new}"
        train_run(self.cfg.data, task.spec.model, run_dir, train_config=tcfg, data=self.data,
                  report_split=self.split, resume=True)
        atomic_write_json(run_dir / "bench_request.json", {"hash": h})
        rec = {**self._record_base(task, request, h), **self._run_neural(task, request, h),
               "epoch_cap_raised": {"from": old, "to": new, "trained": True},
               "run_dir": str(run_dir.relative_to(self.cfg.out))}
        atomic_write_json(path, rec)
        return rec, f"trained on past its {old}-epoch cap to epoch {rec.get('epochs_run')} (cap {new})"

    # ---------------------------------------------------------- requests
    def _request(self, task: Task) -> dict:
        """Everything that determines the run's result (compared with a finished run's)."""
        common = {"data": self.meta["data"], "protocol": self.protocol, "split": self.split, "ks": self.ks}
        if self.cfg.history != "train":  # absent for the default: earlier requests keep their hashes
            common["history"] = self.cfg.history
        if task.spec.kind == "reference":
            return {**common, "reference": task.spec.model, "kwargs": self._reference_kwargs(task.spec.model)}
        mcfg, budget = self._model_config(task.spec)
        tcfg = self._train_config(task.spec, task.seed)
        train = {k: v for k, v in asdict(tcfg).items() if k not in _NOT_HASHED}
        return {**common, "model": task.spec.model, "model_config": asdict(mcfg), "train_config": train,
                "budget": budget}  # budget: how the config was found; the config itself decides

    def _model_config(self, spec: RunSpec):
        """(TwoTowerConfig, budget info): the preset at the bench's size, width-matched to the dense
        parameter count of ``spec.budget_of`` (ADI-SE's in the paper's suites) when the spec asks."""
        from adirec.models import registry
        cache_key = (spec.model, spec.overrides, spec.match_budget, spec.budget_of)
        if cache_key in self._configs:  # the budget search builds many models: once per spec
            return self._configs[cache_key]
        overrides = {**self.cfg.size, **spec.override_dict()}
        schema, D = self.data.schema, self.data.num_domains
        if not spec.match_budget:
            found: tuple[TwoTowerConfig, dict | None] = registry.build_config(spec.model, D, **overrides), None
        else:
            ref_name = spec.budget_of
            if ref_name not in self._size_targets:
                ref = registry.build_config(ref_name, D, **self.cfg.size)
                self._size_targets[ref_name] = int(registry.parameter_counts(ref_name, schema, D, ref)["dense"])
            target = self._size_targets[ref_name]
            found = (registry.match_parameter_budget(spec.model, schema, D, target, **overrides),
                     {"reference": ref_name, "target_dense": target})
        self._configs[cache_key] = found
        return found

    def _train_config(self, spec: RunSpec, seed: int | None) -> TrainConfig:
        """The preset's training defaults, the bench's options, and the run's self-training switch
        (None: the preset's; self-training is part of ADI, not of the baselines)."""
        from adirec.models.registry import train_defaults
        kw = {**train_defaults(spec.model), **self.cfg.train}
        if spec.self_training is not None:
            kw["self_training"] = {**kw.get("self_training", {}), "enabled": spec.self_training}
        return TrainConfig(seed=0 if seed is None else seed, progress=self.cfg.progress,
                           num_threads=self.cfg.threads, **kw)

    def _selection_metric(self) -> str:
        """The hold-out metric the EASE settings are chosen on: the bench's main metric on full
        ranking (the hold-out is always ranked against the full corpus), recall@50 for sampled
        candidate lists (a cut-off of 10 over a whole corpus says little)."""
        configured = TrainConfig(**self.cfg.train).early_stopping_metric
        return configured or (self.meta["main_metric"] if self.protocol == "full" else "recall@50")

    def _reference_kwargs(self, name: str) -> dict:
        """The settings of reference ``name``: EASE's lambda and the recency decay, chosen once per
        bench on a hold-out from training (kept in ``OUT/ease_lambda.json``) unless
        ``--ease-lambda`` fixes EASE's lambda."""
        if name not in TUNED_REFERENCES:
            return {}
        recency = name in RECENCY_REFERENCES
        fixed = None if self.cfg.ease_lambda == "auto" or not name.startswith("ease") else float(self.cfg.ease_lambda)
        if fixed is not None and not recency:
            return {"lam": fixed}
        key = _CHOICE_KEY[name] + ("" if fixed is None else f"-lam{fixed:g}")
        path = self.cfg.out / "ease_lambda.json"
        chosen = json.loads(path.read_text()) if path.is_file() else {}
        metric = self._selection_metric()
        lambdas = (SEQ_LINEAR_GRID if name == "seq-linear" else EASE_GRID) if fixed is None else (fixed,)
        decays = DECAY_GRID if recency else (1.0,)
        if key not in chosen or _grid_of(chosen[key]) != (set(lambdas), set(decays)):
            if key in chosen:
                self.log(f"the grid of {name} changed since its settings were chosen: choosing again")
            self.log(f"choosing the settings of {name} on a hold-out from training, {metric}, lambdas "
                     f"{list(lambdas)}" + (f", decays {list(decays)}" if recency else "") + " ...")
            lam, decay, scores = select_settings(self.data, name, lambdas, decays, metric=metric)
            entry = {"lam": lam, "metric": metric, "lambdas": list(lambdas), "decays": list(decays)}
            if recency:
                entry["decay"] = decay
                entry["holdout"] = {f"{la:g},{de:g}": v for (la, de), v in scores.items()}
            else:
                entry["holdout"] = {f"{la:g}": v for (la, _), v in scores.items()}
            chosen[key] = entry
            atomic_write_json(path, chosen)
            self.log(f"{name}: lambda {lam:g}" + (f", decay {decay:g}" if recency else "")
                     + f" ({metric} on the hold-out: {scores[(lam, decay)]:.4f})")
        entry = chosen[key]
        return {"lam": entry["lam"], "decay": entry["decay"]} if recency else {"lam": entry["lam"]}

    def _ease_choices(self) -> dict:
        path = self.cfg.out / "ease_lambda.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    # -------------------------------------------------------------- runs
    def _run_reference(self, task: Task, request: dict) -> dict:
        t0 = time.time()
        model = build_reference(task.spec.model, **request["kwargs"]).fit(self.data)
        seen = history_view(self.data, self.split, self.cfg.history)
        if seen is not self.data:  # fitted on the training split, scoring the longer histories
            model.use_histories(seen)
        fit_seconds = time.time() - t0
        t1 = time.time()
        result = evaluate(model, seen, split=self.split, protocol=self.protocol, ks=self.ks,
                          seen=SeenItems(seen))
        eval_seconds = time.time() - t1
        task.run_dir.mkdir(parents=True, exist_ok=True)
        return {"config": request["kwargs"], "params": model.num_parameters(), "params_dense": None,
                "train_seconds": fit_seconds, "eval_seconds": eval_seconds,
                "seconds": fit_seconds + eval_seconds, "best_epoch": None,
                "metrics": result.metrics(self.data.domains), "device": "cpu",
                "provenance": run_provenance("cpu", torch.get_num_threads())}

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
                              device=self.cfg.train.get("device", "auto"), history=self.cfg.history)
        summary = json.loads((run_dir / "summary.json").read_text())
        model, _, cfg = load_run(run_dir, self.data)
        train_seconds = float(summary.get("train_seconds") or 0.0)
        device = summary.get("device")
        return {"config": cfg["model_config"], "train_config": cfg["train_config"],
                "params": report["params"], "params_dense": dense_parameters(model),
                "train_seconds": train_seconds, "eval_seconds": report["eval_seconds"],
                "seconds": train_seconds + report["eval_seconds"], "best_epoch": report["best_epoch"],
                "epochs_run": summary.get("epochs_run"), "device": device, "metrics": report["metrics"],
                "dial_weights": dial_weights(model, self.data, self.split),
                "provenance": run_provenance(device, self.cfg.threads or torch.get_num_threads())}


def _restorable_run_dir(record) -> Path | None:
    """The run directory (relative to ``OUT``) of a published run record, or None when the record
    is not a finished run (no request, metrics or names) or names a directory other than its own
    ``runs/SUITE/KEY/seedN`` or ``runs/SUITE/KEY/reference``."""
    if not (isinstance(record, dict) and isinstance(record.get("request"), dict)
            and isinstance(record.get("metrics"), dict)
            and all(isinstance(record.get(k), str) for k in ("suite", "key", "label", "model", "kind"))):
        return None
    run = "reference" if record.get("seed") is None else f"seed{record['seed']}"
    rel = Path(str(record.get("run_dir", "")))
    return rel if rel.parts == ("runs", record["suite"], record["key"], run) and ".." not in rel.parts else None


# ---------------------------------------------------------------- comparing settings
def _data_defaults() -> dict:
    return {f.name: f.default for f in dataclasses.fields(DataSpec) if f.default is not dataclasses.MISSING}


def _normal_data(spec: dict) -> dict:
    """A recorded DataSpec with the fields an older version did not have at their defaults and its
    paths made absolute (relative ones are read from the current directory, as loading would)."""
    from adirec.runs import resolve_spec
    full = {**_data_defaults(), **spec}
    try:
        return asdict(resolve_spec(DataSpec(**full)))
    except (TypeError, ValueError):  # a field this version does not know: compare as recorded
        return full


def data_spec_difference(old: dict, new: dict) -> dict:
    """``{field: (old, new)}`` of two recorded DataSpecs that load different data; a field one of
    them lacks counts as its default."""
    a, b = _normal_data(old), _normal_data(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _defaults_of(cls) -> dict:
    return json.loads(json.dumps(asdict(cls()), default=str))


def normal_request(request: dict) -> dict:
    """The part of a run request that decides its result, in a form that does not depend on the
    adirec version that recorded it: the data left out (``OUT/bench.json`` ties a bench to one data
    set), a config field the record lacks at its current default, the budget search's notes
    dropped (its result, the config, is kept)."""
    from adirec.models.config import TwoTowerConfig
    out = {k: v for k, v in request.items() if k not in ("data", "budget")}
    if "model_config" in out:
        out["model_config"] = {**_defaults_of(TwoTowerConfig), **out["model_config"]}
    if "train_config" in out:
        train_defaults = {k: v for k, v in _defaults_of(TrainConfig).items() if k not in _NOT_HASHED}
        train = {**train_defaults, **out["train_config"]}
        train["self_training"] = {**_defaults_of(SelfTrainingConfig), **(train.get("self_training") or {})}
        out["train_config"] = train
    return json.loads(json.dumps(out, sort_keys=True, default=str))  # tuples as lists, as stored


def request_hash(request: dict) -> str:
    return _hash(normal_request(request))


def computation_hash(request: dict) -> str:
    """What a run computes: its :func:`normal_request` with the preset's name replaced by the one
    thing the name decides beyond the two configs, one model for all domains or one per domain
    (:func:`adirec.models.registry.build_model`). Two presets that resolve to the same configs on
    this data share it; a preset this registry lacks keeps its name."""
    from adirec.models.registry import MODELS
    out = normal_request(request)
    if "model" in out and out["model"] in MODELS:
        out["per_domain"] = MODELS[out.pop("model")].per_domain
    return _hash(out)


def request_difference(old: dict, new: dict) -> dict:
    """``{dotted field: (old, new)}`` between two run requests, as :func:`normal_request` sees them."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out
    a, b = flat(normal_request(old)), flat(normal_request(new))
    return {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}


def _grid_of(entry: dict) -> tuple[set, set]:
    """(lambdas, decays) a recorded choice was made from (earlier versions recorded only the
    hold-out scores, keyed "lam" or "lam,decay")."""
    if "lambdas" in entry:
        return set(entry["lambdas"]), set(entry.get("decays", [1.0]))
    keys = [k.split(",") for k in entry.get("holdout", {})]
    return {float(k[0]) for k in keys}, {float(k[1]) if len(k) > 1 else 1.0 for k in keys}


def _one_relevant_per_query(data: MultiDomainData, split: str) -> bool:
    it = data.splits[split]
    m = it.weight > 0
    if not m.any():
        return False
    key = it.user[m] * data.num_domains + it.domain[m]
    return bool(np.unique(key).size == key.size)


def _data_summary(data: MultiDomainData) -> dict:
    """Sizes for the report header: users, items, rows per split, corpus size per domain, and
    how the source split the rows."""
    meta = data.meta or {}
    split = (meta.get("split") or {}).get("description")
    if split is None and meta.get("source") == "synthetic":  # the generator splits as it writes
        split = ("leave-last-out per user by time: last -> test, second last -> valid, the rest -> train "
                 "(users with fewer than 3 interactions keep all in train)")
    return {"users": data.num_users, "items": data.num_items,
            "rows": {name: len(it) for name, it in data.splits.items()},
            "corpus": {d: int(len(c)) for d, c in zip(data.domains, data.corpus, strict=True)},
            "split_rule": split, "source_meta": {k: v for k, v in (data.meta or {}).items()
                                                                    if k in ("source", "preset", "seed", "positive",
                                                                             "domain_by", "protocol")}}


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
            assert w is not None  # only DIAL towers are asked
            rows.append(w.mean(dim=0).tolist())
        out[side] = {"fields": [f.name for f in tower.embeddings.fields], "domains": list(data.domains),
                     "weights": rows}
    return out or None
