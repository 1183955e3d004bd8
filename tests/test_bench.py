import json

import numpy as np
import pytest
import torch

from adirec.bench.runner import BenchConfig, dense_parameters, dial_weights
from adirec.bench.suites import SUITES, parse_suites, select, suite_runs
from adirec.cli import main
from adirec.data.spec import DataSpec

TINY = ["--set", "embedding_dim=8", "--set", "expert_hidden=16", "--set", "expert_out=8",
        "--set", "forward_hidden=8", "--set", "output_dim=8"]
# every suite, a few runs each: a per-domain model, budget-matched baselines, all reference
# kinds, a run shared by two suites (ablation/adi-se = paper/adi-se), an experts sweep with two
# values of K, an SE placement and a fusion variant
METHODS = ("paper/adi-se,dnn,dnn-single,popularity,domain-popularity,itemknn,ease-pooled,"
           "sum,ablation/adi-se,no-st-dial-dsbn,3-se,mmoe-k1,mmoe-k2")
PLANNED = {("paper", k) for k in ("adi-se", "dnn", "dnn-single", "popularity", "domain-popularity", "itemknn",
                                  "ease-pooled")} | {("fusion", "sum"), ("ablation", "adi-se"),
                                                     ("ablation", "no-st-dial-dsbn"), ("se", "3-se"),
                                                     ("experts", "mmoe-k1"), ("experts", "mmoe-k2")}


def _bench(out, *extra, methods=METHODS):
    return main(["bench", "--data", "synthetic:tiny", "--suite", "all", "--seeds", "1", "--out", str(out),
                 "--epochs", "1", "--batch-size", "256", "--negatives", "64", "--threads", "1", "--no-progress",
                 "--ease-lambda", "auto", "--methods", methods, *TINY, *extra])


def test_suites_hold_the_papers_runs():
    paper = {r.key for r in suite_runs("paper")}
    assert {"dnn-single", "dnn", "shared-bottom", "cross-stitch", "mmoe", "ple", "star", "adi-lt", "adi-va",
            "adi-se", "adi-se-max", "popularity", "domain-popularity", "itemknn", "ease"} <= paper
    assert all(r.match_budget for r in suite_runs("paper") if r.kind == "neural")
    assert [r.override_dict()["fusion"] for r in suite_runs("fusion")] == ["sum", "netmul", "concat"]
    abl = {r.key: r for r in suite_runs("ablation")}
    assert abl["adi-se"].self_training is None and abl["no-st"].self_training is False  # None: the preset's
    assert abl["no-st-dial-dsbn"].override_dict() == {"dial": "none", "dsbn": False}
    assert [r.label for r in suite_runs("se")] == ["1-SE", "3-SE", "4-SE"]
    experts = suite_runs("experts")
    assert sorted({(r.group, r.x) for r in experts}) == sorted((g, k) for g in ("ADI", "MMoE", "PLE") for k in range(1, 6))
    assert all(r.match_budget and r.override_dict()["shared_experts"] == r.x for r in experts)
    assert parse_suites("all") == list(SUITES) and parse_suites("se,fusion") == ["se", "fusion"]
    with pytest.raises(ValueError, match="unknown suite"):
        parse_suites("tables")
    assert [r.key for r in select(suite_runs("experts"), ["mmoe"])] == [f"mmoe-k{k}" for k in range(1, 6)]
    assert [r.key for r in select(suite_runs("paper"), ["paper/adi-se"])] == ["adi-se"]


