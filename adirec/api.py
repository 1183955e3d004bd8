"""The Python API: load a data set, train a model into a run directory, evaluate it, export it
as a serving bundle and ask it for recommendations, from Python::

    import adirec

    data = adirec.load_data("synthetic:tiny")
    run = adirec.train(data, "adi-se", out="runs/first", epochs=2)
    report = run.evaluate(ks=[10, 50])          # what `adirec evaluate` prints, as a dict
    recommender = run.recommender()             # top K per domain (needs adirec[serve])
    print(recommender.recommend(user_id, "d1", k=10).items)

Each function does what the matching command does, through the same code: data sets load
through :class:`~adirec.data.spec.DataSpec` (or, for a table in memory, the ``table:`` source's
:func:`~adirec.data.sources.table.load_table`), training is :func:`adirec.runs.train_run`,
evaluation :func:`adirec.runs.evaluate_run`, export
:func:`adirec.serve.bundle.export_bundle`. A run trained here is an ordinary run directory
(``adirec evaluate RUN`` reads it) and a run trained by ``adirec train`` opens here with
:func:`open_run`. Configs are the dataclasses of the command line
(:class:`~adirec.models.config.TwoTowerConfig`, :class:`~adirec.train.config.TrainConfig`),
validated when they are built.
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adirec.arguments import DEFAULT_MODEL, nested_update
from adirec.data.dataset import MultiDomainData
from adirec.data.spec import DataSpec
from adirec.extras import require
from adirec.models.config import TwoTowerConfig
from adirec.models.registry import train_defaults
from adirec.runs import evaluate_run, read_run_config, run_status, train_run
from adirec.train.config import TrainConfig
from adirec.utils import read_json

#: where :func:`load_data` records, in the data set's ``meta``, the DataSpec that loads it again
SPEC_KEY = "data_spec"
#: the source a run records for data that came from memory: nothing can load it again, so
#: evaluating or exporting such a run later needs the data (``data=``, or ``--data SRC`` of the
#: same rows saved to a file)
IN_MEMORY = "table:<in-memory table>"


# ----------------------------------------------------------------------------- data
def load_data(source: Any, **options) -> MultiDomainData:
    """Load a multi-domain data set.

    ``source`` is a source spec (``"xmrec:DIR"``, ``"recbole:DIR/PREFIX"``, ``"table:PATH"``,
    ``"parquet:DIR"``, ``"synthetic[:PRESET]"``) with DataSpec fields as keywords
    (``domains=["s1", "s2"]``, ``user_col="user"``, ...), a :class:`DataSpec`, or an in-memory
    ``pyarrow.Table`` / pandas DataFrame of interactions with the ``table:`` source's column mapping
    as keywords (``user_col``, ``item_col``, ``domain_col``, ``time_col``, feature tables, ...).
    """
    if isinstance(source, DataSpec):
        if options:
            raise TypeError(f"load_data: give options inside the DataSpec, not also as keywords "
                            f"({sorted(options)})")
        spec = source
    elif isinstance(source, str):
        spec = DataSpec(source=source, **_data_options(options))
    elif _is_table(source):
        from adirec.data.sources.table import load_table
        data = load_table(source, **options)
        data.meta[SPEC_KEY] = asdict(_in_memory_spec(options))
        return data
    else:
        raise TypeError(f"load_data: expected a source spec such as 'xmrec:DIR', a DataSpec, a pyarrow.Table or "
                        f"a pandas DataFrame, got {type(source).__name__}")
    data = spec.load()
    data.meta[SPEC_KEY] = asdict(spec)
    return data


def _data_options(options: dict) -> dict:
    known = {f.name for f in dataclasses.fields(DataSpec)} - {"source"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"load_data: unknown option(s) {unknown}; the options are DataSpec's fields: {sorted(known)}")
    return options


def _is_table(source: Any) -> bool:
    import pyarrow as pa
    return isinstance(source, pa.Table) or type(source).__module__.split(".")[0] == "pandas"


def _in_memory_spec(options: dict) -> DataSpec:
    """What a run records of a table loaded from memory: the column mapping and the rules, without
    the tables themselves (feature tables given as files are kept)."""
    names = {f.name for f in dataclasses.fields(DataSpec)} - {"source"}
    kept: dict[str, Any] = {k: v for k, v in options.items()
                            if k in names and (v is None or isinstance(v, (str, int, list, tuple)))}
    return DataSpec(source=IN_MEMORY, **kept)


def _spec_and_data(data: Any) -> tuple[DataSpec, MultiDomainData | None]:
    """(the DataSpec a run records, the data set in memory or None to load it from the spec)."""
    if isinstance(data, MultiDomainData):
        recorded = data.meta.get(SPEC_KEY)
        return (DataSpec(**recorded) if recorded else DataSpec(source=IN_MEMORY)), data
    if isinstance(data, DataSpec):
        return data, None
    if isinstance(data, str):
        return DataSpec(source=data), None
    raise TypeError(f"train: data must be a data set from adirec.load_data, a DataSpec or a source spec "
                    f"such as 'xmrec:DIR', got {type(data).__name__}")


# ----------------------------------------------------------------------------- configs
def _train_config(model: str, given: TrainConfig | dict | None, options: dict) -> TrainConfig:
    """A TrainConfig is used as it is; a dict and keyword options change the preset's training
    defaults (as ``adirec train``'s flags do): TrainConfig's defaults < the preset's < ``given`` <
    ``options``."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given_names = set(given) if isinstance(given, dict) else set()
    unknown = sorted((given_names | set(options)) - names)
    if unknown:
        raise TypeError(f"train: unknown training option(s) {unknown}; the options are TrainConfig's fields: "
                        f"{sorted(names)}")
    if isinstance(given, TrainConfig):
        base = asdict(given)
    elif given is None or isinstance(given, dict):
        base = nested_update(nested_update(asdict(TrainConfig()), train_defaults(model)), given or {})
    else:
        raise TypeError(f"train: train_config must be a TrainConfig or a dict, got {type(given).__name__}")
    return TrainConfig(**nested_update(base, options))


def _model_overrides(model_config: TwoTowerConfig | dict | None) -> dict:
    if model_config is None:
        return {}
    if isinstance(model_config, TwoTowerConfig):
        return asdict(model_config)
    if isinstance(model_config, dict):
        return dict(model_config)
    raise TypeError(f"train: model_config must be a TwoTowerConfig or a dict of its fields, "
                    f"got {type(model_config).__name__}")


# ----------------------------------------------------------------------------- runs
@dataclass
class Run:
    """A run directory (see :mod:`adirec.runs`) and, when it was trained here, the data set it was
    trained on (so that evaluating or exporting it does not load the data again).

    Attributes:
        path: the run directory.
        data: the data set in memory, or None (loaded from the source the run recorded).
        bundle: the last bundle :meth:`export` wrote, which :meth:`recommender` serves.
    """

    path: Path
    data: MultiDomainData | None = None
    bundle: Path | None = None

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    @property
    def config(self) -> dict:
        """config.json: the model, its config, the training config, the data spec, the schema."""
        return read_run_config(self.path)

    @property
    def status(self) -> dict:
        """status.json: ``state`` (running, finished, interrupted, failed) and the last epoch."""
        return run_status(self.path)

    @property
    def summary(self) -> dict:
        """summary.json of a finished run: best epoch, validation metric, seconds, parameters."""
        path = self.path / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{self.path} has no summary.json: the run is {self.status.get('state')}")
        return read_json(path)

    @property
    def metrics(self) -> list[dict]:
        """metrics.jsonl: one row per epoch (loss, validation metrics, samples/s)."""
        import json
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def evaluate(self, *, protocol: str | None = None, split: str | None = None, ks=(10, 50),
                 device: str = "auto", allow_incomplete: bool = False, history: str = "train") -> dict:
        """The report ``adirec evaluate --json`` writes (see :func:`evaluate`)."""
        return evaluate(self, protocol=protocol, split=split, ks=ks, device=device,
                        allow_incomplete=allow_incomplete, history=history)

    def export(self, out: str | Path, *, overwrite: bool = False, allow_incomplete: bool = False,
               **index_options) -> Path:
        """Write a serving bundle at ``out`` (see :func:`export`); :meth:`recommender` then serves it."""
        self.bundle = export(self, out, overwrite=overwrite, allow_incomplete=allow_incomplete, **index_options)
        return self.bundle

    def recommender(self, *, max_k: int = 1000, max_batch: int = 1000):
        """A :class:`~adirec.serve.service.Recommender` of this run: from the bundle :meth:`export`
        wrote, or, before any export, from one exported to a temporary directory and loaded into
        memory (the directory is removed; export to keep a bundle for ``adirec serve``)."""
        require("serve", "Run.recommender()")
        from adirec.serve.service import Recommender
        if self.bundle is not None:
            return Recommender.from_path(self.bundle, max_k=max_k, max_batch=max_batch)
        scratch = Path(tempfile.mkdtemp(prefix="adirec-bundle-"))
        try:
            bundle = export(self, scratch / "bundle")
            return Recommender.from_path(bundle, max_k=max_k, max_batch=max_batch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def open_run(path: str | Path, data: MultiDomainData | None = None) -> Run:
    """The run directory at ``path`` (written by :func:`train` or ``adirec train``); ``data`` is
    its data set when it is in memory already."""
    read_run_config(path)  # a missing or foreign directory fails here, with what it is
    return Run(Path(path), data)


def train(data: Any, model: str = DEFAULT_MODEL, *, out: str | Path, model_config: TwoTowerConfig | dict | None = None,
          train_config: TrainConfig | dict | None = None, **train_options) -> Run:
    """Train the preset ``model`` (``adirec train --model``'s names) on ``data`` into the run
    directory ``out`` and return the :class:`Run`.

    ``data`` is a data set from :func:`load_data`, a :class:`DataSpec` or a source spec string
    (a ``parquet:DIR`` layout with valid and test splits is then streamed). ``model_config``
    changes the preset's model (a dict of TwoTowerConfig fields, or a whole TwoTowerConfig).
    Training options are TrainConfig's fields as keywords (``epochs=5, lr=1e-3``,
    ``self_training={"p0": 0.05}``) or a dict ``train_config``, applied over the preset's training
    defaults; a TrainConfig instance is used as it is. Ctrl-C raises
    :class:`adirec.runs.TrainingInterrupted`; the run can be continued with ``adirec train --resume``.
    """
    spec, loaded = _spec_and_data(data)
    tcfg = _train_config(model, train_config, train_options)
    if tcfg.tensorboard:
        require("tensorboard", "train(tensorboard=...)")
    train_run(spec, model, out, model_overrides=_model_overrides(model_config), train_config=tcfg, data=loaded)
    return Run(Path(out), loaded)


def _as_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else open_run(run)


def evaluate(run: Run | str | Path, *, protocol: str | None = None, split: str | None = None, ks=(10, 50),
             device: str = "auto", data: MultiDomainData | None = None, data_source: str | None = None,
             allow_incomplete: bool = False, history: str = "train") -> dict:
    """Evaluate a run (a :class:`Run` or a run directory): the report ``adirec evaluate --json``
    writes, with ``metrics[name][domain]`` for recall@N, ndcg@N, hitrate@N, mrr@N and
    coverage@N per domain and their ``mean``. ``protocol`` (``full`` or ``sampled``) and
    ``split`` default to the run's own; ``data`` / ``data_source`` give its data when it moved;
    ``history`` is ``adirec evaluate --history`` (``train`` or ``train+valid``)."""
    run = _as_run(run)
    return evaluate_run(run.path, protocol=protocol, split=split, ks=list(ks), device=device,
                        data=data if data is not None else run.data, data_source=data_source,
                        allow_incomplete=allow_incomplete, history=history)


def export(run: Run | str | Path, out: str | Path, *, overwrite: bool = False, allow_incomplete: bool = False,
           data: MultiDomainData | None = None, data_source: str | None = None, **index_options) -> Path:
    """Write a run as a serving bundle at ``out`` (what ``adirec export`` writes) and return its
    path. ``index_options`` are :class:`~adirec.serve.bundle.IndexConfig` fields
    (``exact_max_items``, ``ann="hnsw"``, ...); ``overwrite`` replaces only an existing bundle."""
    require("serve", "export")
    from adirec.serve.bundle import IndexConfig, export_bundle
    known = {f.name for f in dataclasses.fields(IndexConfig)}
    unknown = sorted(set(index_options) - known)
    if unknown:
        raise TypeError(f"export: unknown index option(s) {unknown}; the options are IndexConfig's fields: "
                        f"{sorted(known)}")
    run = _as_run(run)
    return Path(export_bundle(run.path, out, index_config=IndexConfig(**index_options), overwrite=overwrite,
                              data=data if data is not None else run.data, data_source=data_source,
                              allow_incomplete=allow_incomplete))
