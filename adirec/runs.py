"""Run directories: what ``adirec train`` writes and ``evaluate`` / ``export`` read.

A run directory is self-contained: it records how to load its data again (the source with
absolute paths), the vocabularies and a fingerprint of the data it was trained on, so that
evaluation and export work from it alone, from any working directory, and refuse data that no
longer matches (never a silent re-encoding). It never holds a copy of the data.

    config.json                 format + version, model name and config, training config, data
                                spec, schema, data fingerprint
    status.json                 running | finished | interrupted | failed, the last completed epoch
    vocab/users.parquet         raw key of encoded user r + 1 at row r
    vocab/items.parquet         the same for items
    metrics.jsonl               one line per epoch
    checkpoints/epoch_NNN.safetensors   weights after each epoch
    checkpoints/last.*          what ``adirec train --resume RUN`` continues from
    model.safetensors           the best epoch's weights
    summary.json                best epoch, wall time, parameters (a finished run)

:func:`train_run` is the one training entry point: in memory or streamed from a Parquet layout,
in one process or in every process of a torchrun job (rank 0 alone writes).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist

from adirec.data.batches import FeatureStore
from adirec.data.dataset import MultiDomainData
from adirec.data.fingerprint import describe_difference, fingerprint
from adirec.data.spec import DataSpec
from adirec.data.split import history_view
from adirec.eval.protocols import SeenItems, evaluate
from adirec.models.adi import TwoTowerModel
from adirec.models.config import TwoTowerConfig
from adirec.models.ensemble import EnsembleModel, RunModel
from adirec.models.per_domain import PerDomainModel
from adirec.models.registry import MODELS, budget_matched_config, build_config, build_model
from adirec.train import distributed as ddp
from adirec.train.config import TrainConfig
from adirec.train.loop import RESUME_STATE, Trainer, TrainingDiverged, TwoTowerScorer
from adirec.train.per_domain import fit_per_domain
from adirec.utils import atomic_write_json, load_weights, read_json, read_keys, save_weights, write_keys

RUN_FORMAT = "adirec-run"
RUN_FORMAT_VERSION = 2
STATUS = "status.json"
FINISHED, RUNNING, INTERRUPTED, FAILED = "finished", "running", "interrupted", "failed"


class RunError(ValueError):
    """A run directory that cannot be used as asked; the message says why and what to do."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C or SIGTERM; the run directory says where, and can be resumed."""

    epoch: int | None  # None where no one run was stopped (a tuning study)

    def __init__(self, run_dir: Path, epoch: int):
        self.run_dir, self.epoch = run_dir, epoch
        super().__init__(f"training interrupted after epoch {epoch}; the run is saved at {run_dir}: "
                         f"continue it with `adirec train --resume {run_dir}`")


def default_protocol(data: MultiDomainData) -> str:
    """``sampled`` where the source ships candidate lists, else ``full``."""
    return "sampled" if data.candidates else "full"


def default_split(data: MultiDomainData) -> str:
    return "test" if len(data.splits["test"]) else "valid"


# ----------------------------------------------------------------------------- status
def write_status(out: Path, state: str, **extra) -> None:
    atomic_write_json(out / STATUS, {"state": state, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                     **extra})


def run_status(run: Path) -> dict:
    """The run's status; a run without status.json counts as finished when it has a summary."""
    if (run / STATUS).is_file():
        return read_json(run / STATUS)
    return {"state": FINISHED} if (run / "summary.json").is_file() else {"state": RUNNING}


def _last_epoch(out: Path) -> int:
    path = out / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return int(json.loads(lines[-1]).get("epoch", 0)) if lines else 0


