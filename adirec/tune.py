"""``adirec tune``: hyper-parameter search with Optuna on validation data only.

Each trial is an ordinary training run (:func:`adirec.runs.train_run`), and its value is the
run's best validation metric (``summary["best_valid_<metric>"]``, the mean over domains). The
trainer validates on the data's ``valid`` split when the reported split is ``test``, and on a
hold-out from training when the reported split is ``valid``; nothing here evaluates anything, so
the reported split is never read to choose a configuration.

A study lives in one directory::

    study.json          what is searched: model, data (and its fingerprint), base model and
                        training settings, search space, seed, seeds per trial; a rerun
                        must match it
    study.log           Optuna's journal of the trials (the sampler's memory)
    trials/NNN/         each trial's run directory, weights and checkpoints deleted when it ends
                        (config.json, summary.json, metrics.jsonl and status.json are kept);
                        with ``seeds_per_trial`` k > 1, one run directory per seed,
                        trials/NNN/seedS/ for S = seed .. seed + k - 1
    trials.json         every trial: params, value, state, seconds, error
    best.json           the best trial's run config (a run's config.json plus "tune"; with
                        k seeds per trial, the run of the first seed, and "tune" holds the
                        mean and each seed's value): ``adirec train --config DIR/best.json
                        --out RUN`` trains it again

Rerunning the same command continues the study until ``trials`` trials have ended (finished or
failed; a trial cut short by Ctrl-C or a killed process does not count and is run again).

The search space (:class:`SearchSpace`) maps setting names to one of ``{"range": [lo, hi]}``,
``{"log": [lo, hi]}`` (log-uniform, lo > 0) or ``{"choice": [v1, v2, ...]}``. Names are those
of ``adirec train --set``: TrainConfig and TwoTowerConfig fields, dotted for nesting
(``self_training.p0``). A range over an integer field samples integers. The default space
(:func:`default_space`) is the same for every preset, plus the self-training settings when the
base configuration trains with self-training (the ADI presets), less the batch size under
``--batch-size auto`` and the sampled negatives under the full softmax (the plus presets); see
:data:`COMMON_SPACE` and :data:`SELF_TRAINING_SPACE`.

With ``seeds_per_trial`` k > 1 a trial trains its settings k times, with the seeds ``seed``
.. ``seed + k - 1``, and its value is the mean of the k runs' values: where one run's validation
value moves with the seed about as much as the settings being compared move it, a single-seed
study ranks noise. It costs k times the training.

The sampler is Optuna's TPE, made anew for every trial with a seed drawn from (``seed``, trial
number), so a study that was interrupted and continued proposes what an uninterrupted one would.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adirec.data.spec import DataSpec
from adirec.options import option
from adirec.runs import (TrainingInterrupted, _streamable, layout_fingerprint, resolve_spec, train_run)
from adirec.train.config import TrainConfig
from adirec.utils import atomic_write_json, read_json

STUDY_FORMAT = "adirec-tune"
STUDY_FORMAT_VERSION = 1
STUDY_NAME = "adirec-tune"

#: searched for every preset
COMMON_SPACE: dict[str, dict] = {
    "embedding_dim": {"choice": [32, 64, 128]},
    "output_dim": {"choice": [32, 64, 128]},
    "lr": {"log": [3e-4, 1e-2]},
    "weight_decay": {"choice": [0.0, 1e-6, 1e-5, 1e-4]},
    "temperature": {"log": [0.03, 0.3]},
    "batch_size": {"choice": [256, 512, 1024, 2048]},
    "dropout": {"range": [0.0, 0.3]},
    "history_dropout": {"range": [0.0, 0.4]},
    "num_negatives": {"choice": [256, 1024, 4096]},
}

#: searched besides :data:`COMMON_SPACE` when the base configuration trains with self-training
SELF_TRAINING_SPACE: dict[str, dict] = {
    "self_training.p0": {"range": [0.0, 0.1]},
    "self_training.weight": {"range": [0.1, 1.0]},
}

#: settings a space may not search, and why
NOT_SEARCHED = {
    "seed": "one seed serves the whole study (--seed)",
    "device": "it is a runtime setting, not a hyper-parameter",
    "num_threads": "it is a runtime setting, not a hyper-parameter",
    "progress": "it is a runtime setting, not a hyper-parameter",
    "early_stopping_metric": "it is the objective; trials measured on different metrics cannot be compared",
    "holdout_fraction": "it changes the validation data; trials validated on different data cannot be compared",
    "eval_ks": "it changes only what validation reports",
}

#: TrainConfig fields that do not change what a trial computes; a rerun may change them
RUNTIME_FIELDS = ("num_threads", "device", "progress")

KINDS = ("range", "log", "choice")


class StudyError(ValueError):
    """A study directory that cannot be used as asked; the message says why and what to do."""


class TuneInterrupted(TrainingInterrupted):
    """Tuning stopped by Ctrl-C or SIGTERM; rerunning the same command continues the study."""

    def __init__(self, out: Path, trial: int, ended: int):
        KeyboardInterrupt.__init__(self, f"tuning interrupted in trial {trial}; {out} holds {ended} ended "
                                         f"trials: rerun the same command to continue the study")
        self.run_dir, self.epoch = out, None


# ----------------------------------------------------------------------------- configuration
@dataclass
class TuneConfig:
    """How a study runs (the flags of ``adirec tune`` besides data, model and training)."""

    out: str = option(help="study directory: created, or continued when it holds this study", flag="--out",
                      metavar="DIR")
    trials: int = option(20, "trials of the study in total, counting those that already ended")
    space: str | None = option(None, "JSON search space replacing the default one, e.g. "
                               '{"lr": {"log": [1e-4, 1e-2]}, "embedding_dim": {"choice": [32, 64]}}',
                               metavar="FILE")
    timeout: float | None = option(None, "start no trial after this many seconds (the running one finishes)",
                                   metavar="S")
    seed: int = option(0, "seeds the sampler and the training of every trial")
    seeds_per_trial: int = option(1, "train each trial with this many seeds (--seed, --seed + 1, ...) and value "
                                     "it by the mean of their validation values: steadier where one run's value "
                                     "is noisy, at that many times the cost", metavar="K")

    def __post_init__(self) -> None:
        if not isinstance(self.out, (str, Path)) or not str(self.out).strip():
            raise ValueError(f"--out must name the study directory, got {self.out!r}")
        for name, low in (("trials", 1), ("seed", 0), ("seeds_per_trial", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {v!r}")
        if self.timeout is not None and (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                                         or not math.isfinite(self.timeout) or self.timeout <= 0):
            raise ValueError(f"--timeout must be a number of seconds > 0, got {self.timeout!r}")


# ----------------------------------------------------------------------------- search space
def _landing(key: str, value) -> tuple[str, str, Any]:
    """(scope ``train`` | ``model`` | ``data``, field name, value as that field holds it) of
    setting ``key``; the names are resolved by :func:`adirec.arguments.apply_sets`, as ``--set`` does."""
    from adirec.arguments import apply_sets
    targets: dict[str, dict] = {"data": {}, "model": {}, "train": {}}
    try:
        apply_sets([(key, value)], **targets)
    except ValueError as e:
        raise ValueError(str(e).removeprefix(f"--set {key}: ")) from None
    scope = next(s for s, d in targets.items() if d)
    (name, held), = targets[scope].items()
    if isinstance(held, dict):  # self_training.NAME
        (name, held), = held.items()
    return scope, name, held


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


@dataclass(frozen=True)
class Dimension:
    """One searched setting.

    Attributes:
        key: the setting's name (``lr``, ``self_training.p0``, ``model.dropout``).
        kind: ``range`` (uniform in [lo, hi]), ``log`` (log-uniform in [lo, hi]) or ``choice``.
        values: (lo, hi), or the choices, as the JSON gave them.
        integer: a range over an integer field: integers are sampled.
    """

    key: str
    kind: str
    values: tuple
    integer: bool = False

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
        if self.kind == "choice":
            return CategoricalDistribution([self.encode(v) for v in self.values])
        lo, hi = self.values
        if self.integer:
            return IntDistribution(int(lo), int(hi), log=self.kind == "log")
        return FloatDistribution(float(lo), float(hi), log=self.kind == "log")

    def encode(self, value):
        """A choice as Optuna stores it: lists (``expert_hidden``) as their JSON text."""
        if self.kind == "choice" and not all(_scalar(v) for v in self.values):
            return json.dumps(value)
        return value

    def decode(self, sampled):
        """The setting's value of a value Optuna sampled."""
        if self.kind == "choice" and not all(_scalar(v) for v in self.values):
            return json.loads(sampled)
        return sampled

    def to_dict(self) -> dict:
        return {self.kind: list(self.values)}


