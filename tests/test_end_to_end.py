"""End to end: the CLI trains, writes a run directory and evaluates it."""
import json

import numpy as np
import pytest

from adirec.cli import main
from adirec.data.sources import load_source
from adirec.eval.protocols import SeenItems, evaluate

from conftest import shared_data

TINY = ["--embedding-dim", "8", "--batch-size", "128", "--negatives", "64", "--no-progress", "--threads", "1"]


def test_train_then_evaluate_on_synthetic(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic:tiny", "--model", "adi-se", "--epochs", "2",
                 "--out", str(run), *TINY]) == 0
    for name in ("config.json", "summary.json", "metrics.jsonl", "model.safetensors",
                 "checkpoints/epoch_001.safetensors", "checkpoints/epoch_002.safetensors"):
        assert (run / name).is_file(), name
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--protocol", "full", "--split", "test", "--k", "10,50",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert {"model", "data", "protocol", "split", "params", "train_seconds", "metrics"} <= set(report)
    assert report["model"] == "adi-se" and report["protocol"] == "full" and report["split"] == "test"
    data = load_source("synthetic:tiny")
    for metric in ("recall@10", "recall@50", "ndcg@10", "ndcg@50"):
        assert set(report["metrics"][metric]) == set(data.domains) | {"mean"}
    # better than a random ranking of the corpus (expected recall@50 = 50 / corpus size)
    random_recall = np.mean([min(1.0, 50 / len(c)) for c in data.corpus])
    assert report["metrics"]["recall@50"]["mean"] > random_recall + 0.05
    # evaluation is deterministic: a second run gives the same numbers
    assert main(["evaluate", str(run), "--protocol", "full", "--split", "test", "--k", "10,50",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"] == report["metrics"]


def test_training_is_reproducible(tmp_path):
    args = ["train", "--data", "synthetic:tiny", "--model", "adi-se", "--epochs", "1", "--seed", "3", *TINY]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_train_options_reach_the_configs(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic:tiny", "--model", "dnn", "--epochs", "1", "--hash-buckets", "64",
                 "--sparse-embeddings", "--device", "cpu", "--out", str(run), *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model_config"]["hash_buckets"] == 64 and cfg["model_config"]["sparse_embeddings"] is True
    assert cfg["train_config"]["device"] == "cpu"
    assert json.loads((run / "summary.json").read_text())["device"] == "cpu"


def test_cli_reports_bad_input(tmp_path, capsys):
    assert main(["train", "--data", "nosuch:thing", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "unknown data source kind 'nosuch'" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic:tiny", "--model", "nosuch", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["train", "--data", f"xmrec:{tmp_path}", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "no market directories" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic:tiny", "--device", "tpu", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "device must be" in capsys.readouterr().err
    assert main(["train", "--data", "synthetic:tiny", "--hash-buckets", "1", "--out", str(tmp_path / "x"), *TINY]) == 2
    assert "hash_buckets" in capsys.readouterr().err


def test_data_inspect_prints_domains(capsys):
    assert main(["data", "inspect", "synthetic:tiny"]) == 0
    out = capsys.readouterr().out
    assert "users in >= 2 domains" in out and "d1" in out


@pytest.mark.slow
def test_xmrec_loads_as_documented():
    data = load_source(f"xmrec:{shared_data('xmrec')}", domains=["s1", "s2", "s3"])
    s = data.summary()["domains"]
    # the files' 77,173 / 48,302 / 23,367 rows, each repeated (user, item) pair merged into one row
    assert [s[m]["train"] for m in ("s1", "s2", "s3")] == [76965, 48165, 23236]
    assert data.meta["rows"] == {"read": 148842, "not_positive": 0, "duplicates_collapsed": 476}
    assert [s[m]["valid"] for m in ("s1", "s2", "s3")] == [6466, 7109, 3328]
    assert data.candidates["valid"].items.shape == (6466 + 7109 + 3328, 100)


@pytest.mark.slow
def test_movielens_age3_protocol():
    data = load_source(f"recbole:{shared_data('movielens-1m')}/ml-1m", domain_by="user.age:25,35")
    assert data.domains == ["age<25", "age[25,35)", "age>=35"]
    test, valid = data.splits["test"], data.splits["valid"]
    assert len(test) == len(valid) == 6035  # users with >= 3 positives
    # popularity within the domain reproduces the reference numbers (README of the data)
    tr = data.splits["train"]
    counts = [np.bincount(tr.item[tr.domain == d], minlength=data.num_items + 1).astype(np.float32)
              for d in range(3)]

    class DomainPopularity:
        def score(self, users, d, items):
            import torch
            return torch.as_tensor(np.tile(counts[d][items], (len(users), 1)))

    r = evaluate(DomainPopularity(), data, split="test", protocol="full", ks=[50], seen=SeenItems(data))
    assert r.metrics(data.domains)["recall@50"]["mean"] == pytest.approx(0.154, abs=0.005)


@pytest.mark.parametrize("name, flags, model_fields, train_fields", [
    # a flag that contradicts the paper preset's own default wins, and the run records it
    ("mmoe", ["--gate", "linear", "--shared-experts", "2"], {"gate": "linear", "shared_experts": 2}, {}),
    ("dnn", ["--self-training"], {}, {"self_training.enabled": True}),
    ("adi-se", ["--no-self-training", "--fusion", "sum"], {"fusion": "sum"}, {"self_training.enabled": False}),
])
def test_flags_over_a_paper_presets_defaults_apply_and_are_recorded(tmp_path, name, flags, model_fields,
                                                                    train_fields):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic:tiny", "--model", name, "--epochs", "1", *flags,
                 "--out", str(run), *TINY]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == name
    assert {k: cfg["model_config"][k] for k in model_fields} == model_fields
    for key, value in train_fields.items():
        section, field = key.split(".")
        assert cfg["train_config"][section][field] is value