# ----------------------------------------------------------------------------- train
def train_run(spec: DataSpec, model_name: str, out_dir: str | Path, *, model_overrides: dict | None = None,
              train_config: TrainConfig | None = None, data: MultiDomainData | None = None,
              report_split: str | None = None, match_budget: bool = False, resume: bool = False,
              valid_users: int = 10_000, stream_workers: int = 0) -> dict | None:
    """Train ``model_name`` on ``spec`` into the run directory ``out_dir``; returns the summary on
    rank 0 (None on the other ranks of a torchrun job).

    * ``parquet:DIR`` with valid and test splits (and no ``data`` given): the training split is
      streamed (:meth:`ParquetLayout.training_view`, validation on at most ``valid_users`` users);
    * anything else: the data in memory (``data`` when given, else ``spec.load()``).
    ``match_budget`` scales the backbone widths to ADI-SE's dense parameter count
    (:func:`~adirec.models.registry.budget_matched_config`). ``resume`` continues the run in
    ``out_dir`` from its last completed epoch, with the configuration it recorded; a higher epoch
    cap in ``train_config`` continues a run that reached its cap (:func:`check_epoch_cap_raise`).
    Raises :class:`TrainingInterrupted` (Ctrl-C / SIGTERM) and
    :class:`~adirec.train.loop.TrainingDiverged`, after recording them in ``status.json``.
    """
    out = Path(out_dir)
    tcfg = train_config or TrainConfig()
    started = ddp.init_from_env(device=ddp.resolve_device(tcfg.device))
    try:
        exists = (out / "config.json").exists()
        ddp.barrier()  # every rank looks before rank 0 writes, so they all stop together
        if exists and not resume:
            raise FileExistsError(f"{out} already holds a run; choose another --out, or continue it "
                                  f"with `adirec train --resume {out}`")
        if resume and not exists:
            raise RunError(f"{out} holds no run to resume (no config.json)")
        device = ddp.resolve_device(tcfg.device)
        if (device.type == "cuda" and ddp.rank_world()[1] > 1 and dist.get_backend() == "nccl"
                and (model_overrides or {}).get("sparse_embeddings", build_config(model_name).sparse_embeddings)):
            raise ValueError("sparse embedding gradients cannot be all-reduced by NCCL across GPU processes; "
                             "use --no-sparse-embeddings, or --device cpu")
        spec = resolve_spec(spec)
        layout = _streamable(spec) if data is None else None
        summary = _train(spec, model_name, out, model_overrides or {}, tcfg, data, report_split,
                         match_budget, resume, layout, valid_users, stream_workers)
        return summary if ddp.is_main() else None
    finally:
        if started:
            ddp.shutdown()