@dataclass(frozen=True)
class SearchSpace:
    """The searched settings (sorted by name) and where the space came from."""

    dimensions: tuple[Dimension, ...]
    source: str

    @classmethod
    def from_dict(cls, entries, *, source: str) -> SearchSpace:
        """Parse ``{"lr": {"log": [1e-4, 1e-2]}, ...}``; raise ValueError naming ``source``, the
        key and the problem."""
        if not isinstance(entries, dict) or not entries:
            raise ValueError(f"{source}: a search space is a JSON object of settings, e.g. "
                             f'{{"lr": {{"log": [1e-4, 1e-2]}}}}, got {json.dumps(entries)[:80]}')
        dims = []
        seen: dict[tuple[str, str], str] = {}
        for key, entry in entries.items():
            dim = _parse_dimension(key, entry, source)
            scope, name, _ = _landing(key, dim.values[0])
            if (scope, name) in seen:
                raise ValueError(f"{source}: {key!r} and {seen[(scope, name)]!r} are the same setting")
            seen[(scope, name)] = key
            dims.append(dim)
        return cls(tuple(sorted(dims, key=lambda d: d.key)), source)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"search space file {path} does not exist")
        try:
            entries = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a text file ({e})") from None
        return cls.from_dict(entries, source=str(path))

    def to_dict(self) -> dict:
        return {d.key: d.to_dict() for d in self.dimensions}

    def distributions(self) -> dict:
        return {d.key: d.distribution() for d in self.dimensions}

    def settings(self, params: dict) -> dict:
        """The settings of a trial's sampled ``params`` (Optuna's values decoded)."""
        return {d.key: d.decode(params[d.key]) for d in self.dimensions if d.key in params}

    def check(self, model_name: str, model_overrides: dict, train_config: TrainConfig,
              num_domains: int | None = None) -> None:
        """Every end of every range and every choice must give valid configs on the base
        (``model_name`` with ``model_overrides``, ``train_config``, on data with ``num_domains``
        domains); raise ValueError naming the setting and value otherwise."""
        for dim in self.dimensions:
            for value in dim.values:  # both ends of a range, every choice
                try:
                    trial_configs(model_name, model_overrides, train_config, {dim.key: value}, num_domains)
                except ValueError as e:
                    raise ValueError(f"{self.source}: {dim.key}: the value {json.dumps(value)} is not allowed "
                                     f"({e})") from None


