import json

import numpy as np
import pytest
import torch

from adirec.bench.runner import BenchConfig, dense_parameters, dial_weights, estimate_left
from adirec.bench.suites import SUITES, parse_suites, select, suite_runs
from adirec.cli import main
from adirec.data.spec import DataSpec

TINY = ["--set", "embedding_dim=8", "--set", "expert_hidden=16", "--set", "expert_out=8",
        "--set", "forward_hidden=8", "--set", "output_dim=8"]
# every suite, a few runs each: a per-domain model, budget-matched baselines, all reference
# kinds, a run shared by two suites (ablation/adi-se = paper/adi-se), an experts sweep with two
# values of K, an SE placement and a fusion variant
METHODS = ("paper/adi-se,paper/dnn,dnn-single,paper/popularity,paper/domain-popularity,paper/itemknn,"
           "paper/ease-pooled,paper/ease-pooled-recency,sum,ablation/adi-se,no-st-dial-dsbn,3-se,mmoe-k1,mmoe-k2,"
           "references/ease-pooled,adi-plus-small")
PLANNED = {("paper", k) for k in ("adi-se", "dnn", "dnn-single", "popularity", "domain-popularity", "itemknn",
                                  "ease-pooled", "ease-pooled-recency")} | {
    ("fusion", "sum"), ("ablation", "adi-se"), ("ablation", "no-st-dial-dsbn"), ("se", "3-se"),
    ("experts", "mmoe-k1"), ("experts", "mmoe-k2"), ("references", "ease-pooled"),
    ("plus-ablation", "adi-plus-small")}


def _bench(out, *extra, methods=METHODS):
    return main(["bench", "--data", "synthetic:tiny", "--suite", "all", "--seeds", "1", "--out", str(out),
                 "--epochs", "1", "--batch-size", "256", "--negatives", "64", "--threads", "1", "--no-progress",
                 "--ease-lambda", "auto", "--methods", methods, *TINY, *extra])


def test_suites_hold_the_papers_runs():
    paper = {r.key: r for r in suite_runs("paper")}
    assert {"dnn-single", "dnn", "dnn-blind", "shared-bottom", "cross-stitch", "mmoe", "ple", "star", "adi-lt",
            "adi-va", "adi-se", "adi-se-max", "popularity", "domain-popularity", "itemknn", "ease",
            "ease-pooled-recency", "seq-linear"} <= set(paper)
    # every neural row is budget-matched but ADI-SE (MAX) at its natural size, which says so
    unmatched = [k for k, r in paper.items() if r.kind == "neural" and not r.match_budget]
    assert unmatched == ["adi-se-max-natural"]
    assert paper["adi-se-max-natural"].model == paper["adi-se-max"].model == "adi-se-max"
    assert "natural size" in paper["adi-se-max-natural"].label and "fair budget" in paper["adi-se-max"].label
    # baselines keep their presets' training (no self-training) but the one row labelled +ST
    with_st = [r for r in paper.values() if r.self_training]
    assert [(r.key, r.model, r.label) for r in with_st] == [("dnn+st", "dnn", "DNN +ST")]
    assert all(r.self_training is None for r in paper.values() if r.key != "dnn+st")
    assert [r.override_dict()["fusion"] for r in suite_runs("fusion")] == ["sum", "netmul", "concat"]
    abl = {r.key: r for r in suite_runs("ablation")}
    assert abl["adi-se"].self_training is None and abl["no-st"].self_training is False  # None: the preset's
    assert abl["no-st-dial-dsbn"].override_dict() == {"dial": "none", "dsbn": False}
    assert [r.label for r in suite_runs("se")] == ["1-SE", "3-SE", "4-SE"]
    experts = suite_runs("experts")
    assert sorted({(r.group, r.x) for r in experts}) == sorted((g, k) for g in ("ADI", "MMoE", "PLE") for k in range(1, 6))
    assert all(r.match_budget and r.override_dict()["shared_experts"] == r.x for r in experts)
    # references only; and the plus presets beside the references
    refs = suite_runs("references")
    assert refs and all(r.kind == "reference" for r in refs)
    assert [r.key for r in refs] == [r.key for r in paper.values() if r.kind == "reference"]
    assert [r.model for r in suite_runs("plus") if r.kind == "neural"] == ["adi-plus", "dnn-plus"]
    # the ablation from adi-plus to dnn-plus removes one component per row; before the last row only
    # the backbone (experts against one MLP) differs from dnn-plus
    from adirec.models.registry import build_config
    *path, small = suite_runs("plus-ablation")
    ladder = [build_config(r.model, 3, **r.override_dict()) for r in path]
    assert [r.key for r in path] == ["adi-plus", "no-dial", "no-dial-dsbn", "no-dial-dsbn-forward", "dnn-plus"]
    assert (small.model, small.match_budget, small.budget_of) == ("adi-plus", True, "dnn-plus")
    changed = [{f for f in ("dial", "dsbn", "domain_forward", "backbone") if getattr(a, f) != getattr(b, f)}
               for a, b in zip(ladder, ladder[1:], strict=False)]
    assert changed == [{"dial"}, {"dsbn"}, {"domain_forward"}, {"backbone"}]
    assert parse_suites("all") == list(SUITES) and parse_suites("se,fusion") == ["se", "fusion"]
    with pytest.raises(ValueError, match="unknown suite"):
        parse_suites("tables")
    assert [r.key for r in select(suite_runs("experts"), ["mmoe"])] == [f"mmoe-k{k}" for k in range(1, 6)]
    assert [r.key for r in select(suite_runs("paper"), ["paper/adi-se"])] == ["adi-se"]
    assert select(suite_runs("paper"), ["references"]) == [r for r in suite_runs("paper") if r.kind == "reference"]
    assert [r.key for r in select(suite_runs("paper"), ["dnn"])] == ["dnn", "dnn+st"]


