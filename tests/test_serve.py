"""Serving: bundle export/load, the in-process Recommender, the CLI and the HTTP app.

One tiny model (synthetic:tiny, 1 epoch, one step) is trained once for the module and exported;
every test reads that bundle or a copy of it.
"""
from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from adirec.data.batches import FeatureStore
from adirec.eval.protocols import SeenItems
from adirec.serve.bundle import (
    FORMAT_VERSION, BundleError, IndexConfig, export_bundle, load_bundle, write_bundle,
)
from adirec.serve.service import FROM_MODEL, FROM_POPULAR, FROM_REQUEST, Recommender, RequestError, UnknownDomainError
from server_process import start_server, stop_server
from adirec.train.loop import TwoTowerScorer

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TINY_MODEL = dict(embedding_dim=8, expert_hidden=(16,), expert_out=8, forward_hidden=(8,), output_dim=8)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(run dir, bundle dir, model, data) of a tiny trained run, exported."""
    from adirec.data.spec import DataSpec
    from adirec.runs import load_run, train_run
    from adirec.train.config import SelfTrainingConfig, TrainConfig
    import faiss
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # tiny indexes: OpenMP threads only add contention
    root = tmp_path_factory.mktemp("serve")
    spec = DataSpec(source="synthetic:tiny")
    data = spec.load()
    tcfg = TrainConfig(epochs=1, batch_size=8192, num_negatives=16, progress=False,
                       self_training=SelfTrainingConfig(enabled=False))
    train_run(spec, "adi-se", root / "run", model_overrides=TINY_MODEL, train_config=tcfg, data=data)
    bundle = export_bundle(root / "run", root / "bundle", data=data)
    model, data, _ = load_run(root / "run", data)
    yield root / "run", bundle, model, data
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def rec(served):
    return Recommender.from_path(served[1])


_OFFLINE: dict = {}


def offline_topk(model, data, users, d, k, exclude_seen=True):
    """The ranking of offline `full` evaluation: score the whole domain corpus, mask seen items."""
    key = (id(model), id(data))
    if key not in _OFFLINE:  # item vectors are cached by the scorer; build it once per model
        _OFFLINE[key] = (TwoTowerScorer(model, FeatureStore(data), data.num_items), SeenItems(data))
    scorer, seen = _OFFLINE[key]
    s = scorer.score(users, d, data.corpus[d]).clone()
    if exclude_seen:
        seen.mask(s, users, d)
    top = torch.topk(s, min(k, s.shape[1]), dim=1)
    return data.corpus[d][top.indices.numpy()], top.values.numpy()


def assert_same_ranking(got_items, got_scores, want_items, want_scores, k, tie=1e-5):
    """Served lists equal the offline ones, except that items whose offline scores are within
    ``tie`` of each other (FAISS and torch round differently) may swap places. ``want_*`` hold
    more than k columns so that a tie across the cut-off is visible. Returns the share of
    positions that matched exactly."""
    exact = 0
    for g, gs, w, ws in zip(got_items, got_scores, want_items, want_scores):
        assert len(g) == k
        np.testing.assert_allclose(gs, ws[:k], rtol=0, atol=tie)
        for r in range(k):
            if g[r] == w[r]:
                exact += 1
                continue
            group = {w[j] for j in range(len(w)) if abs(ws[j] - ws[r]) <= tie}
            assert g[r] in group, f"rank {r}: served {g[r]}, offline {w[r]} (score gap > {tie})"
        assert len(set(g)) == k
    return exact / (k * len(got_items))


# ------------------------------------------------------------------ correctness
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_served_topk_equals_offline_ranking(served, rec, exclude_seen):
    _, _, model, data = served
    users = np.arange(1, data.num_users + 1)
    k = 25
    for d, name in enumerate(data.domains):
        want_items, want_scores = offline_topk(model, data, users, d, k + 5, exclude_seen)
        want_keys = data.item_keys[want_items].tolist()
        got = rec.recommend_batch(data.user_keys[users].tolist(), name, k, exclude_seen)
        share = assert_same_ranking([r.items for r in got], [r.scores for r in got], want_keys, want_scores, k)
        assert share > 0.98  # near-ties are rare: almost every position is identical
        assert all(r.source == FROM_MODEL and r.user_known for r in got)
        for j in (0, 7, len(users) - 1):  # the single-user path ranks the same
            one = rec.recommend(data.user_keys[users[j]], name, k, exclude_seen)
            assert_same_ranking([one.items], [one.scores], want_keys[j:j + 1], want_scores[j:j + 1], k)


def test_exclude_seen_removes_exactly_the_training_positives(served, rec):
    _, _, _, data = served
    tr = data.splits["train"]
    user = int(np.bincount(tr.user).argmax())  # the most active user
    seen = set(data.item_keys[tr.item[(tr.user == user) & (tr.weight > 0)]].tolist())
    name = data.domains[0]
    n = len(data.corpus[0])
    everything = rec.recommend(data.user_keys[user], name, n, exclude_seen=False).items
    unseen = rec.recommend(data.user_keys[user], name, n, exclude_seen=True)
    assert unseen.items == [i for i in everything if i not in seen]
    assert len(unseen.items) < n and unseen.notes  # says it found fewer than k


def test_unknown_user_gets_popular_items_of_the_domain(served, rec):
    _, _, _, data = served
    tr = data.splits["train"]
    for d, name in enumerate(data.domains):
        corpus = data.corpus[d]
        counts = np.bincount(tr.item[(tr.domain == d) & (tr.weight > 0)], minlength=data.num_items + 1)[corpus]
        order = np.lexsort((corpus, -counts))
        r = rec.recommend("no-such-user", name, 10)
        assert r.source == FROM_POPULAR and not r.user_known and "unknown" in r.notes[0]
        assert r.items == data.item_keys[corpus[order[:10]]].tolist()
        assert r.scores == counts[order[:10]].astype(float).tolist()


def test_unknown_user_with_history_and_profile_is_scored_from_them(served, rec):
    _, _, model, data = served
    d, name = 1, data.domains[1]
    hist_ids = data.corpus[d][:3]
    history = data.item_keys[hist_ids].tolist() + ["not-an-item"]
    r = rec.recommend("new-user", name, 5, features={"history": history, "gender": 2, "purchase_power": 0.5})
    assert r.source == FROM_REQUEST and not r.user_known
    assert any("not-an-item" in n for n in r.notes)
    # the same by hand: the unknown user's features with the history and profile filled in
    feats = FeatureStore(data).user_features(np.array([0]), np.array([d]))
    L = feats["hist_all"].shape[1]
    row = torch.zeros(1, L, dtype=torch.long)
    row[0, L - 3:] = torch.as_tensor(hist_ids)
    feats["hist_all"], feats["hist_domain"] = row, row.clone()
    feats["gender"] = torch.tensor([2])
    feats["purchase_power"] = torch.tensor([[0.5]])
    with torch.no_grad():
        u = model.user_embedding(feats, torch.tensor([d]))
        v = TwoTowerScorer(model, FeatureStore(data), data.num_items).item_matrix(d)[torch.as_tensor(data.corpus[d])]
    s = (u @ v.T)[0]
    s[torch.as_tensor(np.isin(data.corpus[d], hist_ids))] = float("-inf")  # history counts as seen
    top = torch.topk(s, 10)
    assert_same_ranking([r.items], [r.scores], [data.item_keys[data.corpus[d][top.indices.numpy()]].tolist()],
                        [top.values.numpy()], 5)


@pytest.mark.parametrize("features, message", [
    ({"bogus": 1}, "unknown feature"),
    ({"gender": "f"}, "categorical"),
    ({"gender": 99}, "categorical"),
    ({"gender": True}, "categorical"),
    ({"purchase_power": float("nan")}, "finite"),
    ({"purchase_power": [1.0, 2.0]}, "dense"),
    ({"purchase_power": "high"}, "dense"),
    ({"history": "abc"}, "history"),
    ({"history": [1.5]}, "history"),
    ({"history": list(range(1001))}, "at most"),
])
def test_bad_request_features_are_rejected_with_a_message(rec, features, message):
    with pytest.raises(RequestError, match=message):
        rec.recommend("new-user", "d1", 5, features=features)


def test_bad_k_and_unknown_domain(rec):
    with pytest.raises(RequestError, match=r"k must be in \[1, "):
        rec.recommend(1, "d1", 0)
    with pytest.raises(RequestError, match="items"):
        rec.recommend(1, "d1", 10_000)
    with pytest.raises(RequestError, match="integer"):
        rec.recommend(1, "d1", 2.5)
    with pytest.raises(UnknownDomainError, match=r"known domains: \['d1', 'd2', 'd3'\]"):
        rec.recommend(1, "d9", 5)


def test_string_keys_round_trip(tmp_path, tiny_raw):
    from adirec.data.build import build_dataset
    from adirec.models.config import TwoTowerConfig
    from adirec.models.adi import TwoTowerModel
    data = build_dataset("hand", ["a", "b"], tiny_raw["train"], test=tiny_raw["test"],
                         users=tiny_raw["users"], items=tiny_raw["items"], history_len=4)
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, 2, TwoTowerConfig(**TINY_MODEL)).eval()
    write_bundle(tmp_path / "b", model, data, model_name="adi-se")
    rec = Recommender.from_path(tmp_path / "b")
    want, ws = offline_topk(model, data, np.array([1, 2, 3]), 0, 3, exclude_seen=False)
    got = rec.recommend_batch(data.user_keys[1:4].tolist(), "a", 2, exclude_seen=False)
    assert_same_ranking([r.items for r in got], [r.scores for r in got], data.item_keys[want].tolist(), ws, 2)
    assert all(isinstance(i, str) for r in got for i in r.items)
    assert rec.recommend("u1", "b", 1).user_known and not rec.recommend("u9", "b", 1).user_known


def test_key_index_matches_by_text_and_never_by_prefix():
    import pyarrow as pa
    from adirec.serve.bundle import KeyIndex
    ints = KeyIndex(pa.array([5, 7, 11]))
    np.testing.assert_array_equal(ints.encode([7, "7", "7\0", "07", 11, 5, 0, "x"]), [2, 2, 0, 0, 3, 1, 0, 0])
    assert ints.decode([3, 1]) == [11, 5] and ints.is_int
    text = KeyIndex(pa.array(["a", "b\u00e9", ""]))
    np.testing.assert_array_equal(text.encode(["a", "b\u00e9", "", "c", "a\0"]), [1, 2, 3, 0, 0])
    assert text.decode([2]) == ["b\u00e9"]


# ------------------------------------------------------------------ bundle files
def test_export_load_round_trip(served):
    run, bundle, model, data = served
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["format"] == "adirec-bundle" and manifest["format_version"] == FORMAT_VERSION
    assert manifest["model"] == "adi-se" and manifest["domains"] == data.domains
    assert {d: v["items"] for d, v in manifest["domain_info"].items()} == \
        {n: len(data.corpus[d]) for d, n in enumerate(data.domains)}
    assert all(v["index"]["kind"] == "flat" for v in manifest["domain_info"].values())
    assert manifest["created_at"].endswith("Z") and len(manifest["files"]) >= 13
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert not list(bundle.rglob("*.pkl")) and not list(bundle.rglob("*.pt"))
    b = load_bundle(bundle)
    ref = model.state_dict()
    for name, t in b.model.state_dict().items():
        assert torch.equal(t, ref[name]), name
    assert b.users.decode(np.arange(1, data.num_users + 1)) == data.user_keys[1:].tolist()
    assert b.items.decode(np.arange(1, data.num_items + 1)) == data.item_keys[1:].tolist()
    np.testing.assert_array_equal(b.users.encode(data.user_keys[1:].tolist() + ["zz"]),
                                  np.r_[np.arange(1, data.num_users + 1), 0])
    for name, t in data.user_table.items():
        np.testing.assert_array_equal(b.data.user_table[name], t)
    for name, t in data.user_domain_table.items():
        np.testing.assert_array_equal(b.data.user_domain_table[name], t)
    tr, btr = data.splits["train"], b.data.splits["train"]
    for col in ("user", "item", "domain", "weight", "timestamp"):
        np.testing.assert_array_equal(getattr(btr, col), getattr(tr, col))
    scorer = TwoTowerScorer(model, FeatureStore(data), data.num_items)
    for d, dom in enumerate(b.domains):
        np.testing.assert_array_equal(dom.item_ids, data.corpus[d])
        np.testing.assert_allclose(dom.embeddings, scorer.item_matrix(d)[torch.as_tensor(data.corpus[d])].numpy(),
                                   rtol=1e-6, atol=1e-7)
        assert dom.index.ntotal == len(data.corpus[d])
    # the rebuilt histories are the offline ones
    u, dd = np.arange(data.num_users + 1), np.zeros(data.num_users + 1, dtype=np.int64)
    for f, t in FeatureStore(data).user_features(u, dd).items():
        assert torch.equal(b.store.user_features(u, dd)[f], t), f


@pytest.mark.parametrize("damage, message", [
    ("flip model.safetensors", "model.safetensors: sha256 mismatch"),
    ("truncate domains/1/index.faiss", "domains/1/index.faiss: truncated"),
    ("remove vocab/items.parquet", "vocab/items.parquet: missing"),
    ("remove manifest.json", "no manifest.json"),
    ("garble manifest.json", "not valid JSON"),
    ("version manifest.json", "format_version 99 is not supported"),
])
def test_damaged_bundle_fails_loading_with_a_clear_message(served, tmp_path, damage, message):
    bundle = tmp_path / "b"
    shutil.copytree(served[1], bundle)
    action, rel = damage.split()
    p = bundle / rel
    if action == "flip":
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        p.write_bytes(bytes(raw))
    elif action == "truncate":
        p.write_bytes(p.read_bytes()[:-10])
    elif action == "remove":
        p.unlink()
    elif action == "garble":
        p.write_text("{not json")
    else:
        m = json.loads(p.read_text())
        m["format_version"] = 99
        p.write_text(json.dumps(m))
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle)


def test_failed_export_leaves_nothing(served, tmp_path):
    _, bundle, model, data = served
    bad = [np.zeros((len(c), 8), np.float32) for c in data.corpus]
    bad[2] = bad[2][:-1]  # the last domain fails after two domains were written
    with pytest.raises(ValueError, match="rows"):
        write_bundle(tmp_path / "out", model, data, model_name="adi-se", item_vectors=bad)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileExistsError, match="already exists"):
        export_bundle(served[0], bundle, data=data)


@pytest.mark.parametrize("ann", ["ivf", "hnsw"])
def test_approximate_index_above_the_threshold(served, tmp_path, ann):
    _, _, model, data = served
    cfg = IndexConfig(exact_max_items=120, ann=ann, ivf_nlist=4, ivf_nprobe=4, hnsw_ef_search=200)
    write_bundle(tmp_path / "b", model, data, model_name="adi-se", index_config=cfg)
    b = load_bundle(tmp_path / "b")
    sizes = [d.size for d in b.domains]
    kinds = [d.index_info["kind"] for d in b.domains]
    assert kinds == [ann if n > 120 else "flat" for n in sizes] and ann in kinds
    rec = Recommender(b)
    users = np.arange(1, data.num_users + 1)
    for d, name in enumerate(data.domains):  # every cell probed / a wide beam: still exact here
        want, ws = offline_topk(model, data, users, d, 15)
        got = rec.recommend_batch(data.user_keys[users].tolist(), name, 10)
        assert_same_ranking([r.items for r in got], [r.scores for r in got], data.item_keys[want].tolist(), ws, 10)


# ----------------------------------------------------------------------- CLI
def test_cli_export_recommend_and_batch(served, tmp_path, capsys):
    import pyarrow.parquet as pq
    from adirec.cli import main
    run, _, _, data = served
    assert main(["export", str(run), "--out", str(tmp_path / "b"), "--exact-max-items", "5000"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(tmp_path / "b"), "--domain", "d2", "--user", str(data.user_keys[3]), "--k", "4"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert len(one["items"]) == 4 and one["source"] == FROM_MODEL
    ids = tmp_path / "users.txt"
    ids.write_text(f"{data.user_keys[3]}\nstranger\n{data.user_keys[5]}\n")
    assert main(["recommend", str(tmp_path / "b"), "--domain", "d2", "--users", str(ids), "--k", "4",
                 "--out", str(tmp_path / "r.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [r["source"] for r in rows] == [FROM_MODEL, FROM_POPULAR, FROM_MODEL]
    assert rows[0]["items"] == one["items"]
    assert main(["recommend", str(tmp_path / "b"), "--domain", "d2", "--users", str(ids), "--k", "4",
                 "--out", str(tmp_path / "r.parquet")]) == 0
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [t["items"] for t in table] == [[str(i) for i in r["items"]] for r in rows]
    assert main(["recommend", str(tmp_path / "b"), "--domain", "nope", "--user", "1"]) == 2
    assert "known domains" in capsys.readouterr().err
    assert main(["recommend", str(tmp_path / "missing"), "--domain", "d1", "--user", "1"]) == 2
    assert "not a bundle directory" in capsys.readouterr().err


def test_cli_defaults_index_settings_and_loopback(capsys):
    from adirec.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    d = IndexConfig()
    for v in (d.exact_max_items, d.ann, d.ivf_nprobe, d.hnsw_m, d.hnsw_ef_construction, d.hnsw_ef_search):
        assert f"(default: {v})" in text
    args = build_parser().parse_args(["serve", "B"])
    assert args.host == "127.0.0.1" and not args.enable_reload  # loopback only, no reload, by default


# ---------------------------------------------------------------------- HTTP
@pytest.fixture(scope="module")
def second_bundle(served, tmp_path_factory):
    """The same data with other weights: a bundle with a different model_version."""
    _, _, model, data = served
    from adirec.models.adi import TwoTowerModel
    other = TwoTowerModel(data.schema, data.num_domains, model.config)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    return write_bundle(tmp_path_factory.mktemp("serve2") / "bundle", other.eval(), data, model_name="adi-se")


@pytest.fixture
def client(rec):
    from fastapi.testclient import TestClient
    from adirec.serve.app import ServeConfig, create_app
    app = create_app(rec, ServeConfig(max_k=50, max_batch=8, max_body_bytes=4096, enable_reload=True,
                                      api_token=TOKEN, reload_root=rec.bundle.path.parents[1]))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_http_healthz_and_metadata(client, rec, served):
    data = served[3]
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "model_version": rec.model_version,
                                                  "domains": data.domains}
    m = client.get("/v1/metadata").json()
    assert m["model"] == "adi-se" and m["model_version"] == rec.model_version and m["format_version"] == FORMAT_VERSION
    assert {d: v["items"] for d, v in m["domains"].items()} == {n: len(data.corpus[i]) for i, n in enumerate(data.domains)}
    assert m["max_k"] == 1000 and "history" in m["request_features"] and "gender" in m["request_features"]


def test_http_recommend_matches_in_process(client, rec, served):
    data = served[3]
    user = data.user_keys[4]
    body = client.post("/v1/recommend", json={"user_id": user, "domain": "d3", "k": 7}).json()
    direct = rec.recommend(user, "d3", 7)
    assert body["items"] == direct.items and body["scores"] == pytest.approx(direct.scores, abs=1e-6)
    assert body["domain"] == "d3" and body["model_version"] == rec.model_version
    assert body["user_known"] and body["source"] == FROM_MODEL and body["notes"] == []
    as_text = client.post("/v1/recommend", json={"user_id": str(user), "domain": "d3", "k": 7}).json()
    assert as_text["items"] == body["items"]
    body = client.post("/v1/recommend", json={"user_id": "ghost", "domain": "d1", "k": 3}).json()
    assert body["source"] == FROM_POPULAR and not body["user_known"] and "unknown" in body["notes"][0]
    hist = data.item_keys[data.corpus[0][:2]].tolist()
    body = client.post("/v1/recommend", json={"user_id": "ghost", "domain": "d1", "k": 3,
                                              "features": {"history": hist, "city_tier": 1}}).json()
    assert body["source"] == FROM_REQUEST and not set(hist) & set(body["items"])


def test_http_batch(client, rec, served):
    data = served[3]
    users = data.user_keys[[1, 2, 3]].tolist() + ["ghost"]
    r = client.post("/v1/recommend/batch", json={"user_ids": users, "domain": "d2", "k": 4})
    assert r.status_code == 200
    body = r.json()
    assert body["domain"] == "d2" and body["model_version"] == rec.model_version
    assert [x["user_id"] for x in body["results"]] == users
    assert [x["source"] for x in body["results"]] == [FROM_MODEL] * 3 + [FROM_POPULAR]
    for x in body["results"][:3]:
        assert x["items"] == rec.recommend(x["user_id"], "d2", 4).items


@pytest.mark.parametrize("path, payload, status, message", [
    ("/v1/recommend", {"user_id": 1, "domain": "d7", "k": 5}, 404, "known domains: ['d1', 'd2', 'd3']"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "k": 0}, 422, "greater than or equal to 1"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "k": 51}, 422, "at most 50 (server limit)"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "k": "5"}, 422, "valid integer"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "k": 2.5}, 422, "valid integer"),
    ("/v1/recommend", {"user_id": 1.5, "domain": "d1"}, 422, "user_id"),
    ("/v1/recommend", {"user_id": None, "domain": "d1"}, 422, "user_id"),
    ("/v1/recommend", {"domain": "d1"}, 422, "Field required"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "surprise": 1}, 422, "Extra inputs"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "exclude_seen": "yes"}, 422, "valid boolean"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "features": {"age_bucket": -1}}, 422, "age_bucket"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "features": {"nope": 1}}, 422, "unknown feature"),
    ("/v1/recommend", {"user_id": 1, "domain": "d1", "features": [1]}, 422, "valid dictionary"),
    ("/v1/recommend", [1, 2], 422, "valid dictionary"),
    ("/v1/recommend/batch", {"user_ids": [], "domain": "d1"}, 422, "at least 1"),
    ("/v1/recommend/batch", {"user_ids": list(range(9)), "domain": "d1", "k": 2}, 422, "at most 8 users"),
    ("/v1/recommend/batch", {"user_ids": [1], "domain": "zz"}, 404, "known domains"),
    ("/v1/recommend/batch", {"user_ids": [1], "domain": "d1", "k": -3}, 422, "greater than or equal"),
])
def test_http_bad_input_is_a_4xx_with_a_message(client, path, payload, status, message):
    r = client.post(path, json=payload)
    assert r.status_code == status, r.text
    assert message in r.text


def test_http_malformed_wrong_type_and_oversized_bodies(client):
    r = client.post("/v1/recommend", content=b'{"user_id": 1, "domain": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON decode error" in r.text
    r = client.post("/v1/recommend", content=b"user_id=1", headers={"content-type": "text/plain"})
    assert r.status_code == 422
    r = client.post("/v1/recommend", content=b'{"user_id":1,"domain":"d1","features":{"purchase_power":NaN}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and "finite" in r.text
    big = json.dumps({"user_id": 1, "domain": "d1", "features": {"history": ["x" * 10] * 500}}).encode()
    r = client.post("/v1/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 4096 bytes" in r.json()["detail"]
    r = client.post("/v1/recommend", content=iter([big[:3000], big[3000:]]),  # chunked, no length
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.get("/v1/recommend").status_code == 405
    assert client.get("/v1/nothing").status_code == 404


def test_http_reload_swaps_bundles_and_keeps_serving_on_failure(client, rec, second_bundle, served, tmp_path):
    v1 = rec.model_version
    r = client.post("/v1/admin/reload", json={"bundle": str(second_bundle)}, headers=AUTH)
    assert r.status_code == 200 and r.json()["previous_model_version"] == v1
    v2 = r.json()["model_version"]
    assert v2 != v1 and client.get("/healthz").json()["model_version"] == v2
    broken = tmp_path / "broken"
    shutil.copytree(served[1], broken)
    (broken / "model.safetensors").write_bytes(b"x")
    r = client.post("/v1/admin/reload", json={"bundle": str(broken)}, headers=AUTH)
    assert r.status_code == 422 and "truncated" in r.text and v2 in r.text
    assert client.get("/healthz").json()["model_version"] == v2
    assert client.post("/v1/admin/reload", json={"bundle": str(served[1])}, headers=AUTH).json()["model_version"] == v1
    assert client.post("/v1/admin/reload", headers=AUTH).status_code == 200  # no body: reload the same path


def test_http_defaults_reload_off_and_k_bounded_by_the_corpus(rec, served):
    from fastapi.testclient import TestClient
    from adirec.serve.app import create_app
    data = served[3]
    n = len(data.corpus[1])
    with TestClient(create_app(rec)) as c:
        r = c.post("/v1/admin/reload", json={})
        assert r.status_code == 403 and "--enable-reload" in r.text
        r = c.post("/v1/recommend", json={"user_id": 1, "domain": "d2", "k": n + 1})
        assert r.status_code == 422 and f"k must be in [1, {n}]" in r.text
        r = c.post("/v1/recommend", json={"user_id": "ghost", "domain": "d2"})  # default k
        assert r.status_code == 200 and len(r.json()["items"]) == min(100, n)


def _focused_openapi(app, rec, data, bundle) -> dict:
    """The app's OpenAPI schema with its free-form strings narrowed towards values this bundle
    knows (served domains, known users and items, request feature names), so that generated
    requests reach the ranking code instead of stopping at "unknown domain"."""
    import copy
    schema = copy.deepcopy(app.openapi())
    comp = schema["components"]["schemas"]
    users = {"enum": data.user_keys[1:9].tolist() + ["ghost", 10 ** 9]}
    items = {"enum": data.item_keys[1:9].tolist() + ["not-an-item"]}
    domain = {"enum": data.domains + ["elsewhere"]}
    k = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 60}, {"type": "null"}]}
    features = {"type": "object", "additionalProperties": False,
                "properties": {"history": {"type": "array", "items": items, "maxItems": 20},
                               **{name: {} for name in rec.request_fields}}}
    comp["RecommendRequest"]["properties"].update(
        user_id=users, domain=domain, k=k, features={"anyOf": [features, {"type": "null"}]})
    comp["BatchRequest"]["properties"].update(
        user_ids={"type": "array", "items": users, "minItems": 1, "maxItems": 10}, domain=domain, k=k)
    comp["HistoryRequest"]["properties"].update(user_id=users, domain=domain)
    comp["ReloadRequest"]["properties"]["bundle"] = {"anyOf": [{"enum": [str(bundle), "/nonexistent"]}, {"type": "null"}]}
    return schema


def test_openapi_fuzz_finds_no_server_error(rec, served):
    """Schemathesis (pinned 4.32.5) generates valid and invalid requests for every operation of
    the OpenAPI schema and sends them to the app in-process; none may get a 5xx."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from adirec.serve.app import ServeConfig, create_app
    app = create_app(rec, ServeConfig(max_k=50, max_batch=8, enable_reload=True, api_token=TOKEN))
    app.openapi_schema = _focused_openapi(app, rec, served[3], served[1])  # what /openapi.json serves
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen_status: dict[str, set[int]] = {}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {f"{o.method.upper()} {o.path}" for o in operations} == {
        "POST /v1/recommend", "POST /v1/recommend/batch", "POST /v1/history", "GET /healthz", "GET /v1/metadata",
        "GET /metrics", "POST /v1/admin/reload"}
    for op in operations:
        modes = [schemathesis.GenerationMode.POSITIVE]
        if op.method.upper() == "POST":  # a GET without parameters has no invalid form
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(headers=AUTH)
                seen_status.setdefault(op.path, set()).add(response.status_code)
                assert response.status_code < 500, (case.body, response.text)
            check()
    # the generated requests reached every outcome, not just the validation layer
    assert {200, 404, 422} <= seen_status["/v1/recommend"]
    assert {200, 422} <= seen_status["/v1/recommend/batch"] and 200 in seen_status["/v1/admin/reload"]