def _parse_dimension(key, entry, source: str) -> Dimension:
    if not isinstance(key, str) or not key:
        raise ValueError(f"{source}: setting names must be non-empty text, got {key!r}")
    example = '{"range": [lo, hi]}, {"log": [lo, hi]} or {"choice": [v1, v2, ...]}'
    if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in KINDS:
        raise ValueError(f"{source}: {key}: expected one of {example}, got {json.dumps(entry)}")
    (kind, values), = entry.items()
    bare = key.removeprefix("train.").removeprefix("model.")
    if bare in NOT_SEARCHED:  # before the lookup: "seed" names a data field too
        raise ValueError(f"{source}: {key} cannot be searched: {NOT_SEARCHED[bare]}")
    if not isinstance(values, list) or not values:
        raise ValueError(f"{source}: {key}: {kind} needs a non-empty list, got {json.dumps(values)}")
    try:
        scope, name, held = _landing(key, values[0])
    except ValueError as e:
        raise ValueError(f"{source}: unknown setting {key!r}: {e}") from None
    if scope == "data":
        raise ValueError(f"{source}: {key}: data settings are not searched (they change the data set the "
                         f"trials are compared on); set them with the data options")
    if kind == "choice":
        texts = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(texts)) != len(texts):
            raise ValueError(f"{source}: {key}: the choices repeat a value: {json.dumps(values)}")
        return Dimension(key, kind, tuple(values))
    if len(values) != 2 or not all(_is_number(v) for v in values):
        raise ValueError(f"{source}: {key}: {kind} needs [lo, hi], two finite numbers, got {json.dumps(values)}")
    lo, hi = values
    if not lo < hi:
        raise ValueError(f"{source}: {key}: {kind} [{lo}, {hi}] is empty: lo must be below hi")
    if kind == "log" and lo <= 0:
        raise ValueError(f"{source}: {key}: log [{lo}, {hi}] needs lo > 0 (a log scale has no 0); "
                         f"use range, or a choice that holds 0")
    integer = isinstance(held, int) and not isinstance(held, bool)
    if integer and not all(isinstance(v, int) for v in values):
        raise ValueError(f"{source}: {key}: {name} holds integers, so {kind} needs integer ends, got "
                         f"{json.dumps(values)}")
    if not integer and not isinstance(held, float):
        raise ValueError(f"{source}: {key}: {name} is not a number; search it with choice")
    return Dimension(key, kind, (lo, hi), integer)