def test_bench_end_to_end_resume_and_guards(tmp_path, capsys):
    out = tmp_path / "bench"
    assert _bench(out) == 0
    log = capsys.readouterr().out
    assert f"[{len(PLANNED)}/{len(PLANNED)}]" in log and "FAILED" not in log
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
    # a budget set on another preset: adi-plus scaled to dnn-plus's dense count, and the table says so
    small = runs[("plus-ablation", "adi-plus-small")]
    assert small["budget"]["reference"] == "dnn-plus"
    assert small["budget"]["target_dense"] != runs[("paper", "adi-se")]["budget"]["target_dense"]
    assert abs(small["params_dense"] / small["budget"]["target_dense"] - 1) <= 0.1
    assert "Budget: the dense parameters of DNN+" in (out / "results.md").read_text()
    assert runs[("experts", "mmoe-k2")]["config"]["shared_experts"] == 2
    assert runs[("ablation", "no-st-dial-dsbn")]["config"]["dsbn"] is False
    assert runs[("ablation", "no-st-dial-dsbn")]["train_config"]["self_training"]["enabled"] is False
    # the same computation in two suites runs once
    assert runs[("ablation", "adi-se")]["reused_from"] == "runs/paper/adi-se/seed0"
    assert runs[("ablation", "adi-se")]["metrics"] == runs[("paper", "adi-se")]["metrics"]
    # references: evaluated directly, EASE's lambda (and the recency decay) chosen on the hold-out
    chosen = json.loads((out / "ease_lambda.json").read_text())
    assert runs[("paper", "ease-pooled")]["config"] == {"lam": chosen["pooled"]["lam"]}
    assert runs[("paper", "ease-pooled-recency")]["config"] == {k: chosen["pooled-recency"][k] for k in ("lam", "decay")}
    assert len(chosen["pooled-recency"]["holdout"]) == 5 * 5  # lambdas x decays
    assert runs[("references", "ease-pooled")]["reused_from"] == "runs/paper/ease-pooled/reference"
    # provenance: the code, the libraries and the machine; per run the device
    prov = res["provenance"]
    assert set(prov["versions"]) == {"adirec", "python", "torch", "numpy", "pyarrow", "faiss"}
    assert prov["machine"]["cores"] >= 1 and prov["machine"]["cpu"] and prov["machine"]["os"]
    assert prov["git"] is None or (len(prov["git"]["commit"]) == 40 and isinstance(prov["git"]["dirty"], bool))
    for r in runs.values():
        assert r["provenance"]["device"] == "cpu" and r["provenance"]["torch"] == prov["versions"]["torch"]
    # DIAL weights per domain and field, drawn as a heat map; the experts sweep as a line plot
    w = runs[("paper", "adi-se")]["dial_weights"]["user"]
    assert np.asarray(w["weights"]).shape == (len(domains), len(w["fields"]))
    assert runs[("paper", "dnn")]["dial_weights"] is None
    for png in ("experts.png", "dial_paper.png", "dial_ablation.png", "dial_se.png", "dial_fusion.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    md = (out / "results.md").read_text()
    header = md.split("## ")[0]
    for words in ("**Data**: `synthetic:tiny`", "**Protocol**: full ranking", "split `test`", "**Seeds**: neural runs 0",
                  "**Split**: leave-last-out per user by time", "torch " + prov["versions"]["torch"], "logical cores", "**Runs**: "):
        assert words in header, words
    # every table ends with the strongest reference of the directory, named, with its numbers
    summary = res["summary"]
    for metric in ("recall@20", "recall@50", "recall@100"):
        best = max((row for rows in summary.values() for row in rows.values() if row["kind"] == "reference"),
                   key=lambda row: row["metrics"][metric]["mean"]["mean"])
        line = next(l for l in md.splitlines() if l.startswith(f"Strongest reference (Recall@{metric[7:]})"))
        assert best["label"] in line and f"mean {best['metrics'][metric]['mean']['mean']:.4f}" in line
        assert md.count(f"Strongest reference (Recall@{metric[7:]})") == sum(1 for _ in summary)  # one per table
    for r in runs.values():
        assert f"| {r['label']} |" in md
    for suite in {suite for suite, _ in PLANNED}:
        assert f"## {suite}:" in md
    assert "![experts.png](experts.png)" in md and "vs budget" in md

    # resumable: a rerun trains nothing
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/bench.json")}
    assert _bench(out) == 0
    log = capsys.readouterr().out
    assert log.count("done before") == len(PLANNED) and "trained in" not in log and "choosing" not in log
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
    # other settings for a finished run: refused, not mixed in, naming what differs
    assert _bench(out, "--lr", "0.01", methods="sum") == 1
    log = capsys.readouterr().out
    assert "other settings (train_config.lr: 0.003 there, 0.01 now)" in log
    # a method that is in none of the suites: named
    assert _bench(out, methods="sum,svd") == 2
    assert "['svd'] match no run" in capsys.readouterr().err
    # another data set in the same directory: refused
    assert main(["bench", "--data", "synthetic:tiny", "--data-seed", "3", "--suite", "se", "--out", str(out)]) == 2
    assert "holds a bench with other data (train rows 2806 -> 2518" in capsys.readouterr().err


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


def _references_bench(out, data=None, methods=("popularity", "ease-pooled"), **kw):
    from adirec.bench.runner import Bench
    cfg = BenchConfig(DataSpec(source="synthetic:tiny"), out, ["references"], methods=list(methods), progress=False, **kw)
    logs = []
    return Bench(cfg, data=data, log=logs.append).run(), logs


def test_an_older_bench_directory_is_accepted_or_refused_by_what_determines_the_data(tmp_path):
    out = tmp_path / "b"
    _references_bench(out)
    # what an earlier version wrote: fewer DataSpec fields, no fingerprint, and runs recorded with
    # a hash of other fields and without the model/training fields added since
    old = json.loads((out / "bench.json").read_text())
    old["data"] = {"source": "synthetic:tiny", "domains": None, "domain_by": None, "positive": None, "seed": 0,
                   "history_len": 50}
    del old["data_fingerprint"]
    (out / "bench.json").write_text(json.dumps(old))
    for path in out.glob("runs/*/*/*/bench.json"):
        rec = json.loads(path.read_text())
        rec["hash"], rec["request"]["data"] = "0123456789abcdef", old["data"]
        path.write_text(json.dumps(rec))
    res, logs = _references_bench(out)
    assert sum("done before" in line for line in logs) == 2 and not res["failed"]
    assert json.loads((out / "bench.json").read_text())["data_fingerprint"]  # now recorded
    # the same older file naming other data: refused, with the field that differs
    old["data"]["history_len"] = 20
    (out / "bench.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"holds a bench with data history_len=20, not 50\. Choose another --out"):
        _references_bench(out)
    # a finished run recorded with other settings is refused with what differs
    (out / "bench.json").unlink()
    path = out / "runs" / "references" / "ease-pooled" / "reference" / "bench.json"
    rec = json.loads(path.read_text())
    rec["request"]["kwargs"]["lam"] = 7.0
    path.write_text(json.dumps(rec))
    res, logs = _references_bench(out)
    assert res["failed"][0]["key"] == "ease-pooled"
    assert "other settings (kwargs.lam: 7.0 there, " in res["failed"][0]["error"]


def test_a_published_bench_goes_on_elsewhere_with_resume_from(tmp_path, capsys):
    from adirec.bench.runner import Bench
    from adirec.data.sources.synthetic import load_synthetic
    dest = tmp_path / "published"
    first, _ = _references_bench(tmp_path / "a", publish=dest)
    # a new OUT continues the published bench: its runs are not run again, new ones run, and a
    # run of another suite that is the same computation reuses the restored one
    out = tmp_path / "b"
    args = ["bench", "--data", "synthetic:tiny", "--suite", "references,paper", "--out", str(out), "--resume-from",
            str(dest), "--methods", "popularity,ease-pooled,itemknn", "--ease-lambda", "auto", "--threads", "1"]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert f"restored 2 finished runs from {dest}\n" in log
    assert "references/popularity: done before" in log and "references/ease-pooled: done before" in log
    assert "references/itemknn: fitted" in log and "choosing" not in log
    assert "paper/popularity: reused runs/references/popularity/reference" in log
    res = json.loads((out / "results.json").read_text())
    runs = {(r["suite"], r["key"]): r for r in res["runs"]}
    assert set(runs) == {(s, k) for s in ("references", "paper") for k in ("popularity", "ease-pooled", "itemknn")}
    for r in first["runs"]:
        assert runs[("references", r["key"])]["metrics"] == r["metrics"] == runs[("paper", r["key"])]["metrics"]
        assert runs[("references", r["key"])]["restored_from"] == str(dest)
        assert "restored_from" not in runs[("paper", r["key"])]  # reused here, not restored
    assert "restored_from" not in runs[("references", "itemknn")]
    assert json.loads((out / "ease_lambda.json").read_text())["pooled"] == \
        json.loads((dest / "ease_lambda.json").read_text())["pooled"]
    assert "6 records; " in (out / "results.md").read_text()
    assert "2 of them restored from a published bench (--resume-from)." in (out / "results.md").read_text()
    # again: the runs OUT holds are kept as they are
    stamp = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/bench.json")}
    assert main(args) == 0
    assert f"restored 0 finished runs from {dest} (2 already in {out}, kept)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*/*/bench.json")} == stamp
    # a run begun in OUT (another bench may be training it) is left alone
    begun = tmp_path / "c" / "runs" / "references" / "popularity" / "reference"
    begun.mkdir(parents=True)
    (begun / "partial").write_text("")
    _, logs = _references_bench(tmp_path / "c", resume_from=dest, methods=("ease-pooled",))
    assert f"restored 1 finished run from {dest} (1 already in {tmp_path / 'c'}, kept)" in logs
    assert sorted(p.name for p in begun.iterdir()) == ["partial"]

    # refused, with nothing of the published bench written
    def refused(published: dict, match: str, settings=None, out_dir="r"):
        src = tmp_path / "bad"
        src.mkdir(exist_ok=True)
        (src / "results.json").write_text(json.dumps(published) if isinstance(published, dict) else published)
        (src / "ease_lambda.json").write_text(json.dumps(settings or json.loads((dest / "ease_lambda.json").read_text())))
        with pytest.raises(ValueError, match=match):
            _references_bench(tmp_path / out_dir, resume_from=src)
        assert not (tmp_path / out_dir / "runs").exists()

    refused("{", r"is not a bench's results.json \(JSONDecodeError")
    unprinted = json.loads((dest / "results.json").read_text())
    del unprinted["bench"]["data_fingerprint"]  # published before fingerprints were recorded
    refused(unprinted, r"is not a bench's results.json \(KeyError: .the data's fingerprint")
    for run_dir in ("../../elsewhere/reference", "runs/../x/reference", "runs/references/itemknn/reference",
                    "runs/references/ease-pooled/seed0", "/abs/runs/references/ease-pooled/reference"):
        published = json.loads((dest / "results.json").read_text())
        published["runs"][-1]["run_dir"] = run_dir  # the record is references/ease-pooled's
        refused(published, "a run record that is not a finished run of runs/SUITE/KEY/RUN")
    published = json.loads((dest / "results.json").read_text())
    del published["runs"][0]["metrics"]
    refused(published, r"not a finished run of runs/SUITE/KEY/RUN \('runs/references/popularity/reference'\)")
    published = json.loads((dest / "results.json").read_text())
    refused({**published, "runs": published["runs"] * 2}, "two run records of runs/references/popularity/reference")
    refused(published, "holds no reference settings", settings={"pooled": {"lam": 1.0}})
    other = tmp_path / "o" / "ease_lambda.json"  # this OUT chose EASE's lambda otherwise
    other.parent.mkdir()
    other.write_text(json.dumps({"pooled": {"lam": 123.0, "lambdas": [123.0]}}))
    refused(published, r"its reference settings \['pooled'\] differ from the ones .* holds", out_dir="o")
    cfg = BenchConfig(DataSpec(source="synthetic:tiny"), tmp_path / "d", ["references"], resume_from=dest)
    with pytest.raises(ValueError, match=r"--resume-from .* a bench with other data \(train rows"):
        Bench(cfg, data=load_synthetic("tiny", seed=3), log=lambda _: None).run()
    with pytest.raises(ValueError, match="holds no results.json: name a directory that --publish wrote"):
        BenchConfig(DataSpec(source="synthetic:tiny"), out, ["references"], resume_from=tmp_path / "none")
    with pytest.raises(ValueError, match="is the bench's own --out"):
        BenchConfig(DataSpec(source="synthetic:tiny"), out, ["references"], resume_from=out)