def _train(spec, model_name, out: Path, overrides: dict, tcfg: TrainConfig, data, report_split,
           match_budget: bool, resume: bool, layout, valid_users: int, stream_workers: int) -> dict:
    """The body of :func:`train_run`; every rank runs it, rank 0 alone writes."""
    main = ddp.is_main()
    t0 = time.time()
    stream_kw = {}
    if layout is not None:
        view = layout.training_view(valid_users=valid_users, seed=tcfg.seed, history_len=spec.history_len,
                                    num_workers=stream_workers)
        data, report_split = view.data, "test"
        stream_kw = dict(batches=view.batches, store=view.store, item_counts=view.item_counts)
        data_print = layout_fingerprint(layout)
    else:
        data = data if data is not None else spec.load()
        data_print = fingerprint(data)
    load_seconds = time.time() - t0
    report_split = report_split or default_split(data)
    if resume:
        recorded = read_run_config(out)
        _check_data(out, recorded, data_print, spec)
        mcfg = TwoTowerConfig.from_dict(recorded["model_config"], source=str(out / "config.json"))
        if tcfg.epochs != recorded["train_config"]["epochs"]:
            check_epoch_cap_raise(out, recorded, tcfg)
            epoch = read_json(out / "checkpoints" / RESUME_STATE)["epoch"]
            if stopped_early(out):
                raise RunError(f"{out} stopped early at epoch {epoch} ({tcfg.patience} epochs without a better "
                               f"validation metric): a cap of {tcfg.epochs} trains nothing more, and the run "
                               f"stands as it is")
            raised = {"from": recorded["train_config"]["epochs"], "to": tcfg.epochs, "after_epoch": epoch,
                      "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            if main:
                recorded["train_config"]["epochs"] = tcfg.epochs
                recorded["epoch_cap_raised"] = [*recorded.get("epoch_cap_raised", []), raised]
                atomic_write_json(out / "config.json", recorded)
    else:
        mcfg = (budget_matched_config(model_name, data.schema, data.num_domains, **overrides) if match_budget
                else build_config(model_name, data.num_domains, **overrides))
    torch.manual_seed(tcfg.seed)
    model = build_model(model_name, data.schema, data.num_domains, mcfg)
    if layout is not None and tcfg.domain_weighting == "balanced":
        raise ValueError("--domain-weighting balanced needs each domain's training rows, which a stream does "
                         "not count; load the data in memory")
    if layout is not None and isinstance(model, PerDomainModel):
        raise ValueError(f"model {model_name!r} trains one model per domain and cannot be trained from a "
                         f"stream; load the data in memory")
    if resume and isinstance(model, PerDomainModel):
        raise RunError(f"{out}: a one-model-per-domain run ({model_name}) cannot be resumed; train it again")
    if main and not resume:
        out.mkdir(parents=True, exist_ok=True)
        write_keys(out / "vocab" / "users.parquet", data.user_keys)
        write_keys(out / "vocab" / "items.parquet", data.item_keys)
        config = {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "model": model_name,
                  "data": asdict(spec), "data_name": data.name, "domains": data.domains,
                  # what was built: the preset's values resolved for this data
                  "report_split": report_split, "model_config": asdict(built_config(model, mcfg)),
                  "train_config": asdict(tcfg),
                  "schema": data.schema.to_dict(), "data_fingerprint": data_print}
        if layout is not None:
            config["streaming"] = {"train_rows": len(stream_kw["batches"]), "valid_users": valid_users,
                                   "world_size": ddp.rank_world()[1]}
        atomic_write_json(out / "config.json", config)
    if main:
        write_status(out, RUNNING, epoch=_last_epoch(out))
    protocol = default_protocol(data)
    try:
        if isinstance(model, PerDomainModel):
            summary = fit_per_domain(model, data, tcfg, report_split=report_split, protocol=protocol,
                                     out_dir=out if main else None)
        else:
            # the Trainer writes checkpoints on rank 0 only; the others read the resume state
            trainer = Trainer(model, data, tcfg, report_split=report_split, protocol=protocol, out_dir=out,
                              **stream_kw)
            summary = trainer.fit(resume=resume)
    except KeyboardInterrupt:
        epoch = _last_epoch(out)
        if main:
            write_status(out, INTERRUPTED, epoch=epoch, resumable=not isinstance(model, PerDomainModel))
        raise TrainingInterrupted(out, epoch) from None
    except TrainingDiverged as e:
        if main:
            write_status(out, FAILED, epoch=e.epoch - 1, reason=str(e))
        raise
    except Exception as e:
        if main:
            write_status(out, FAILED, epoch=_last_epoch(out), reason=f"{type(e).__name__}: {e}")
        raise
    summary["load_seconds"] = load_seconds
    if main:
        atomic_write_json(out / "summary.json", summary)
        write_status(out, FINISHED, epoch=summary.get("epochs_run"), best_epoch=summary.get("best_epoch"))
    return summary




# settings that a resumed run may take anew: they decide where and how visibly it runs, not what
RESUME_FREE = ("num_threads", "device", "progress")


def stopped_early(run: Path) -> bool:
    """Whether the run in ``run`` stopped because its validation metric stopped improving
    (``patience`` epochs without a new best), read from the state it saved after its last epoch."""
    patience = read_run_config(run)["train_config"].get("patience") or 0
    state_path = run / "checkpoints" / RESUME_STATE
    if not state_path.is_file():
        raise RunError(f"{run}: no saved training state ({state_path} missing)")
    return bool(patience) and read_json(state_path)["bad_epochs"] >= patience


def check_epoch_cap_raise(run: Path, recorded: dict, tcfg: TrainConfig) -> None:
    """Check that the run in ``run`` (config ``recorded``), continued under the higher epoch cap of
    ``tcfg``, ends where a run trained with that cap from the start ends: a single model with its
    saved training state, not failed, every other training setting equal and a learning rate that
    does not follow the cap. Whether it stopped early (then it trains nothing more: it already is
    the run with the higher cap) is :func:`stopped_early`'s question. Raises :class:`RunError`."""
    old, new = recorded["train_config"]["epochs"], tcfg.epochs
    if new < old:
        raise RunError(f"{run} was trained with a cap of {old} epochs; a cap can be raised, not lowered "
                       f"(checkpoints/epoch_NNN.safetensors holds each epoch's weights)")
    preset = MODELS.get(recorded.get("model", ""))
    if preset is not None and preset.per_domain:
        raise RunError(f"{run} trains one model per domain ({recorded['model']}), which keeps no state to "
                       f"continue from; train it again with --epochs {new}")
    status = run_status(run)
    if status.get("state") == FAILED:
        raise RunError(f"{run} failed ({status.get('reason', 'see status.json')}); train it again")
    mine = {k: v for k, v in json.loads(json.dumps(asdict(tcfg))).items() if k not in (*RESUME_FREE, "epochs")}
    recorded_train = json.loads(json.dumps(asdict(TrainConfig(**recorded["train_config"]))))  # older: defaults
    theirs = {k: v for k, v in recorded_train.items() if k not in (*RESUME_FREE, "epochs")}
    other = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if other:
        raise RunError(f"{run}: a resumed run keeps the training settings it recorded; only the epoch cap "
                       f"may be raised, and {other} differ")
    if tcfg.lr_schedule != "constant":
        raise RunError(f"{run}: its learning rate follows the {tcfg.lr_schedule} schedule over {old} epochs, so "
                       f"its epochs would have had other rates under a cap of {new}; train a new run with "
                       f"--epochs {new}")
    if not (run / "checkpoints" / RESUME_STATE).is_file():
        raise RunError(f"{run}: no saved training state to continue from (checkpoints/{RESUME_STATE} missing)")


def built_config(model, config: TwoTowerConfig) -> TwoTowerConfig:
    """The config a model was built with, its data-dependent values resolved (a per-domain model's
    config is its sub-models')."""
    if isinstance(model, PerDomainModel):
        return cast(TwoTowerModel, model.models[0]).config
    return model.config if isinstance(model, TwoTowerModel) else config


def _streamable(spec: DataSpec):
    """The layout of a ``parquet:DIR`` spec that can be streamed (it has a validation split and a
    separate reported test split); None otherwise."""
    kind, _, location = spec.source.partition(":")
    if kind != "parquet" or not location:
        return None
    from adirec.data.parquet import ParquetLayout
    layout = ParquetLayout(location)
    if layout.split_rows("valid") and layout.split_rows("test"):
        return layout
    return None


def layout_fingerprint(layout) -> dict:
    """A Parquet layout's fingerprint: its manifest (every file with rows and bytes)."""
    files = layout.manifest["files"]
    h = hashlib.sha256(json.dumps(files, sort_keys=True).encode())
    return {"rows": {s: layout.split_rows(s) for s in ("train", "valid", "test")},
            "layout": str(layout.path), "sha256": h.hexdigest()}


def _layout_print_of(spec: DataSpec) -> dict:
    from adirec.data.parquet import ParquetLayout
    return layout_fingerprint(ParquetLayout(spec.source.partition(":")[2]))


#: DataSpec fields that name files
_PATH_FIELDS = ("user_features", "item_features", "user_domain_features", "item_domain_features",
                "feature_types", "candidates")


def resolve_spec(spec: DataSpec) -> DataSpec:
    """``spec`` with the source's location and every file it names made absolute, so that the run
    works from any directory."""
    kind, sep, location = spec.source.partition(":")
    changes: dict[str, Any] = {f: str(Path(getattr(spec, f)).expanduser().resolve())
                               for f in _PATH_FIELDS if getattr(spec, f)}
    if sep and kind != "synthetic" and location:
        changes["source"] = f"{kind}:{Path(location).expanduser().resolve()}"
    return dataclasses.replace(spec, **changes)


# ----------------------------------------------------------------------------- load
def _check_format(run: Path, cfg: dict) -> None:
    version = cfg.get("format_version", 1)
    if version == RUN_FORMAT_VERSION and cfg.get("format", RUN_FORMAT) == RUN_FORMAT:
        return
    if version == 1:
        raise RunError(f"{run} was written by an earlier adirec (run format 1), which numbered users and items "
                       f"in the order of the data files and did not record them; its weights cannot be matched "
                       f"to this version's vocabularies. Train it again: "
                       f"`adirec train --config {run / 'config.json'} --out NEW_RUN`")
    raise RunError(f"{run}: run format {cfg.get('format')!r} version {version!r} is not supported "
                   f"(this adirec reads version {RUN_FORMAT_VERSION}); use the adirec that wrote it")


def _check_data(run: Path, cfg: dict, now: dict, spec: DataSpec) -> None:
    stored = cfg.get("data_fingerprint")
    if stored is None or stored.get("sha256") == now.get("sha256"):
        return
    raise RunError(f"the data at {spec.source} does not match the data run {run} was trained on "
                   f"({describe_difference(stored, now)}). Point the run at its own data with --data SRC, "
                   f"or train again on this data")


def read_run_config(run: str | Path) -> dict:
    """A run's config.json, checked for its format version."""
    run = Path(run)
    path = run / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run} is not a run directory (no config.json)")
    cfg = read_json(path)
    _check_format(run, cfg)
    return cfg