def default_space(train_config: TrainConfig, data=None) -> SearchSpace:
    """:data:`COMMON_SPACE`, plus :data:`SELF_TRAINING_SPACE` when ``train_config`` trains with
    self-training (the ADI presets unless ``--no-self-training``), less what the base does not
    use: ``batch_size`` when it is ``auto`` (a rule that depends on how the run batches, which
    fixed sizes would replace), ``num_negatives`` when the run trains the full softmax (``full``,
    or ``auto`` on ``data`` whose corpora are small enough; without ``data`` it stays)."""
    from adirec.train.objective import uses_full_softmax
    entries = dict(COMMON_SPACE)
    left_out = []
    if train_config.batch_size == "auto":
        left_out.append("batch_size")
    if train_config.softmax == "full" or (train_config.softmax == "auto" and data is not None
                                          and uses_full_softmax(train_config, data)):
        left_out.append("num_negatives")
    for key in left_out:
        del entries[key]
    if train_config.self_training.enabled:
        entries.update(SELF_TRAINING_SPACE)
    family = "with self-training" if train_config.self_training.enabled else "without self-training"
    without = f", without {' and '.join(left_out)}" if left_out else ""
    return SearchSpace.from_dict(entries, source=f"the default search space ({family}{without})")


def trial_configs(model_name: str, model_overrides: dict, train_config: TrainConfig,
                  settings: dict, num_domains: int | None = None) -> tuple[dict, TrainConfig]:
    """(model overrides, TrainConfig) of a trial: the base with ``settings`` applied the way
    ``--set`` applies them; both validated (the model as it is built on data with ``num_domains``
    domains, which can change a preset's fields: ``Preset.one_domain``)."""
    from adirec.arguments import apply_sets
    from adirec.models.registry import build_config
    model, train = dict(model_overrides), asdict(train_config)
    apply_sets(list(settings.items()), data={}, model=model, train=train)
    build_config(model_name, num_domains, **model)  # validates the model settings
    return model, TrainConfig(**train)