def test_a_missing_config_field_counts_at_its_default():
    from adirec.bench.runner import normal_request, request_difference, request_hash
    from adirec.models.config import TwoTowerConfig
    from adirec.train.config import TrainConfig
    from dataclasses import asdict
    now = {"protocol": "full", "split": "test", "ks": [20], "model": "adi-se", "data": {"source": "x"},
           "model_config": asdict(TwoTowerConfig()), "budget": {"target_dense": 5},
           "train_config": {k: v for k, v in asdict(TrainConfig()).items() if k not in ("progress", "num_threads", "device")}}
    before = json.loads(json.dumps(now))
    del before["model_config"]["item_tower_norm"], before["train_config"]["self_training"]["weight"]
    before["data"], before["budget"] = {"source": "y"}, None  # the data is OUT's; the budget is how, not what
    assert request_hash(before) == request_hash(now) and request_difference(before, now) == {}
    before["model_config"]["output_dim"] = 8
    assert request_difference(before, now) == {"model_config.output_dim": (8, 64)}
    assert normal_request(now)["model_config"]["expert_hidden"] == [256]  # stored form: lists


def test_one_domain_bench_reports_hr_and_ndcg_at_10(tmp_path):
    from adirec.data.sources.synthetic import load_synthetic
    data = load_synthetic("tiny", domain_shares=(1.0,))
    res, _ = _references_bench(tmp_path / "b", data=data, methods=("popularity", "ease-pooled-recency", "seq-linear"))
    meta = res["bench"]
    assert meta["ks"] == [10] and meta["main_metric"] == "recall@10"
    assert meta["metric_names"]["recall"] == "HR" and meta["table_metrics"] == ["recall@10", "ndcg@10"]
    md = (tmp_path / "b" / "results.md").read_text()
    assert "### HR@10" in md and "### NDCG@10" in md and "### Recall@" not in md
    assert "Every query has one relevant item, so Recall@N is the hit rate HR@N." in md
    assert "Strongest reference (HR@10): **" in md and "Strongest reference (NDCG@10): **" in md
    # the recency and sequence references are chosen on the hold-out at the main metric
    chosen = json.loads((tmp_path / "b" / "ease_lambda.json").read_text())
    assert chosen["pooled-recency"]["metric"] == chosen["seq-linear"]["metric"] == "recall@10"
    assert {r["key"]: r["config"] for r in res["runs"]}["seq-linear"] == {k: chosen["seq-linear"][k] for k in ("lam", "decay")}