def check_complete(run: Path, allow_incomplete: bool) -> dict:
    """The run's status; an unfinished run raises unless ``allow_incomplete`` (then its best
    checkpoint is used, with a warning on stderr)."""
    status = run_status(run)
    state = status.get("state")
    if state == FINISHED:
        return status
    has_best = (run / "model.safetensors").is_file()
    states: dict[str | None, str] = {
        RUNNING: "is still training, or was killed before it could say so",
        INTERRUPTED: f"was interrupted after epoch {status.get('epoch')}",
        FAILED: f"failed after epoch {status.get('epoch')}: {status.get('reason', 'unknown reason')}"}
    what = states.get(state, f"is in state {state!r}")
    if allow_incomplete and has_best:
        print(f"adirec: warning: {run} {what}; using its best checkpoint so far", file=sys.stderr)
        return status
    hint = f"resume it with `adirec train --resume {run}`" if state != FAILED else "train it again"
    if has_best:
        hint += ", or pass --allow-incomplete to use its best checkpoint so far"
    raise RunError(f"{run} is incomplete: it {what}; {hint}")


def load_run(run_dir: str | Path, data: MultiDomainData | None = None, *, data_source: str | None = None,
             allow_incomplete: bool = False):
    """(model with its best weights, on the CPU; data; config dict) of a finished run.

    The data is loaded from the recorded spec (``data_source`` replaces its source, for data
    that moved) unless ``data`` is given; either way it must match the run's fingerprint and
    vocabularies. An unfinished run is refused unless ``allow_incomplete``.
    """
    run = Path(run_dir)
    cfg = read_run_config(run)
    check_complete(run, allow_incomplete)
    spec = DataSpec(**cfg["data"])
    if data_source is not None:
        spec = resolve_spec(dataclasses.replace(spec, source=data_source))
    if data is None:
        data = spec.load()
    streamed = "layout" in cfg.get("data_fingerprint", {})  # trained from a stream: the layout's print
    _check_data(run, cfg, _layout_print_of(spec) if streamed else fingerprint(data), spec)
    if data.domains != cfg["domains"]:
        raise RunError(f"{run}: data domains {data.domains} differ from the run's {cfg['domains']}")
    for side, keys in (("users", data.user_keys), ("items", data.item_keys)):
        stored = read_keys(run / "vocab" / f"{side}.parquet")
        if len(stored) != len(keys) - 1 or any(a != b for a, b in zip(stored, keys[1:], strict=True)):
            raise RunError(f"{run}: the {side} of the data at {spec.source} differ from the run's "
                           f"(vocab/{side}.parquet: {len(stored)}, data: {len(keys) - 1}); point the run at "
                           f"its own data with --data SRC")
    model = build_run_model(cfg, data.schema, data.num_domains, source=str(run / "config.json"))
    load_weights(model, run / "model.safetensors")
    model.eval()
    return model, data, cfg