# ----------------------------------------------------------------------------- the study
def _definition(spec: DataSpec, model_name: str, overrides: dict, tcfg: TrainConfig, space: SearchSpace,
                config: TuneConfig, data_print: dict) -> dict:
    """What a study is: a rerun continues it only when all of this is unchanged."""
    train = {k: v for k, v in asdict(tcfg).items() if k not in RUNTIME_FIELDS}
    return {"format": STUDY_FORMAT, "format_version": STUDY_FORMAT_VERSION, "model": model_name,
            "data": asdict(spec), "data_fingerprint": data_print, "model_overrides": overrides,
            "train_config": train, "space": space.to_dict(), "space_source": space.source, "seed": config.seed,
            "seeds_per_trial": config.seeds_per_trial}


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict) and value:
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _differences(stored: dict, now: dict) -> list[str]:
    """``field: old -> new`` for every difference (settings as dotted paths, the space by its
    setting names); the JSON round trip makes tuples lists, as in the stored file."""
    now = json.loads(json.dumps(now))
    skip = ("space", "space_source", "data_fingerprint")
    a = _flatten({k: v for k, v in stored.items() if k not in skip})
    b = _flatten({k: v for k, v in now.items() if k not in skip})
    a.update({f"space {k}": v for k, v in stored.get("space", {}).items()})
    b.update({f"space {k}": v for k, v in now.get("space", {}).items()})
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(f"{key} removed (was {json.dumps(a[key])})")
        elif key not in a:
            out.append(f"{key} added ({json.dumps(b[key])})")
        elif a[key] != b[key]:
            out.append(f"{key}: {json.dumps(a[key])} -> {json.dumps(b[key])}")
    if stored.get("data_fingerprint", {}).get("sha256") != now.get("data_fingerprint", {}).get("sha256"):
        from adirec.data.fingerprint import describe_difference
        out.append(f"the data ({describe_difference(stored.get('data_fingerprint', {}), now['data_fingerprint'])})")
    return out


def _check_directory(out: Path) -> None:
    """Refuse an ``out`` that exists and is neither empty nor a study directory."""
    if (out / "study.json").is_file():
        return
    if out.exists() and (not out.is_dir() or any(p.name != ".lock" for p in out.iterdir())):
        raise StudyError(f"{out} exists and is not a study directory (no study.json); choose another --out")


def _check_definition(out: Path, definition: dict) -> bool:
    """Check that the study in ``out`` is the one ``definition`` describes; False when ``out``
    holds no study yet."""
    path = out / "study.json"
    if not path.is_file():
        return False
    stored = read_json(path)
    stored.setdefault("seeds_per_trial", 1)  # studies written before the setting trained one seed per trial
    if stored.get("format") != STUDY_FORMAT or stored.get("format_version") != STUDY_FORMAT_VERSION:
        raise StudyError(f"{path}: not a study of this adirec (format {stored.get('format')!r} version "
                         f"{stored.get('format_version')!r}); choose another --out")
    changed = _differences(stored, definition)
    if changed:
        space = [c for c in changed if c.startswith("space ")]
        what = "the search space" if len(space) == len(changed) else (
            "the base configuration" if not space else "the search space and the base configuration")
        raise StudyError(f"{out} holds a study with other settings: {what} changed ({'; '.join(changed)}). "
                         f"Rerun with the study's settings to continue it, or choose another --out")
    if not (out / "study.log").is_file():
        raise StudyError(f"{out / 'study.log'} is missing, so the study's trials are lost; choose another --out")
    return True


class _Lock:
    """An exclusive lock on the study directory: one ``adirec tune`` at a time."""

    def __init__(self, out: Path):
        self.path = out / ".lock"

    def __enter__(self):
        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise StudyError(f"another adirec tune is running in {self.path.parent}; wait for it, or stop it "
                             f"first") from None
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _sampler(seed: int, number: int):
    """TPE seeded by (study seed, trial number): a continued study samples what an
    uninterrupted one would."""
    import numpy as np
    import optuna
    return optuna.samplers.TPESampler(seed=int(np.random.SeedSequence([seed, number]).generate_state(1)[0]))


