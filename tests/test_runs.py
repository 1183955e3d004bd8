"""Run directories cannot be corrupted or silently misread (the bad-input suite of runs).

Each test is named for what it protects. The CLI is driven as a user drives it; errors must be one
line on stderr that names the problem, with exit code 2 (1 for a diverged training, 130 for an
interrupted one).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from adirec.cli import main

SMALL = ["--embedding-dim", "8", "--set", "expert_hidden=16", "--set", "expert_out=8", "--set", "forward_hidden=8",
         "--set", "output_dim=8", "--batch-size", "128", "--negatives", "32", "--no-progress", "--threads", "1",
         "--eval-ks", "10"]


def _recbole(root: Path, seed: int = 0) -> Path:
    """A small RecBole data set: 60 users in two age domains, 40 items, timestamps."""
    rng = np.random.default_rng(seed)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(60):
        for k, i in enumerate(rng.choice(40, 12, replace=False)):
            rows.append(f"u{u}\ti{i}\t{rng.integers(3, 6)}\t{1000 + 10 * k + u}")
    (root / "toy.inter").write_text("\n".join(rows) + "\n")
    users = ["user_id:token\tage:float"] + [f"u{u}\t{20 + u % 30}" for u in range(60)]
    (root / "toy.user").write_text("\n".join(users) + "\n")
    return root / "toy"


def _train(run: Path, data: str, *extra: str) -> int:
    return main(["train", "--data", data, "--out", str(run), "--model", "adi-se", "--epochs", "2",
                 "--early-stopping-metric", "recall@10", *SMALL, *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no traceback
    return err[0]


@pytest.fixture
def toy_run(tmp_path):
    prefix = _recbole(tmp_path)
    run = tmp_path / "run"
    assert _train(run, f"recbole:{prefix}", "--domain-by", "user.age:35") == 0
    return run, prefix


def test_evaluation_does_not_depend_on_the_row_order_of_the_data_files(toy_run, tmp_path, capsys):
    run, prefix = toy_run
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["evaluate", str(run), "--k", "10", "--json", str(out_a)]) == 0
    inter = prefix.with_suffix(".inter")
    header, *rows = inter.read_text().splitlines()
    np.random.default_rng(1).shuffle(rows)
    inter.write_text("\n".join([header, *rows]) + "\n")
    assert main(["evaluate", str(run), "--k", "10", "--json", str(out_b)]) == 0
    assert json.loads(out_a.read_text())["metrics"] == json.loads(out_b.read_text())["metrics"]


def _xmrec(root: Path, seed: int = 0) -> Path:
    """A small XMRec layout: two markets sharing 30 items, a qrel and a 20-candidate run file each."""
    rng = np.random.default_rng(seed)
    for m in ("s1", "s2"):
        d = root / "xm" / m
        d.mkdir(parents=True)
        train, qrel, run = ["userId\titemId\trating"], ["userId\titemId\trating"], []
        for u in range(25):
            items = rng.choice(30, 9, replace=False)
            train += [f"{m}u{u}\tP{i}\t1.0" for i in items[:8]]
            qrel.append(f"{m}u{u}\tP{items[8]}\t1")
            negatives = [f"P{i}" for i in range(30) if i not in items][:19]
            run.append(f"{m}u{u}\t" + ",".join([f"P{items[8]}", *negatives]))
        (d / "train_5core.tsv").write_text("\n".join(train) + "\n")
        (d / "valid_qrel.tsv").write_text("\n".join(qrel) + "\n")
        (d / "valid_run.tsv").write_text("\n".join(run) + "\n")
    return root / "xm"


def test_xmrec_evaluation_does_not_depend_on_the_row_order_of_the_train_files(tmp_path):
    root = _xmrec(tmp_path)
    run = tmp_path / "run"
    assert _train(run, f"xmrec:{root}") == 0
    out_a, out_b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["evaluate", str(run), "--k", "10", "--json", str(out_a)]) == 0
    for m in ("s1", "s2"):
        f = root / m / "train_5core.tsv"
        header, *rows = f.read_text().splitlines()
        np.random.default_rng(2).shuffle(rows)
        f.write_text("\n".join([header, *rows]) + "\n")
    assert main(["evaluate", str(run), "--k", "10", "--json", str(out_b)]) == 0
    assert json.loads(out_a.read_text())["metrics"] == json.loads(out_b.read_text())["metrics"]


def test_changed_data_is_refused_with_a_message_naming_the_data(toy_run, capsys):
    run, prefix = toy_run
    inter = prefix.with_suffix(".inter")
    lines = inter.read_text().splitlines()
    inter.write_text("\n".join(lines[:-5]) + "\n")  # five interactions fewer
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10"]) == 2
    line = _error_line(capsys)
    assert "does not match the data run" in line and str(prefix) in line


def test_run_records_absolute_paths_and_evaluates_from_another_directory(tmp_path, monkeypatch):
    _recbole(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert _train(Path("run"), "recbole:toy", "--domain-by", "user.age:35") == 0
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["source"] == f"recbole:{tmp_path / 'toy'}"
    assert cfg["format_version"] == 2 and cfg["data_fingerprint"]["rows"]["train"] > 0
    assert (tmp_path / "run" / "vocab" / "users.parquet").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["evaluate", str(tmp_path / "run"), "--k", "10"]) == 0


def test_moved_data_is_found_with_the_data_option(toy_run, tmp_path, capsys):
    run, prefix = toy_run
    moved = tmp_path / "moved"
    moved.mkdir()
    for ext in (".inter", ".user"):
        prefix.with_suffix(ext).rename(moved / f"toy{ext}")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10"]) == 2
    assert "toy.inter" in _error_line(capsys)
    assert main(["evaluate", str(run), "--k", "10", "--data", f"recbole:{moved / 'toy'}"]) == 0


def test_a_killed_run_is_reported_incomplete_not_evaluated_as_finished(toy_run, capsys):
    run, _ = toy_run
    (run / "summary.json").unlink()
    (run / "status.json").write_text(json.dumps({"state": "running", "epoch": 1}))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10"]) == 2
    line = _error_line(capsys)
    assert "incomplete" in line and "--allow-incomplete" in line
    assert main(["evaluate", str(run), "--k", "10", "--allow-incomplete"]) == 0


def test_weights_with_nan_are_refused(toy_run, capsys):
    run, _ = toy_run
    path = run / "model.safetensors"
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if v.dtype.kind == "f" and v.size > 1)
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, str(path))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10"]) == 2
    line = _error_line(capsys)
    assert "NaN or infinity" in line and str(path) in line


def test_a_truncated_checkpoint_gives_one_line_naming_the_file(toy_run, capsys):
    run, _ = toy_run
    path = run / "model.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10"]) == 2
    line = _error_line(capsys)
    assert str(path) in line and "truncated or corrupted" in line


def test_an_old_run_format_is_refused_with_what_to_do(toy_run, capsys):
    run, _ = toy_run
    cfg = json.loads((run / "config.json").read_text())
    for k in ("format", "format_version"):
        cfg.pop(k)
    (run / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--k", "10"]) == 2
    line = _error_line(capsys)
    assert "run format 1" in line and "adirec train --config" in line


@pytest.mark.parametrize("lr", ["inf", "nan", "-1"])
def test_a_learning_rate_that_is_not_a_finite_positive_number_is_refused(tmp_path, capsys, lr):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic:tiny", "--out", str(run), "--lr", lr, *SMALL]) == 2
    assert "lr must be" in _error_line(capsys)
    assert not run.exists()


def test_diverging_training_stops_with_one_line_and_a_failed_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic:tiny", "--out", str(run), "--lr", "1e12", "--epochs", "3",
                 "--temperature", "0.001", *SMALL]) == 1
    line = _error_line(capsys)
    assert "diverged" in line and "lower --lr" in line
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "diverged" in status["reason"]
    assert main(["evaluate", str(run), "--k", "10"]) == 2
    assert "failed" in _error_line(capsys)


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # Ctrl-C's default action in the child even when these tests run in a background job, whose
    # commands inherit SIGINT ignored (and Python then installs no KeyboardInterrupt handler): a
    # handled signal is reset to its default at exec, so handle it here while the child starts
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen([sys.executable, "-m", "adirec", *args], cwd=cwd, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, sig):
    # the cosine schedule too: a resumed run must follow the rates the whole run took
    args = ["--data", "synthetic:tiny", "--model", "adi-se", "--epochs", "3", "--patience", "0",
            "--st-start-epoch", "0", "--early-stopping-metric", "recall@10", "--lr-schedule", "cosine", *SMALL]
    whole = _cli("train", *args, "--out", str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.wait(timeout=600) == 0, whole.stderr.read()

    run = tmp_path / "cut"
    proc = _cli("train", *args, "--out", str(run), cwd=tmp_path)
    deadline = time.time() + 600
    while not (run / "checkpoints" / "last.json").is_file():  # interrupt once an epoch is done
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == 130
    err = proc.stderr.read().strip().splitlines()
    assert len(err) == 1 and "interrupted after epoch" in err[0] and "--resume" in err[0], err
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["epoch"] >= 1
    assert not (run / "summary.json").exists()

    resumed = _cli("train", "--resume", str(run), "--no-progress", cwd=tmp_path)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    lines = lambda p: [json.loads(x)["valid_recall@10"] for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert lines(run) == lines(tmp_path / "whole")


def test_a_run_that_reached_its_epoch_cap_continues_to_a_higher_one(tmp_path, capsys):
    # 2 epochs, then the cap raised to 3: the same weights, curve and best epoch as 3 from the start
    # (a patience the runs do not exhaust: the early-stopping counters carry over the raise)
    args = ["--data", "synthetic:tiny", "--model", "adi-se", "--patience", "5", "--st-start-epoch", "0",
            "--early-stopping-metric", "recall@10", *SMALL]
    assert main(["train", *args, "--epochs", "3", "--out", str(tmp_path / "whole")]) == 0
    run = tmp_path / "raised"
    assert main(["train", *args, "--epochs", "2", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--epochs", "3", "--no-progress"]) == 0
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    curve = lambda p: [json.loads(x)["valid_recall@10"] for x in (p / "metrics.jsonl").read_text().splitlines()]
    assert len(curve(run)) == 3 and curve(run) == curve(tmp_path / "whole")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_run"] == 3
    assert summary["best_epoch"] == json.loads((tmp_path / "whole" / "summary.json").read_text())["best_epoch"]
    config = json.loads((run / "config.json").read_text())
    assert config["train_config"]["epochs"] == 3
    assert [{k: v for k, v in r.items() if k != "at"} for r in config["epoch_cap_raised"]] == [
        {"from": 2, "to": 3, "after_epoch": 2}]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    # a cap is raised, never lowered; nothing is written by a refusal
    before = (run / "config.json").read_bytes()
    assert "a cap can be raised, not lowered" in _raise_refused(run, 2, capsys)
    assert (run / "config.json").read_bytes() == before


def _raise_refused(run: Path, epochs: int, capsys) -> str:
    """The one-line error of ``adirec train --resume RUN --epochs N``, which must be refused."""
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", str(epochs)]) == 2
    return _error_line(capsys)


def test_an_epoch_cap_is_not_raised_where_the_run_would_not_be_the_same(tmp_path, capsys):
    from adirec.runs import RunError, check_epoch_cap_raise, read_run_config, stopped_early
    from adirec.train.config import TrainConfig
    base = ["--data", "synthetic:tiny", "--model", "adi-se", "--early-stopping-metric", "recall@10", *SMALL]
    # the cosine schedule spreads its rates over the cap: other epochs would have had other rates
    cosine = tmp_path / "cosine"
    assert main(["train", *base, "--epochs", "1", "--lr-schedule", "cosine", "--out", str(cosine)]) == 0
    assert "cosine schedule" in _raise_refused(cosine, 2, capsys)
    # a run that stopped early is already the run with a higher cap: its saved state says so
    early = tmp_path / "early"
    assert main(["train", *base, "--epochs", "2", "--patience", "1", "--out", str(early)]) == 0
    recorded = read_run_config(early)
    last = early / "checkpoints" / "last.json"
    state = json.loads(last.read_text())
    last.write_text(json.dumps({**state, "bad_epochs": 0}))
    assert not stopped_early(early)
    last.write_text(json.dumps({**state, "bad_epochs": 1}))  # one epoch without a better metric
    assert stopped_early(early)
    line = _raise_refused(early, 5, capsys)
    assert f"stopped early at epoch {state['epoch']}" in line and "trains nothing more" in line
    # one model per domain keeps no state to continue from; a failed run is trained again
    single = tmp_path / "single"
    assert main(["train", *base, "--model", "dnn-single", "--epochs", "1", "--out", str(single)]) == 0
    assert "one model per domain" in _raise_refused(single, 2, capsys)
    failed = tmp_path / "failed"
    assert main(["train", "--data", "synthetic:tiny", "--out", str(failed), "--lr", "1e12", "--epochs", "3",
                 "--temperature", "0.001", *SMALL]) == 1
    capsys.readouterr()
    config = (failed / "config.json").read_bytes()
    with pytest.raises(RunError, match="failed"):
        check_epoch_cap_raise(failed, read_run_config(failed), TrainConfig(**{**read_run_config(failed)["train_config"],
                                                                              "epochs": 5}))
    assert (failed / "config.json").read_bytes() == config
    # every other training setting must stay as recorded
    with pytest.raises(RunError, match=r"only the epoch cap may be raised, and \['lr'\] differ"):
        check_epoch_cap_raise(early, recorded, TrainConfig(**{**recorded["train_config"], "epochs": 5, "lr": 0.5}))


def test_resume_takes_no_other_settings(toy_run, capsys):
    run, _ = toy_run
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "--resume continues a run" in _error_line(capsys)