def test_real_uvicorn_process_serves_and_reloads_without_failed_requests(served, second_bundle):
    import httpx
    proc = start_server(served[1], "--enable-reload", "--reload-root", str(served[1].parents[1]),
                        env={"ADIREC_API_TOKEN": TOKEN})
    base = proc.url
    try:
        data = served[3]
        r = httpx.post(f"{base}/v1/recommend", json={"user_id": data.user_keys[2], "domain": "d1", "k": 5})
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        # requests keep flowing from 4 threads while the bundle is swapped back and forth
        statuses, versions, stop = [], set(), threading.Event()

        def load():
            with httpx.Client(base_url=base, timeout=30) as c:
                for i in range(400):  # bounded
                    if stop.is_set():
                        break
                    r = c.post("/v1/recommend", json={"user_id": data.user_keys[1 + i % 50], "domain": "d2", "k": 5})
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        versions.add(r.json()["model_version"])

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        swaps = []
        for target in (second_bundle, served[1], second_bundle):
            swaps.append(httpx.post(f"{base}/v1/admin/reload", json={"bundle": str(target)}, headers=AUTH,
                                    timeout=60).status_code)
        time.sleep(0.3)
        stop.set()
        for w in workers:
            w.join(timeout=60)
        assert swaps == [200, 200, 200]
        assert statuses and set(statuses) == {200}, f"{len(statuses)} requests, statuses {set(statuses)}"
        assert len(versions) == 2  # both bundles answered
        assert httpx.get(f"{base}/healthz").json()["model_version"] == load_bundle(second_bundle).model_version
    finally:
        stop_server(proc, timeout=20)
    assert proc.returncode is not None