def _trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"{number:03d}"


def _seed_runs(out: Path, number: int, config: TuneConfig) -> list[tuple[int, Path]]:
    """(seed, run directory) of each training run of a trial."""
    trial = _trial_dir(out, number)
    if config.seeds_per_trial == 1:
        return [(config.seed, trial)]
    return [(s, trial / f"seed{s}") for s in range(config.seed, config.seed + config.seeds_per_trial)]


def _drop_weights(run: Path) -> None:
    """Delete a trial's checkpoints and weights; its config, summary, metrics and status stay."""
    shutil.rmtree(run / "checkpoints", ignore_errors=True)
    (run / "model.safetensors").unlink(missing_ok=True)


def _objective(summary: dict) -> tuple[str, float]:
    """(metric, best validation value) of a run summary; a one-model-per-domain run's value is
    the mean of its domains' values."""
    metric = summary["valid_metric"]
    value = summary[f"best_valid_{metric}"]
    if isinstance(value, dict):
        value = sum(value.values()) / len(value)
    return metric, float(value)


def tune(spec: DataSpec, model_name: str, config: TuneConfig, *, model_overrides: dict | None = None,
         train_config: TrainConfig | None = None, space: SearchSpace | None = None, data=None,
         echo: Callable[[str], None] = print) -> dict:
    """Run (or continue) the study ``config.out``: trials of ``model_name`` on ``spec`` with the
    base settings (``model_overrides``, ``train_config``; its seed is replaced by
    ``config.seed``), each trial's settings drawn from ``space`` (default:
    :func:`default_space`). ``data`` replaces ``spec.load()`` (the same data, already loaded).
    Returns what ``trials.json`` holds; prints one line per trial and the best trials.
    """
    optuna = _optuna()
    from adirec.data.fingerprint import fingerprint
    out = Path(config.out).expanduser().resolve()
    spec = resolve_spec(spec)
    overrides = dict(model_overrides or {})
    tcfg = dataclasses.replace(train_config or TrainConfig(), seed=config.seed)
    layout = _streamable(spec) if data is None else None
    if layout is None and data is None:
        data = spec.load()
    space = space or default_space(tcfg, data)
    num_domains = len(layout.domains) if layout is not None else data.num_domains
    space.check(model_name, overrides, tcfg, num_domains)
    data_print = layout_fingerprint(layout) if layout is not None else fingerprint(data)
    definition = _definition(spec, model_name, overrides, tcfg, space, config, data_print)
    _check_directory(out)
    out.mkdir(parents=True, exist_ok=True)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # every trial is reported here, in one line
    try:
        with _Lock(out):
            existing = _check_definition(out, definition)
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(out / "study.log")))
            study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize",
                                        load_if_exists=True)
            if not existing:  # written after the journal, so a study.json always has its study.log
                atomic_write_json(out / "study.json", definition)
            report = _run_study(study, out, spec, model_name, overrides, tcfg, space, data, config, echo,
                                num_domains)
    finally:
        optuna.logging.set_verbosity(verbosity)
    echo(format_best(report, out))
    return report


def _run_study(study, out: Path, spec, model_name, overrides, tcfg, space, data, config, echo,
               num_domains: int) -> dict:
    """Trials until the budget is spent or the time is up; returns trials.json's content."""
    from optuna.trial import TrialState
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)  # its process died: interrupted, not counted
        for _, run in _seed_runs(out, t.number, config):
            _drop_weights(run)
    started = time.time()
    while (ended := _counted(study)) < config.trials:
        if config.timeout is not None and time.time() - started >= config.timeout:
            echo(f"--timeout {config.timeout:g}s reached: {ended} of {config.trials} trials ended")
            break
        study.sampler = _sampler(config.seed, len(study.get_trials(deepcopy=False)))
        trial = study.ask(space.distributions())
        _run_trial(study, trial, out, spec, model_name, overrides, tcfg, space, data, config, ended, echo,
                   num_domains)
    return _write_reports(study, out, space, config)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError("adirec tune needs Optuna, an optional dependency: pip install 'adirec[tune]'") from None
    return optuna