def build_run_model(cfg: dict, schema, num_domains: int, *, source: str = "run config") -> RunModel:
    """The architecture a run config describes (weights not loaded): a preset's model, or an
    ensemble of members (:func:`ensemble_runs`)."""
    if cfg["model"] == ENSEMBLE:
        members = [build_model(m["model"], schema, num_domains,
                               TwoTowerConfig.from_dict(m["model_config"], source=f"{source}, member {k}"))
                   for k, m in enumerate(cfg["members"])]
        return EnsembleModel(members, cfg["weights"])
    return build_model(cfg["model"], schema, num_domains, TwoTowerConfig.from_dict(cfg["model_config"], source=source))


ENSEMBLE = "ensemble"


def ensemble_runs(runs: list[str | Path], out_dir: str | Path, *, weights: list[float] | None = None) -> Path:
    """Write a run directory that scores as the weighted sum of finished runs trained on the same
    data (:class:`~adirec.models.ensemble.EnsembleModel`); evaluate, export and serve it like any run."""
    out = Path(out_dir)
    if (out / "config.json").exists():
        raise FileExistsError(f"{out} already holds a run; choose another --out")
    if len(runs) < 2:
        raise ValueError(f"an ensemble needs at least two runs, got {len(runs)}")
    cfgs = []
    for r in runs:
        r = Path(r)
        cfg = read_run_config(r)
        check_complete(r, allow_incomplete=False)
        if cfg["model"] == ENSEMBLE:
            raise ValueError(f"{r} is itself an ensemble; list its member runs instead")
        cfgs.append((r, cfg))
    first_run, first = cfgs[0]
    for r, cfg in cfgs[1:]:
        for key in ("domains", "data_fingerprint", "schema"):
            if cfg.get(key) != first.get(key):
                raise RunError(f"{r} was trained on other data than {first_run} ({key} differs); the members of "
                               f"an ensemble must share their data")
    from adirec.data.schema import Schema
    schema = Schema.from_dict(first["schema"])
    members = []
    for r, cfg in cfgs:
        m = build_model(cfg["model"], schema, len(first["domains"]),  # not an ensemble: checked above
                        TwoTowerConfig.from_dict(cfg["model_config"], source=str(r / "config.json")))
        load_weights(m, r / "model.safetensors")
        members.append(m)
    model = EnsembleModel(members, weights)
    out.mkdir(parents=True, exist_ok=True)
    for side in ("users", "items"):
        write_keys(out / "vocab" / f"{side}.parquet", [None, *read_keys(first_run / "vocab" / f"{side}.parquet")])
    config = {k: first[k] for k in ("data", "data_name", "domains", "report_split", "schema", "data_fingerprint")}
    config.update(format=RUN_FORMAT, format_version=RUN_FORMAT_VERSION, model=ENSEMBLE,
                  members=[{"run": str(r.resolve()), "model": c["model"], "model_config": c["model_config"]}
                           for r, c in cfgs],
                  weights=model.weights.tolist(), train_config=first["train_config"])
    save_weights(model, out / "model.safetensors")
    atomic_write_json(out / "config.json", config)
    summaries = [read_json(r / "summary.json") for r, _ in cfgs]
    atomic_write_json(out / "summary.json", {"members": summaries, "params": model.num_parameters(),
                                             "train_seconds": sum(s.get("train_seconds") or 0 for s in summaries)})
    write_status(out, FINISHED)
    return out


