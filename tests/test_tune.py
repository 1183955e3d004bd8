"""``adirec tune``: a study on validation data only, resumable, replayable, with a checked space.

Trials are one epoch of a tiny model on ``synthetic:tiny`` (about 2 s each on one core); training
on the CPU with one thread is deterministic, so values of the same settings are compared exactly.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import adirec.eval.protocols as protocols
import adirec.runs as runs
import adirec.train.distributed as distributed
import adirec.tune as tune_module
from adirec.cli import main
from adirec.data.dataset import Interactions
from adirec.data.sources import load_source
from adirec.data.spec import DataSpec
from adirec.models.registry import MODELS, train_defaults
from adirec.train.config import TrainConfig
from adirec.tune import SearchSpace, TuneConfig, default_space, tune

SMALL = ["--embedding-dim", "8", "--set", "expert_hidden=16", "--set", "expert_out=8", "--set", "forward_hidden=8",
         "--set", "output_dim=8", "--batch-size", "128", "--negatives", "32", "--no-progress", "--threads", "1",
         "--eval-ks", "10", "--epochs", "1"]
SMALL_MODEL = {"embedding_dim": 8, "expert_hidden": (16,), "expert_out": 8, "forward_hidden": (8,), "output_dim": 8}
SPACE = {"lr": {"log": [1e-3, 1e-2]}, "temperature": {"range": [0.05, 0.2]},
         "self_training.p0": {"range": [0.0, 0.1]}}


def _space_file(root: Path, entries=SPACE) -> Path:
    path = root / "space.json"
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path


def _tune(out: Path, space: Path, trials: int, *extra: str) -> int:
    return main(["tune", "--data", "synthetic:tiny", "--model", "adi-se", "--trials", str(trials),
                 "--out", str(out), "--space", str(space), *SMALL, *extra])


def _trials(out: Path) -> list[dict]:
    return json.loads((out / "trials.json").read_text())["trials"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A study of two trials run in one go."""
    root = tmp_path_factory.mktemp("study")
    out = root / "study"
    assert _tune(out, _space_file(root), 2) == 0
    return out


def test_a_continued_study_counts_its_trials_and_proposes_what_an_uninterrupted_one_does(study, tmp_path, capsys):
    out, space = tmp_path / "study", _space_file(tmp_path)
    assert _tune(out, space, 1) == 0
    assert [t["number"] for t in _trials(out)] == [0]
    assert _tune(out, space, 2) == 0  # continues: one more trial, not two
    straight, continued = _trials(study), _trials(out)
    assert [t["state"] for t in continued] == ["finished", "finished"]
    assert [t["params"] for t in continued] == [t["params"] for t in straight]
    assert [t["value"] for t in continued] == [t["value"] for t in straight]
    capsys.readouterr()
    assert _tune(out, space, 2) == 0  # the budget is spent: nothing is trained
    assert "trial 2" not in capsys.readouterr().out
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["000", "001"]


def test_a_changed_space_or_base_configuration_is_refused_naming_what_changed(study, tmp_path, capsys):
    out = tmp_path / "study"
    shutil.copytree(study, out)
    before = (out / "trials.json").read_text()
    wider = _space_file(tmp_path, {**SPACE, "lr": {"log": [1e-4, 1e-2]}})
    assert _tune(out, wider, 3) == 2
    line = _error_line(capsys)
    assert "the search space changed" in line and 'space lr: {"log": [0.001, 0.01]} -> {"log": [0.0001, 0.01]}' in line
    assert _tune(out, _space_file(tmp_path), 3, "--epochs", "2") == 2
    line = _error_line(capsys)
    assert "the base configuration changed" in line and "train_config.epochs: 1 -> 2" in line
    assert _tune(out, _space_file(tmp_path), 3, "--data-seed", "1") == 2
    assert "data.seed: 0 -> 1" in _error_line(capsys)
    assert (out / "trials.json").read_text() == before
    assert len(list((out / "trials").iterdir())) == 2