def _counted(study) -> int:
    """Trials that count towards the budget: finished, or failed with an error of their own."""
    from optuna.trial import TrialState
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and "error" in t.user_attrs))


def _run_trial(study, trial, out: Path, spec, model_name, overrides, tcfg, space, data, config, ended, echo,
               num_domains: int):
    from optuna.trial import TrialState
    runs = _seed_runs(out, trial.number, config)
    settings = space.settings(trial.params)
    trial.set_user_attr("run", str(runs[0][1].relative_to(out)))
    t0 = time.time()
    label = f"trial {trial.number} ({ended + 1}/{config.trials})"
    values = []
    try:
        mcfg, trial_tcfg = trial_configs(model_name, overrides, tcfg, settings, num_domains)
        for seed, run in runs:
            summary = train_run(spec, model_name, run, model_overrides=mcfg,
                                train_config=dataclasses.replace(trial_tcfg, seed=seed), data=data)
            assert summary is not None, "a study trains in one process, whose summary train_run returns"
            metric, value = _objective(summary)
            if not math.isfinite(value):
                raise FloatingPointError(f"no finite validation value ({metric} {value}) at seed {seed}")
            values.append(value)
            _drop_weights(run)
    except KeyboardInterrupt:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        for _, run in runs:
            _drop_weights(run)
        _write_reports(study, out, space, config)
        raise TuneInterrupted(out, trial.number, _counted(study)) from None
    except Exception as e:  # a failed trial is recorded and the search goes on
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        trial.set_user_attr("error", f"{type(e).__name__}: {reason}")
        study.tell(trial, state=TrialState.FAIL)
        for _, run in runs:
            _drop_weights(run)
        _write_reports(study, out, space, config)
        echo(f"{label} failed after {time.time() - t0:.0f}s: {type(e).__name__}: {reason}  {_show(settings)}")
        return
    trial.set_user_attr("metric", metric)
    if len(values) > 1:
        trial.set_user_attr("seed_values", values)
    value = sum(values) / len(values)
    study.tell(trial, value)
    report = _write_reports(study, out, space, config)
    best = report["best"]
    seeds = f" (mean of {', '.join(f'{v:.4f}' for v in values)})" if len(values) > 1 else ""
    echo(f"{label}: {metric} {value:.4f}{seeds} (best {best['value']:.4f}, trial {best['number']})  "
         f"{time.time() - t0:.0f}s  {_show(settings)}")


def _show(settings: dict) -> str:
    def one(v):
        return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, tuple)) else str(v)
    return " ".join(f"{k}={one(v)}" for k, v in settings.items())


def _state(t) -> str:
    from optuna.trial import TrialState
    if t.state == TrialState.COMPLETE:
        return "finished"
    if t.state == TrialState.FAIL:
        return "failed" if "error" in t.user_attrs else "interrupted"
    return t.state.name.lower()