def test_recency_references_are_skipped_without_timestamps(tmp_path):
    from adirec.data.build import RawInteractions, build_dataset
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 30, 600).astype(str).astype(object), rng.integers(0, 40, 600).astype(str).astype(object)
    train = RawInteractions(u, i, rng.integers(0, 2, 600))
    test = RawInteractions(np.array(["1", "2"], dtype=object), np.array(["3", "4"], dtype=object), np.array([0, 1]))
    data = build_dataset("timeless", ["a", "b"], train, test=test)
    res, logs = _references_bench(tmp_path / "b", data=data, methods=("popularity", "ease-recency", "seq-linear"), ks=[5])
    assert [r["key"] for r in res["runs"]] == ["popularity"] and not res["failed"]
    assert {s["key"]: s["reason"] for s in res["skipped"]} == {
        k: "recency weighting needs timestamps; this data set has none" for k in ("ease-recency", "seq-linear")}


def test_publish_copies_tables_json_and_figures_never_runs(tmp_path):
    from adirec.bench.report import publish
    out, dest = tmp_path / "b", tmp_path / "benchmarks" / "results" / "tiny"
    _references_bench(out, publish=dest)
    assert sorted(p.name for p in dest.iterdir()) == ["bench.json", "ease_lambda.json", "results.json", "results.md"]
    assert (dest / "results.md").read_bytes() == (out / "results.md").read_bytes()
    publish(out, dest)  # a previous publish is replaced
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileExistsError, match="not a published bench"):
        publish(out, tmp_path / "notes")
    with pytest.raises(ValueError, match="is the bench's own --out"):
        BenchConfig(DataSpec(source="synthetic:tiny"), out, ["references"], publish=out)