def test_bench_end_to_end_resume_and_guards(tmp_path, capsys):
    out = tmp_path / "bench"
    assert _bench(out) == 0
    log = capsys.readouterr().out
    assert "[13/13]" in log and "FAILED" not in log
    res = json.loads((out / "results.json").read_text())
    runs = {(r["suite"], r["key"]): r for r in res["runs"]}
    assert set(runs) == PLANNED and not res["failed"]
    domains = res["bench"]["domains"]
    assert res["bench"]["protocol"] == "full" and res["bench"]["ks"] == [20, 50, 100]
    for r in runs.values():
        for k in (20, 50, 100):
            row = r["metrics"][f"recall@{k}"]
            assert set(row) == {*domains, "mean"} and all(0.0 <= v <= 1.0 for v in row.values())
            assert row["mean"] == pytest.approx(np.mean([row[d] for d in domains]))
        assert r["params"] > 0 and r["seconds"] >= 0 and r["config"] is not None
    # fair comparison: budget-matched methods are within +-10% of ADI-SE's dense parameters
    for key in ("adi-se", "dnn", "dnn-single"):
        r = runs[("paper", key)]
        assert abs(r["params_dense"] / r["budget"]["target_dense"] - 1) <= 0.1
    assert runs[("experts", "mmoe-k2")]["config"]["shared_experts"] == 2
    assert runs[("ablation", "no-st-dial-dsbn")]["config"]["dsbn"] is False
    assert runs[("ablation", "no-st-dial-dsbn")]["train_config"]["self_training"]["enabled"] is False
    # the same computation in two suites runs once
    assert runs[("ablation", "adi-se")]["reused_from"] == "runs/paper/adi-se/seed0"
    assert runs[("ablation", "adi-se")]["metrics"] == runs[("paper", "adi-se")]["metrics"]
    # references: evaluated directly, EASE's lambda chosen on the hold-out
    lam = json.loads((out / "ease_lambda.json").read_text())["pooled"]
    assert runs[("paper", "ease-pooled")]["config"] == {"lam": lam["lam"]}
    # DIAL weights per domain and field, drawn as a heat map; the experts sweep as a line plot
    w = runs[("paper", "adi-se")]["dial_weights"]["user"]
    assert np.asarray(w["weights"]).shape == (len(domains), len(w["fields"]))
    assert runs[("paper", "dnn")]["dial_weights"] is None
    for png in ("experts.png", "dial_paper.png", "dial_ablation.png", "dial_se.png", "dial_fusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (out / "results.md").read_text()
    for r in runs.values():
        assert f"| {r['label']} |" in md
    for suite in SUITES:
        assert f"## {suite}:" in md
    assert "![experts.png](experts.png)" in md and "vs budget" in md

    # resumable: a rerun trains nothing
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/bench.json")}
    assert _bench(out) == 0
    log = capsys.readouterr().out
    assert log.count("done before") == len(PLANNED) and "trained in" not in log
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/bench.json")} == stamp
    # an interrupted run (no bench.json, training unfinished) is trained again, alone
    run = out / "runs" / "fusion" / "sum" / "seed0"
    (run / "bench.json").unlink()
    (run / "summary.json").unlink()
    assert _bench(out, methods="sum") == 0
    log = capsys.readouterr().out
    assert "fusion/sum seed 0: trained" in log and (run / "bench.json").is_file()
    # another seed from a second bench process into the same OUT: only that seed trains, and the
    # tables then hold both
    assert _bench(out, "--first-seed", "1", methods="sum") == 0
    log = capsys.readouterr().out
    assert "fusion/sum seed 1: trained" in log and "seed 0" not in log
    seeds = [r["seed"] for r in json.loads((out / "results.json").read_text())["runs"] if r["key"] == "sum"]
    assert sorted(seeds) == [0, 1]
    # other settings for a finished run: refused, not mixed in
    assert _bench(out, "--lr", "0.01", methods="sum") == 1
    assert "other settings" in capsys.readouterr().out
    # a method that is in none of the suites: named
    assert _bench(out, methods="sum,svd") == 2
    assert "['svd'] match no run" in capsys.readouterr().err
    # another data set in the same directory: refused
    assert main(["bench", "--data", "synthetic:tiny", "--data-seed", "3", "--suite", "se", "--out", str(out)]) == 2
    assert "choose another --out" in capsys.readouterr().err


def test_dial_weights_per_domain_and_field():
    from adirec.data.sources import load_source
    from adirec.models.adi import TwoTowerModel
    from adirec.models.registry import build_config
    data = load_source("synthetic:tiny")
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, data.num_domains, build_config("adi-se", embedding_dim=4, expert_hidden=(8,),
                                                                      expert_out=4, forward_hidden=(4,), output_dim=4))
    w = dial_weights(model, data, "test")
    for side, tower in (("user", model.user_tower), ("item", model.item_tower)):
        got = np.asarray(w[side]["weights"])
        assert got.shape == (data.num_domains, tower.embeddings.num_fields)
        assert np.all((got > 0) & (got < 1))  # SE weights are sigmoids
    # by hand for domain 1's items: the mean of the SE weights over the domain's corpus
    from adirec.data.batches import FeatureStore
    items = data.corpus[1]
    dom = torch.full((len(items),), 1)
    with torch.no_grad():
        e = model.item_tower.embeddings(FeatureStore(data).item_features(items, 1))
        expected = model.item_tower.adaptation.field_weights(e, dom).mean(0).numpy()
    np.testing.assert_allclose(w["item"]["weights"][1], expected, rtol=1e-5)
    dnn = TwoTowerModel(data.schema, data.num_domains, build_config("dnn", embedding_dim=4))
    assert dial_weights(dnn, data, "test") is None
    # the dense count the tables show is the registry's (the budget's) definition
    from adirec.models.registry import parameter_counts
    assert dense_parameters(dnn) == parameter_counts("dnn", data.schema, data.num_domains, dnn.config)["dense"]
    assert 0 < dense_parameters(model) < model.num_parameters()


def test_bench_config_is_validated_early(tmp_path):
    spec = DataSpec(source="synthetic:tiny")
    with pytest.raises(ValueError, match="unknown model config fields"):
        BenchConfig(spec, tmp_path, ["se"], size={"widht": 3})
    with pytest.raises(ValueError, match="ease_lambda"):
        BenchConfig(spec, tmp_path, ["paper"], ease_lambda=-1.0)
    with pytest.raises(ValueError, match="seeds"):
        BenchConfig(spec, tmp_path, ["paper"], seeds=0)
    with pytest.raises(ValueError, match="first_seed"):
        BenchConfig(spec, tmp_path, ["paper"], first_seed=-1)
    with pytest.raises(ValueError, match="cannot be set"):
        BenchConfig(spec, tmp_path, ["paper"], train={"seed": 3})
    cfg = BenchConfig(spec, tmp_path, ["paper"], size={"expert_hidden": 16})
    assert cfg.size == {"expert_hidden": (16,)}