def _write_reports(study, out: Path, space: SearchSpace, config: TuneConfig) -> dict:
    """Write trials.json and best.json from the study's journal; returns trials.json's content."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start else None)
        rows.append({"number": t.number, "state": _state(t), "value": t.value, "metric": t.user_attrs.get("metric"),
                     "params": space.settings(t.params), "seconds": seconds, "run": t.user_attrs.get("run"),
                     **({"seed_values": t.user_attrs["seed_values"]} if "seed_values" in t.user_attrs else {}),
                     **({"error": t.user_attrs["error"]} if "error" in t.user_attrs else {})})
    finished = [r for r in rows if r["state"] == "finished"]
    best = max(finished, key=lambda r: (r["value"], -r["number"])) if finished else None
    report = {"study": str(out), "direction": "maximize", "budget": config.trials,
              "seeds_per_trial": config.seeds_per_trial,
              "ended": sum(r["state"] in ("finished", "failed") for r in rows),
              "best": best, "trials": rows}
    atomic_write_json(out / "trials.json", report)
    if best is not None:
        run_config = read_json(out / best["run"] / "config.json")
        run_config["tune"] = {"study": str(out), "trial": best["number"], "metric": best["metric"],
                              "value": best["value"], "params": best["params"],
                              **({"seed_values": best["seed_values"]} if "seed_values" in best else {})}
        atomic_write_json(out / "best.json", run_config)
    return report


def format_best(report: dict, out: Path, top: int = 5) -> str:
    """The best finished trials as a plain-text table, best first."""
    rows = report["trials"]
    finished = sorted((r for r in rows if r["state"] == "finished"), key=lambda r: (-r["value"], r["number"]))
    failed = sum(r["state"] == "failed" for r in rows)
    k = report.get("seeds_per_trial", 1)
    lines = [f"{out}: {len(finished)} finished, {failed} failed of {report['budget']} trials "
             f"(values on validation data only{f', each the mean of {k} seeds' if k > 1 else ''})"]
    if not finished:
        lines.append("no trial finished; the errors are in trials.json")
        return "\n".join(lines)
    metric = finished[0]["metric"]
    lines.append(f"{'rank':>4} {'trial':>5} {'valid ' + metric:>16} {'seconds':>8}  settings")
    for rank, r in enumerate(finished[:top], 1):
        lines.append(f"{rank:>4} {r['number']:>5} {r['value']:>16.4f} {r['seconds'] or 0:>8.0f}  {_show(r['params'])}")
    lines.append(f"best configuration: {out / 'best.json'} "
                 f"(train it: adirec train --config {out / 'best.json'} --out RUN_DIR)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def register(subparsers) -> None:
    """Add the ``tune`` command to the ``adirec`` sub-command parsers."""
    from adirec.arguments import add_data_args, add_model_args, add_train_args
    from adirec.options import add_options, parse_set
    p = subparsers.add_parser(
        "tune", help="hyper-parameter search (Optuna TPE) on validation data only",
        description="Search a preset's hyper-parameters: every trial is an ordinary training run under "
                    "OUT/trials/, valued by its best validation metric (never the reported split). Rerunning "
                    "the same command continues the study to --trials; OUT/best.json replays the best trial "
                    "with `adirec train --config OUT/best.json --out RUN_DIR`.")
    add_options(p.add_argument_group("search"), TuneConfig, dest_prefix="tune_")
    p.add_argument("--config", metavar="FILE", help="base settings from a run's config.json or a best.json; "
                   "flags and --set still apply")
    p.add_argument("--set", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                   help="a fixed TrainConfig / TwoTowerConfig / DataSpec setting of every trial (repeatable)")
    add_data_args(p)
    add_model_args(p)
    add_train_args(p, skip=("seed",))
    p.set_defaults(func=cmd_tune)


def cmd_tune(args) -> int:
    from adirec.arguments import train_plan
    from adirec.options import given_options
    given = given_options(args, TuneConfig, dest_prefix="tune_")
    if "out" not in given:
        raise ValueError("--out DIR is required: the study directory")
    config = TuneConfig(**given)
    space = SearchSpace.from_file(config.space) if config.space else None
    spec, name, overrides, tcfg = train_plan(args)
    report = tune(spec, name, config, model_overrides=overrides, train_config=tcfg, space=space)
    if report["best"] is None:
        print(f"adirec: error: no trial of {config.out} finished; the errors are in its trials.json",
              file=sys.stderr)
        return 1
    return 0