def test_adi_se_max_is_reported_at_the_fair_budget_and_at_its_natural_size(tmp_path):
    from adirec.bench.runner import Bench
    from adirec.data.sources import load_source
    from adirec.models import registry
    data = load_source("synthetic:tiny")
    size = {"embedding_dim": 8, "expert_hidden": (16,), "expert_out": 8, "forward_hidden": (8,), "output_dim": 8}
    bench = Bench(BenchConfig(DataSpec(source="synthetic:tiny"), tmp_path, ["paper"], size=size), data=data)
    runs = {r.key: r for r in suite_runs("paper")}
    budget = registry.parameter_counts("adi-se", data.schema, 3, registry.build_config("adi-se", 3, **size))["dense"]
    fair, info = bench._model_config(runs["adi-se-max"])
    natural, none = bench._model_config(runs["adi-se-max-natural"])
    assert info == {"reference": "adi-se", "target_dense": budget} and none is None
    assert natural == registry.build_config("adi-se-max", 3, **size)  # no width matching
    dense = lambda cfg: registry.parameter_counts("adi-se-max", data.schema, 3, cfg)["dense"]  # noqa: E731
    assert abs(dense(fair) / budget - 1) <= 0.1 < dense(natural) / budget - 1


def test_a_preset_the_registry_lacks_is_skipped_with_a_note(tmp_path, monkeypatch):
    from adirec.bench.runner import Bench
    from adirec.data.sources import load_source
    from adirec.models import registry
    monkeypatch.delitem(registry.MODELS, "dnn-plus")  # a registry without it (an older or trimmed one)
    bench = Bench(BenchConfig(DataSpec(source="synthetic:tiny"), tmp_path, ["plus"], seeds=2, methods=["neural"]),
                  data=load_source("synthetic:tiny"))
    tasks = bench.plan()
    assert [(t.spec.key, t.seed) for t in tasks] == [("adi-plus", 0), ("adi-plus", 1)]
    assert bench.skipped == [{"suite": "plus", "key": "dnn-plus", "reason": "model 'dnn-plus' is not registered"}]


def test_the_plus_ablation_is_skipped_on_one_domain(tmp_path):
    from adirec.bench.runner import Bench
    from adirec.data.sources import load_source
    one = DataSpec(source="synthetic:tiny", domains=["d1"])
    bench = Bench(BenchConfig(one, tmp_path, ["plus-ablation", "plus"], methods=["neural"]),
                  data=load_source("synthetic:tiny", domains=["d1"]))
    tasks = bench.plan()
    assert [(t.spec.suite, t.spec.key) for t in tasks] == [("plus", "adi-plus"), ("plus", "dnn-plus")]
    assert {s["suite"] for s in bench.skipped} == {"plus-ablation"}
    assert len(bench.skipped) == len([r for r in suite_runs("plus-ablation") if r.kind != "reference"])
    assert all("no domain components" in s["reason"] for s in bench.skipped)
    three = Bench(BenchConfig(DataSpec(source="synthetic:tiny"), tmp_path / "3", ["plus-ablation"], methods=["neural"]),
                  data=load_source("synthetic:tiny"))
    assert len(three.plan()) == 6 and not three.skipped