def evaluate_run(run_dir: str | Path, *, protocol: str | None = None, split: str | None = None,
                 ks: Sequence[int] = (10, 50), data: MultiDomainData | None = None, device: str = "auto",
                 data_source: str | None = None, allow_incomplete: bool = False, history: str = "train") -> dict:
    """Evaluate a run on ``device`` (see :func:`adirec.train.distributed.resolve_device`); the
    dict is what ``adirec evaluate --json`` writes. ``history``: what users' histories hold when
    the test split is ranked (:func:`adirec.data.split.history_view`)."""
    model, data, cfg = load_run(run_dir, data, data_source=data_source, allow_incomplete=allow_incomplete)
    model.to(ddp.resolve_device(device))
    protocol = protocol or default_protocol(data)
    split = split or cfg.get("report_split") or default_split(data)
    seen = history_view(data, split, history)
    scorer = TwoTowerScorer(model, FeatureStore(seen), data.num_items)
    t0 = time.time()
    result = evaluate(scorer, seen, split=split, protocol=protocol, ks=list(ks), seen=SeenItems(seen))
    summary_path = Path(run_dir) / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else {}
    return {
        "model": cfg["model"], "data": data.name, "protocol": protocol, "split": split, "history": history,
        "params": model.num_parameters(), "train_seconds": summary.get("train_seconds"),
        "eval_seconds": time.time() - t0, "best_epoch": summary.get("best_epoch"),
        "queries": int(len(result.query_domain)),
        "metrics": result.metrics(data.domains),
    }