def test_best_json_replays_the_best_trial(study, tmp_path, capsys):
    report = json.loads((study / "trials.json").read_text())
    best = report["best"]
    assert best["value"] == max(t["value"] for t in report["trials"])
    best_json = json.loads((study / "best.json").read_text())
    assert best_json["tune"]["trial"] == best["number"] and best_json["tune"]["params"] == best["params"]
    run = tmp_path / "replay"
    assert main(["train", "--config", str(study / "best.json"), "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary[f"best_valid_{best['metric']}"] == best["value"]
    trial_config = json.loads((study / best["run"] / "config.json").read_text())
    replay_config = json.loads((run / "config.json").read_text())
    for key in ("model", "data", "model_config", "train_config", "data_fingerprint"):
        assert replay_config[key] == trial_config[key], key
    assert replay_config["train_config"]["lr"] == best["params"]["lr"]
    # trials keep their record but not their weights
    for t in report["trials"]:
        trial = study / t["run"]
        assert {"config.json", "summary.json", "metrics.jsonl", "status.json"} <= {p.name for p in trial.iterdir()}
        assert not (trial / "checkpoints").exists() and not (trial / "model.safetensors").exists()


class _RandomScorer:
    def score(self, users, domain, items):
        return torch.rand(len(users), len(items), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("reported", ["test", "valid"])
def test_tune_never_reads_the_reported_split(reported, tmp_path, monkeypatch):
    def load():
        data = DataSpec("synthetic:tiny").load()
        if reported == "valid":  # no test split: valid is reported, the trainer holds out from training
            data.splits["test"] = Interactions.empty()
        assert runs.default_split(data) == reported
        return data

    clean, poisoned = load(), load()
    rows = poisoned.splits[reported]
    # item 0 is the unknown item, which no ranking ever returns: any metric on these rows is 0
    poisoned.splits[reported] = Interactions(rows.user, np.zeros_like(rows.item), rows.domain, rows.weight,
                                             rows.timestamp)
    for data, expected in ((clean, True), (poisoned, False)):
        result = protocols.evaluate(_RandomScorer(), data, split=reported, protocol="full", ks=[50])
        assert (result.metrics(data.domains)["recall@50"]["mean"] > 0) == expected  # the poison bites

    splits_evaluated = []

    def guarded(real):
        def evaluate(scorer, data, *, split, **kw):
            splits_evaluated.append(split)
            if data.splits[split] is poisoned.splits[reported]:
                raise AssertionError(f"the reported split {reported!r} was evaluated")
            return real(scorer, data, split=split, **kw)
        return evaluate

    for module in (protocols, distributed, runs):
        monkeypatch.setattr(module, "evaluate", guarded(module.evaluate))
    base = TrainConfig(**{**train_defaults("adi-se"), "epochs": 1, "batch_size": 128, "num_negatives": 32,
                          "eval_ks": (10,), "num_threads": 1, "progress": False})
    space = SearchSpace.from_dict(SPACE, source="test space")
    reports = {}
    for name, data in (("clean", clean), ("poisoned", poisoned)):
        reports[name] = tune(DataSpec("synthetic:tiny"), "adi-se", TuneConfig(out=str(tmp_path / name), trials=1),
                             model_overrides=SMALL_MODEL, train_config=base, space=space, data=data,
                             echo=lambda line: None)
    assert splits_evaluated  # validation went through the guard
    assert [t["state"] for t in reports["poisoned"]["trials"]] == ["finished"]
    assert ([t["value"] for t in reports["poisoned"]["trials"]] == [t["value"] for t in reports["clean"]["trials"]])
    summary = json.loads((tmp_path / "poisoned" / "trials" / "000" / "summary.json").read_text())
    assert summary["validation"]["split"] == ("valid" if reported == "test" else "holdout-from-train")


@pytest.mark.parametrize("entries, expected", [
    ({"lrr": {"log": [1e-4, 1e-2]}}, "unknown setting 'lrr'"),
    ({"lr": {"log": [0, 1e-2]}}, "lr: log [0, 0.01] needs lo > 0"),
    ({"lr": {"range": [0.1, 0.01]}}, "lr: range [0.1, 0.01] is empty"),
    ({"dropout": {"range": [0.0, 1.5]}}, "dropout: the value 1.5 is not allowed (dropout must be in [0, 1)"),
    ({"embedding_dim": {"range": [8, 64.5]}}, "embedding_dim holds integers, so range needs integer ends"),
    ({"embedding_dim": {"choice": [32, 0]}}, "embedding_dim: the value 0 is not allowed"),
    ({"lr": {"between": [1e-4, 1e-2]}}, 'lr: expected one of {"range": [lo, hi]}'),
    ({"lr": {"choice": []}}, "lr: choice needs a non-empty list"),
    ({"self_training.foo": {"range": [0, 1]}}, "self_training has no field 'foo'"),
    ({"seed": {"choice": [1, 2]}}, "seed cannot be searched: one seed serves the whole study"),
    ({"early_stopping_metric": {"choice": ["recall@10", "recall@50"]}}, "early_stopping_metric cannot be searched"),
    ({"data.seed": {"choice": [1, 2]}}, "data.seed: data settings are not searched"),
    ({"lr": {"log": [1e-3, 1e-2]}, "train.lr": {"log": [1e-3, 1e-2]}}, "'train.lr' and 'lr' are the same setting"),
    ([], "a search space is a JSON object of settings"),
    ('{"lr": {"log": [1e-3, 1e-2]},}', "at line 1, column 30"),
])
def test_a_bad_space_file_is_refused_with_the_file_the_setting_and_the_problem(entries, expected, tmp_path, capsys):
    space = _space_file(tmp_path, entries)
    out = tmp_path / "study"
    assert _tune(out, space, 1) == 2
    line = _error_line(capsys)
    assert line.startswith(f"adirec: error: {space}: ") and expected in line, line
    assert "not valid JSON" in line or isinstance(entries, (dict, list))
    assert not out.exists()  # refused before anything is written


def test_the_default_space_is_valid_for_every_preset():
    for name in MODELS:
        config = TrainConfig(**train_defaults(name))
        space = default_space(config)
        space.check(name, {}, config)
        keys = set(space.to_dict())
        unused = {"batch_size"} if config.batch_size == "auto" else set()
        assert set(tune_module.COMMON_SPACE) - unused <= keys and not unused & keys, name
        assert ("self_training.p0" in keys) == train_defaults(name)["self_training"]["enabled"], name
    assert "self_training.p0" not in default_space(TrainConfig(self_training={"enabled": False})).to_dict()


def test_settings_are_checked_on_the_model_the_data_gets():
    # on one domain adi-plus builds dnn-plus's network, which has no experts to put SE blocks in
    config = TrainConfig(**train_defaults("adi-plus"))
    space = tune_module.SearchSpace.from_dict({"se_in_experts": {"choice": [False, True]}}, source="space")
    space.check("adi-plus", {}, config, num_domains=3)
    with pytest.raises(ValueError, match="se_in_experts.*backbone 'mlp'"):
        space.check("adi-plus", {}, config, num_domains=1)


def test_a_study_on_one_domain_trains_the_model_that_data_gets(tmp_path):
    out = tmp_path / "study"
    space = _space_file(tmp_path, {"lr": {"log": [1e-3, 1e-2]}})
    assert main(["tune", "--data", "synthetic:tiny", "--domains", "d1", "--model", "adi-plus", "--trials", "1",
                 "--out", str(out), "--space", str(space), *SMALL]) == 0
    [trial] = _trials(out)
    assert trial["state"] == "finished"
    config = json.loads((out / trial["run"] / "config.json").read_text())
    assert config["domains"] == ["d1"] and config["model_config"]["backbone"] == "mlp"  # dnn-plus's network


def test_the_default_space_leaves_out_what_the_base_does_not_use():
    data = load_source("synthetic:tiny")  # 250 items: the full softmax under auto
    plus = TrainConfig(**train_defaults("adi-plus"))
    assert plus.softmax == "auto" and plus.batch_size == "auto"
    keys = set(default_space(plus, data).to_dict())
    assert "num_negatives" not in keys and "batch_size" not in keys and "lr" in keys
    assert "num_negatives" in default_space(plus).to_dict()  # without the data auto cannot be told
    assert "num_negatives" in default_space(dataclasses.replace(plus, full_softmax_max_items=10), data).to_dict()
    sampled = TrainConfig(softmax="sampled", batch_size=512)
    assert {"num_negatives", "batch_size"} <= set(default_space(sampled, data).to_dict())
    assert "num_negatives" not in default_space(TrainConfig(softmax="full"), data).to_dict()
    assert "without batch_size and num_negatives" in default_space(plus, data).source


def test_a_failed_trial_is_recorded_and_the_search_goes_on(tmp_path, monkeypatch, capsys):
    real, calls = tune_module.train_run, []

    def first_diverges(spec, model, out, *, train_config, **kw):
        calls.append(out)
        if len(calls) == 1:  # a learning rate that makes the loss infinite in the first steps
            train_config = dataclasses.replace(train_config, lr=1e12, temperature=0.001)
        return real(spec, model, out, train_config=train_config, **kw)

    monkeypatch.setattr(tune_module, "train_run", first_diverges)
    out = tmp_path / "study"
    assert _tune(out, _space_file(tmp_path), 2) == 0
    trials = _trials(out)
    assert [t["state"] for t in trials] == ["failed", "finished"]
    assert "TrainingDiverged: training diverged" in trials[0]["error"] and trials[0]["value"] is None
    assert json.loads((out / "best.json").read_text())["tune"]["trial"] == 1
    assert "trial 0 (1/2) failed" in capsys.readouterr().out
    assert not (out / "trials" / "000" / "checkpoints").exists()


def test_no_finished_trial_is_an_error_after_the_budget(tmp_path, capsys):
    out = tmp_path / "study"
    space = _space_file(tmp_path, {"lr": {"choice": [1e12, 1e13]}})
    assert _tune(out, space, 2, "--temperature", "0.001") == 1
    assert [t["state"] for t in _trials(out)] == ["failed", "failed"]
    assert "no trial of" in capsys.readouterr().err
    assert not (out / "best.json").exists()


def test_an_interrupted_trial_does_not_count_and_the_rerun_completes_the_budget(tmp_path, monkeypatch, capsys):
    real = tune_module.train_run
    out, space = tmp_path / "study", _space_file(tmp_path)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt  # Ctrl-C during the trial

    monkeypatch.setattr(tune_module, "train_run", interrupted)
    assert _tune(out, space, 1) == 130
    line = _error_line(capsys)
    assert "tuning interrupted in trial 0" in line and "rerun the same command to continue" in line
    assert [t["state"] for t in _trials(out)] == ["interrupted"]

    def killed(*a, **kw):
        raise SystemExit(9)  # the process dies: the journal keeps the trial as running

    monkeypatch.setattr(tune_module, "train_run", killed)
    with pytest.raises(SystemExit):
        _tune(out, space, 1)
    monkeypatch.setattr(tune_module, "train_run", real)
    assert _tune(out, space, 1) == 0
    assert [t["state"] for t in _trials(out)] == ["interrupted", "interrupted", "finished"]


def test_a_second_tune_in_the_same_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    with open(out / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _tune(out, _space_file(tmp_path), 1) == 2
    assert f"another adirec tune is running in {out}" in _error_line(capsys)
    assert not (out / "study.json").exists()


def test_a_directory_that_is_not_a_study_is_refused(tmp_path, capsys):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert _tune(out, _space_file(tmp_path), 1) == 2
    assert "is not a study directory (no study.json)" in _error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_seeds_per_trial_values_a_trial_by_the_mean_of_its_seeds(study, tmp_path, capsys):
    out = tmp_path / "study"
    assert _tune(out, _space_file(tmp_path), 1, "--seeds-per-trial", "2") == 0
    trial = _trials(out)[0]
    values = [json.loads((out / "trials" / "000" / f"seed{s}" / "summary.json").read_text())
              [f"best_valid_{trial['metric']}"] for s in (0, 1)]
    assert trial["seed_values"] == values and trial["value"] == pytest.approx(sum(values) / 2)
    assert values[0] != values[1]  # the seeds trained different models
    # the first seed's run is the one-seed study's trial: same settings, same seed
    assert values[0] == _trials(study)[0]["value"] and trial["params"] == _trials(study)[0]["params"]
    for s in (0, 1):
        run = out / "trials" / "000" / f"seed{s}"
        assert json.loads((run / "config.json").read_text())["train_config"]["seed"] == s
        assert not (run / "model.safetensors").exists()
    best = json.loads((out / "best.json").read_text())
    assert best["train_config"]["seed"] == 0 and best["tune"]["seed_values"] == values
    assert "each the mean of 2 seeds" in capsys.readouterr().out
    # a study is continued only with the number of seeds it was made with
    assert _tune(out, _space_file(tmp_path), 2) == 2
    assert "seeds_per_trial: 2 -> 1" in _error_line(capsys)


def test_a_study_recorded_without_seeds_per_trial_continues_as_one_seed_per_trial(study, tmp_path, capsys):
    out = tmp_path / "older"
    shutil.copytree(study, out, ignore=shutil.ignore_patterns(".lock"))
    definition = json.loads((out / "study.json").read_text())
    del definition["seeds_per_trial"]
    (out / "study.json").write_text(json.dumps(definition))
    assert _tune(out, _space_file(tmp_path), 2) == 0  # the budget is spent: nothing to train
    assert "2 finished, 0 failed of 2 trials" in capsys.readouterr().out
    assert _tune(out, _space_file(tmp_path), 2, "--seeds-per-trial", "3") == 2
    assert "seeds_per_trial: 1 -> 3" in _error_line(capsys)


def test_seeds_per_trial_below_one_is_refused(tmp_path, capsys):
    assert _tune(tmp_path / "study", _space_file(tmp_path), 1, "--seeds-per-trial", "0") == 2
    assert "--seeds-per-trial must be an integer >= 1, got 0" in _error_line(capsys)
    assert not (tmp_path / "study").exists()