def test_two_presets_with_the_same_network_on_this_data_train_once(tmp_path, capsys):
    from adirec.bench.runner import computation_hash, request_hash
    from adirec.data.sources import load_source
    from adirec.models.registry import build_config
    # on one domain adi-plus builds dnn-plus's network: the plus suite trains it once per seed
    out = tmp_path / "one"
    assert main(["bench", "--data", "synthetic:tiny", "--domains", "d1", "--suite", "plus", "--methods", "neural",
                 "--seeds", "1", "--out", str(out), "--epochs", "1", "--batch-size", "256", "--threads", "1",
                 "--no-progress", *TINY]) == 0
    log = capsys.readouterr().out
    assert "plus/adi-plus seed 0: trained" in log
    assert ("plus/dnn-plus seed 0: reused runs/plus/adi-plus/seed0 (the same network and training as adi-plus)"
            in log)
    runs = {r["key"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert runs["dnn-plus"]["reused_from"] == "runs/plus/adi-plus/seed0" and runs["dnn-plus"]["model"] == "dnn-plus"
    assert runs["dnn-plus"]["metrics"] == runs["adi-plus"]["metrics"]
    assert not (out / "runs" / "plus" / "dnn-plus" / "seed0" / "model.safetensors").exists()
    alone = tmp_path / "alone"  # dnn-plus trained by itself: the same results
    assert main(["bench", "--data", "synthetic:tiny", "--domains", "d1", "--suite", "plus", "--methods",
                 "plus/dnn-plus", "--seeds", "1", "--out", str(alone), "--epochs", "1", "--batch-size", "256",
                 "--threads", "1", "--no-progress", *TINY]) == 0
    trained = json.loads((alone / "results.json").read_text())["runs"][0]
    assert trained["key"] == "dnn-plus" and trained["metrics"] == runs["dnn-plus"]["metrics"]
    # the requests differ (the name is recorded); the computations do not
    a, b = runs["adi-plus"]["request"], runs["dnn-plus"]["request"]
    assert request_hash(a) != request_hash(b) and computation_hash(a) == computation_hash(b)
    # on three domains they are different networks and both train; a per-domain preset with a
    # one-for-all preset's configs is another computation
    three = tmp_path / "three"
    assert main(["bench", "--data", "synthetic:tiny", "--suite", "plus", "--methods", "neural", "--seeds", "1",
                 "--out", str(three), "--epochs", "1", "--batch-size", "256", "--threads", "1", "--no-progress",
                 *TINY]) == 0
    log = capsys.readouterr().out
    assert "plus/adi-plus seed 0: trained" in log and "plus/dnn-plus seed 0: trained" in log
    assert load_source("synthetic:tiny").num_domains == 3
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(build_config("dnn", 3)).items()}
    dnn = {"model": "dnn", "model_config": cfg, "train_config": {}, "protocol": "full"}
    assert computation_hash(dnn) != computation_hash({**dnn, "model": "dnn-single"})
    assert computation_hash({**dnn, "model": "no-such-preset"}) != computation_hash({**dnn, "model": "other"})


def test_a_bench_with_a_higher_epoch_cap_trains_finished_runs_on(tmp_path, capsys):
    def bench(out, epochs, *extra):
        return main(["bench", "--data", "synthetic:tiny", "--suite", "plus", "--methods", "plus/dnn-plus",
                     "--seeds", "1", "--out", str(out), "--epochs", str(epochs), "--batch-size", "256",
                     "--threads", "1", "--no-progress", *extra, *TINY])

    def runs(out):
        return {r["key"]: r for r in json.loads((out / "results.json").read_text())["runs"]}

    assert bench(tmp_path / "whole", 3, "--patience", "0") == 0
    assert bench(tmp_path / "raised", 2, "--patience", "0") == 0
    capsys.readouterr()
    assert bench(tmp_path / "raised", 3, "--patience", "0") == 0
    assert "plus/dnn-plus seed 0: trained on past its 2-epoch cap to epoch 3 (cap 3)" in capsys.readouterr().out
    whole, raised = runs(tmp_path / "whole")["dnn-plus"], runs(tmp_path / "raised")["dnn-plus"]
    assert raised["metrics"] == whole["metrics"] and raised["hash"] == whole["hash"]
    assert raised["epochs_run"] == 3 and raised["epoch_cap_raised"] == {"from": 2, "to": 3, "trained": True}
    assert bench(tmp_path / "raised", 3, "--patience", "0") == 0  # and then it is done
    assert "seed 0: done before" in capsys.readouterr().out
    # a run that stopped early (its saved state says so) stands as it is for a higher cap
    assert bench(tmp_path / "early", 2, "--patience", "1") == 0
    early = tmp_path / "early" / "runs" / "plus" / "dnn-plus" / "seed0"
    last = early / "checkpoints" / "last.json"
    last.write_text(json.dumps({**json.loads(last.read_text()), "bad_epochs": 1}))
    before = runs(tmp_path / "early")["dnn-plus"]
    capsys.readouterr()
    assert bench(tmp_path / "early", 4, "--patience", "1") == 0
    assert "stopped early after 2 epochs, so it stands for a cap of 4" in capsys.readouterr().out
    after = runs(tmp_path / "early")["dnn-plus"]
    assert after["metrics"] == before["metrics"] and after["request"]["train_config"]["epochs"] == 4
    assert after["epoch_cap_raised"] == {"from": 2, "to": 4, "trained": False}
    assert json.loads((early / "config.json").read_text())["train_config"]["epochs"] == 2  # as it was trained
    # a record without its run (restored from a published bench) cannot train on
    import shutil
    run = tmp_path / "whole" / "runs" / "plus" / "dnn-plus" / "seed0"
    for p in run.iterdir():
        if p.name != "bench.json":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    bench(tmp_path / "whole", 4, "--patience", "0")
    out = capsys.readouterr().out
    assert "FAILED" in out and "not the run (a record restored from a published bench)" in out
    assert runs(tmp_path / "whole")["dnn-plus"]["metrics"] == whole["metrics"]  # the finished run is kept
    # under a schedule spread over the cap, even a run that stopped early is not the higher-cap run
    assert bench(tmp_path / "cosine", 2, "--patience", "1", "--lr-schedule", "cosine") == 0
    last = tmp_path / "cosine" / "runs" / "plus" / "dnn-plus" / "seed0" / "checkpoints" / "last.json"
    last.write_text(json.dumps({**json.loads(last.read_text()), "bad_epochs": 1}))
    capsys.readouterr()
    bench(tmp_path / "cosine", 4, "--patience", "1", "--lr-schedule", "cosine")
    out = capsys.readouterr().out
    assert "FAILED" in out and "cosine schedule" in out
    assert runs(tmp_path / "cosine")["dnn-plus"]["request"]["train_config"]["epochs"] == 2


def test_a_higher_epoch_cap_reaches_the_runs_that_reused_another(tmp_path, capsys):
    # on one domain dnn-plus reuses adi-plus's run; at a higher cap adi-plus trains on, and
    # dnn-plus reuses the longer run
    def bench(out, epochs):
        return main(["bench", "--data", "synthetic:tiny", "--domains", "d1", "--suite", "plus", "--methods",
                     "neural", "--seeds", "1", "--out", str(out), "--epochs", str(epochs), "--patience", "0",
                     "--batch-size", "256", "--threads", "1", "--no-progress", *TINY])

    assert bench(tmp_path / "b", 1) == 0
    capsys.readouterr()
    assert bench(tmp_path / "b", 2) == 0
    log = capsys.readouterr().out
    assert "plus/adi-plus seed 0: trained on past its 1-epoch cap to epoch 2 (cap 2)" in log
    assert "plus/dnn-plus seed 0: reused runs/plus/adi-plus/seed0" in log and "FAILED" not in log
    runs = {r["key"]: r for r in json.loads((tmp_path / "b" / "results.json").read_text())["runs"]}
    assert runs["dnn-plus"]["metrics"] == runs["adi-plus"]["metrics"]
    assert runs["dnn-plus"]["request"]["train_config"]["epochs"] == 2 and "epoch_cap_raised" not in runs["dnn-plus"]


def test_a_finished_run_is_the_run_whose_auto_settings_resolve_to_its_own(tmp_path, capsys):
    # synthetic:tiny has timestamps, so item_tower auto is the linear tower there
    def bench(*extra):
        return main(["bench", "--data", "synthetic:tiny", "--suite", "plus", "--methods", "plus/dnn-plus",
                     "--seeds", "1", "--out", str(tmp_path / "b"), "--batch-size", "256", "--patience", "0",
                     "--threads", "1", "--no-progress", *TINY, *extra])

    assert bench("--set", "item_tower=linear", "--epochs", "1") == 0
    first = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]
    capsys.readouterr()
    assert bench("--epochs", "1") == 0  # auto: the same network
    assert "seed 0: done before (the same network" in capsys.readouterr().out
    again = json.loads((tmp_path / "b" / "results.json").read_text())["runs"][0]
    assert again["metrics"] == first["metrics"] and again["request"]["model_config"]["item_tower"] == "auto"
    assert bench("--epochs", "2") == 0  # and a higher cap trains it on
    assert "trained on past its 1-epoch cap to epoch 2" in capsys.readouterr().out
    bench("--set", "item_tower=full", "--epochs", "2")  # the paper's tower is another network
    out = capsys.readouterr().out
    assert "FAILED" in out and "other settings (model_config.item_tower: 'auto' there, 'full' now)" in out


