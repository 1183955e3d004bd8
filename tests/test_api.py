"""The Python API: import adirec stays light, load_data / train / evaluate / export / Recommender
work together and with the command line, in-memory tables, options, missing extras, and the
README's example."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import adirec
from adirec import api
from adirec.cli import main
from adirec.extras import MissingExtra

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(batch_size=128, num_negatives=64, progress=False, num_threads=1)
SMALL_MODEL = {"embedding_dim": 8}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """synthetic:tiny, 2 epochs of a small adi-se, trained through the API with TensorBoard curves."""
    root = tmp_path_factory.mktemp("api")
    data = adirec.load_data("synthetic:tiny")
    run = adirec.train(data, "adi-se", out=root / "run", epochs=2, model_config=SMALL_MODEL,
                       tensorboard=str(root / "tb"), **TINY)
    return data, run, root


def test_import_adirec_loads_nothing_heavy():
    code = ("import sys, adirec; heavy = lambda: [m for m in ('torch', 'faiss', 'fastapi', 'uvicorn', 'matplotlib') "
            "if m in sys.modules]; print(heavy()); adirec.load_data; adirec.evaluate; adirec.TrainConfig; "
            "print(heavy()); print(callable(adirec.train))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]"  # import adirec: nothing
    assert out[1] == "['torch']"  # the API: PyTorch, but no serving and no plotting
    assert out[2] == "True"


def test_adirec_train_is_the_function_and_the_subpackage():
    import adirec.train.config as config  # the subpackage's modules import as before
    from adirec.train import loop
    assert callable(adirec.train) and adirec.train.loop is loop and adirec.train.config is config
    assert config.TrainConfig is adirec.TrainConfig
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        adirec.nosuch


def test_train_evaluate_export_recommend(trained, tmp_path, capsys):
    data, run, root = trained
    assert run.status["state"] == "finished" and run.summary["epochs_run"] == 2
    assert [row["epoch"] for row in run.metrics] == [1, 2]
    cfg = run.config
    assert cfg["model"] == "adi-se" and cfg["model_config"]["embedding_dim"] == 8
    assert cfg["train_config"]["batch_size"] == 128 and cfg["data"]["source"] == "synthetic:tiny"
    report = run.evaluate(ks=[5, 10])
    for name in ("recall@5", "ndcg@10", "hitrate@10", "mrr@5", "coverage@10"):
        assert set(report["metrics"][name]) == set(data.domains) | {"mean"}
    # the function, from the path alone (the data loaded again from the recorded spec), and the
    # command line give the same numbers
    assert adirec.evaluate(run.path, ks=[5, 10])["metrics"] == report["metrics"]
    assert main(["evaluate", str(run.path), "--k", "5,10", "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["metrics"] == report["metrics"]
    # export, then serve in process: a known user's top 10 lie in the domain's corpus
    bundle = run.export(tmp_path / "bundle")
    assert (bundle / "manifest.json").is_file() and run.bundle == bundle
    rec = run.recommender()
    user = rec.example_users[0]
    got = rec.recommend(user, data.domains[0], k=10)
    assert got.source == "model" and len(got.items) == 10
    corpus = set(data.item_keys[data.corpus[0]].tolist())
    assert set(got.items) <= corpus
    # the same as `adirec recommend`, and as a Recommender opened on the bundle
    capsys.readouterr()
    assert main(["recommend", str(bundle), "--domain", data.domains[0], "--user", str(user), "--k", "10"]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == got.items
    assert adirec.Recommender.from_path(bundle).recommend(user, data.domains[0], k=10).items == got.items


def test_recommender_without_an_export_uses_a_temporary_bundle(trained):
    data, run, _ = trained
    fresh = adirec.open_run(run.path)  # no bundle exported through this object
    rec = fresh.recommender()
    assert fresh.bundle is None and not Path(rec.bundle.path).exists()  # loaded, the directory removed
    assert len(rec.recommend(rec.example_users[0], data.domains[1], k=5).items) == 5


def test_tensorboard_curves_match_metrics_jsonl(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data, run, root = trained
    events = EventAccumulator(str(root / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/samples_per_second", "valid/recall_at_10/mean", "valid/ndcg_at_50/mean",
            "valid/hitrate_at_10/mean", "valid/coverage_at_50/mean"} <= tags
    assert {f"valid/recall_at_10/{d}" for d in data.domains} <= tags
    rows = run.metrics
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    d = data.domains[2]
    assert [e.value for e in events.Scalars(f"valid/mrr_at_50/{d}")] == pytest.approx(
        [r["valid"]["mrr@50"][d] for r in rows], rel=1e-6)


def _events_table() -> pa.Table:
    """Two scenarios, 8 users with 5 interactions each (3 train, 1 valid, 1 test), ISO times."""
    rows = []
    for u in range(8):
        for t in range(5):
            rows.append((f"u{u}", f"i{(u + 3 * t) % 10}", "home" if (u + t) % 2 else "search",
                         f"2024-02-0{t + 1}T09:00:00Z"))
    return pa.table({k: [r[j] for r in rows] for j, k in enumerate(("user", "item", "scenario", "ts"))})


MAPPING = dict(user_col="user", item_col="item", domain_col="scenario", time_col="ts")


def test_in_memory_table_trains_and_evaluates(tmp_path):
    table = _events_table()
    data = adirec.load_data(table, **MAPPING)
    assert data.domains == ["home", "search"] and data.meta[api.SPEC_KEY]["source"] == api.IN_MEMORY
    run = adirec.train(data, "dnn", out=tmp_path / "run", epochs=1, model_config=SMALL_MODEL, eval_ks=(2,),
                       early_stopping_metric="recall@2", **TINY)
    recorded = run.config["data"]
    assert recorded["user_col"] == "user" and recorded["time_col"] == "ts" and "in-memory" in recorded["source"]
    report = run.evaluate(ks=[2])
    assert report["split"] == "test" and set(report["metrics"]["hitrate@2"]) == {"home", "search", "mean"}
    # the rows are nowhere on disk: from the path alone the run cannot find them ...
    with pytest.raises(FileNotFoundError, match="in-memory table"):
        adirec.evaluate(run.path, ks=[2])
    # ... until the same table is saved and named
    pq.write_table(table, tmp_path / "events.parquet")
    again = adirec.evaluate(run.path, ks=[2], data_source=f"table:{tmp_path / 'events.parquet'}")
    assert again["metrics"] == report["metrics"]


def test_in_memory_pandas_frame():
    pytest.importorskip("pandas")
    from adirec.data.fingerprint import fingerprint
    frame = _events_table().to_pandas()
    data = adirec.load_data(frame, **MAPPING)
    assert fingerprint(data) == fingerprint(adirec.load_data(_events_table(), **MAPPING))


def test_training_options_go_over_the_presets_defaults():
    # dnn trains without self-training by its preset; a dict and keywords change single fields
    cfg = api._train_config("dnn", {"lr": 0.01, "self_training": {"p0": 0.05}}, {"epochs": 3})
    assert (cfg.lr, cfg.epochs, cfg.self_training.p0, cfg.self_training.enabled) == (0.01, 3, 0.05, False)
    assert api._train_config("adi-se", None, {}).self_training.enabled is True
    given = adirec.TrainConfig(epochs=4)
    assert api._train_config("dnn", given, {}) == given  # a TrainConfig is used as it is
    assert api._train_config("dnn", given, {"lr": 0.5}).lr == 0.5
    with pytest.raises(TypeError, match=r"unknown training option\(s\) \['epoch'\]"):
        api._train_config("dnn", None, {"epoch": 3})
    with pytest.raises(ValueError, match="epochs must be an integer >= 1, got 0"):
        api._train_config("dnn", None, {"epochs": 0})
    assert api._model_overrides(adirec.TwoTowerConfig(embedding_dim=16))["embedding_dim"] == 16
    with pytest.raises(TypeError, match="model_config must be"):
        api._model_overrides(["embedding_dim"])


def test_bad_arguments_name_the_problem(tmp_path):
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['user_column'\]"):
        adirec.load_data("table:x.csv", user_column="user")
    with pytest.raises(TypeError, match="expected a source spec"):
        adirec.load_data(42)
    with pytest.raises(TypeError, match="not also as keywords"):
        adirec.load_data(adirec.DataSpec("synthetic:tiny"), seed=1)
    with pytest.raises(TypeError, match="data must be a data set"):
        adirec.train(42, out=tmp_path / "x")
    with pytest.raises(ValueError, match="unknown config fields"):
        adirec.train("synthetic:tiny", out=tmp_path / "x", model_config={"embeding_dim": 8}, epochs=1, **TINY)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        adirec.open_run(tmp_path)
    with pytest.raises(TypeError, match=r"unknown index option\(s\) \['kind'\]"):
        adirec.export(tmp_path, tmp_path / "b", kind="flat")


def test_missing_serve_extra_says_what_to_install(trained, monkeypatch, tmp_path):
    _, run, _ = trained
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    for name in [m for m in sys.modules if m.startswith("adirec.serve")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delitem(adirec.__dict__, "Recommender", raising=False)
    with pytest.raises(MissingExtra, match=re.escape("pip install 'adirec[serve]'")):
        adirec.Recommender
    with pytest.raises(MissingExtra, match=r"export needs the optional dependency 'faiss'"):
        run.export(tmp_path / "bundle")
    with pytest.raises(MissingExtra, match=re.escape("Run.recommender() needs")):
        run.recommender()
    assert not (tmp_path / "bundle").exists()


def test_missing_tensorboard_extra_stops_training_before_it_starts(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(MissingExtra, match=re.escape("pip install 'adirec[tensorboard]'")):
        adirec.train("synthetic:tiny", out=tmp_path / "run", tensorboard=str(tmp_path / "tb"), epochs=1, **TINY)
    assert not (tmp_path / "run").exists()


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    example = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "README.md (Python API)", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("runs/first") and out[1].startswith("recall@10 ")
    assert (tmp_path / "runs" / "first" / "summary.json").is_file()
    assert (tmp_path / "bundles" / "first" / "manifest.json").is_file()
    items = eval(out[-1])  # the printed top 10: a list of item keys
    assert isinstance(items, list) and len(items) == 10
    assert np.all([isinstance(i, int) for i in items])