def test_a_reference_choice_is_made_again_when_its_grid_changes():
    from adirec.bench.runner import _grid_of
    # as earlier versions wrote it (the hold-out scores only), and as this one does
    assert _grid_of({"lam": 500, "holdout": {"100": 0.1, "500": 0.2}}) == ({100.0, 500.0}, {1.0})
    assert _grid_of({"lam": 500, "decay": 0.9, "holdout": {"500,0.9": 0.2, "500,1": 0.1}}) == ({500.0}, {0.9, 1.0})
    assert _grid_of({"lam": 5, "lambdas": [5, 50], "decays": [0.8]}) == ({5, 50}, {0.8})


def test_parameter_counts_round_into_the_next_unit():
    from adirec.bench.report import _count
    assert [_count(n) for n in (None, 999, 1000, 813_000, 999_600, 1_010_000, 121e6)] == \
        ["-", "999", "1K", "813K", "1M", "1.01M", "121M"]


def test_budget_column_names_the_preset_that_is_the_budget():
    from adirec.bench.report import markdown

    def row(label, model, dense, budget=None):
        return {"label": label, "model": model, "kind": "neural", "seeds": [0], "params": dense + 10,
                "params_dense": dense, "budget_dense": budget, "budget_of": "dnn-plus" if budget else None,
                "seconds": 1.0, "metrics": {"recall@50": {d: {"mean": 0.5} for d in ("a", "b", "mean")}}}
    meta = {"data_name": "tiny", "domains": ["a", "b"], "ks": [50], "protocol": "full", "split": "test",
            "main_metric": "recall@50"}
    summary = {"plus-ablation": {"adi-plus": row("ADI+", "adi-plus", 400),
                                 "dnn-plus": row("DNN+", "dnn-plus", 100),
                                 "adi-plus-small": row("ADI+ small", "adi-plus", 98, budget=100)}}
    md = markdown(meta, summary, [], [], [])
    lines = {line.split(" |")[0]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| +300.0% (not matched) |" in lines["| ADI+"]
    assert "| +0.0% (the budget) |" in lines["| DNN+"]
    assert "| -2.0% |" in lines["| ADI+ small"]
    assert "Budget: the dense parameters of DNN+ at this size (100)" in md


def test_time_left_is_estimated_per_kind_of_run():
    # One neural run of an hour and nine references left is not ten hours.
    timed = {"neural": [3600.0], "reference": [10.0, 30.0]}
    assert estimate_left(timed, ["neural"] + ["reference"] * 9) == f"~{(3600 + 9 * 20) / 60:.1f}min left"
    assert estimate_left({"neural": [3600.0]}, ["neural", "reference", "reference"]) == \
        "~60.0min left, 2 runs not yet timed"
    assert estimate_left({"neural": [60.0]}, ["reference"]) == "1 run not yet timed"
    assert estimate_left({}, ["reference"]) == ""  # nothing ran yet: every run may be done before
    assert estimate_left(timed, []) == ""


def test_history_train_valid_ranks_the_test_split_with_the_validation_positives(tmp_path):
    from adirec.bench.runner import Bench
    from adirec.data.sources.synthetic import load_synthetic
    from adirec.data.split import history_view
    from adirec.eval.protocols import SeenItems, evaluate
    from adirec.models.references import build_reference
    data = load_synthetic("tiny", domain_shares=(1.0,))
    methods = ("popularity", "ease-pooled-recency", "seq-linear")
    plain, _ = _references_bench(tmp_path / "train", data=data, methods=methods)
    longer, _ = _references_bench(tmp_path / "tv", data=data, methods=methods, history="train+valid")
    assert "history" not in plain["bench"] and longer["bench"]["history"] == "train+valid"
    view = history_view(data, "test", "train+valid")
    by_key = {r["key"]: r for r in longer["runs"]}
    assert set(by_key) == set(methods) and not longer["failed"]
    for key in methods:  # fitted on train, histories (and the removed items) from train + valid
        model = build_reference(key, **by_key[key]["config"]).fit(data)
        weights = [w.clone() for w in getattr(model, "weights", [])]
        model.use_histories(view)
        assert all(torch.equal(a, b) for a, b in zip(weights, getattr(model, "weights", []), strict=True))
        want = evaluate(model, view, split="test", protocol="full", ks=[10], seen=SeenItems(view))
        assert by_key[key]["metrics"] == want.metrics(data.domains), key
    plain_seq = {r["key"]: r for r in plain["runs"]}["seq-linear"]["metrics"]
    assert plain_seq != by_key["seq-linear"]["metrics"]  # the validation item changes the next-item ranking
    assert "training and validation positives removed" in (tmp_path / "tv" / "results.md").read_text()
    # another history is another bench: its directory is refused, and requests differ
    with pytest.raises(ValueError, match="holds a bench with history='train\\+valid', not 'train'"):
        _references_bench(tmp_path / "tv", data=data, methods=methods)
    cfg = BenchConfig(DataSpec(source="synthetic:tiny"), tmp_path / "x", ["references"], progress=False)
    task = Bench(cfg, data=data).plan()[0]
    assert "history" not in Bench(cfg, data=data)._request(task)  # earlier requests keep their hashes
    with pytest.raises(ValueError, match="history must be one of train, train\\+valid"):
        BenchConfig(DataSpec(source="synthetic:tiny"), tmp_path / "y", ["references"], history="valid")
