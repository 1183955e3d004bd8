"""Serving features: request-time filters, the history endpoint, ``index add``, Prometheus
metrics and the start-up lines of ``adirec serve``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from serve_bundles import AUTH, TOKEN, tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("features") / "b")


@pytest.fixture(scope="module")
def rec(bundle):
    from adirec.serve.service import Recommender
    return Recommender.from_path(bundle[0])


def exact_ranking(rec, user, domain: str, keep) -> list:
    """Item keys of ``domain`` by the user's exact inner product, unseen and passing ``keep(id)``."""
    d = rec.bundle.domain_names.index(domain)
    dom = rec.bundle.domains[d]
    uid = int(rec.resolve_users([user], domain)[0])
    q = rec._embed(rec._stored_features(np.array([uid]), dom), dom)[0]
    scores = dom.embeddings @ q
    seen = set(rec.bundle.seen(uid).tolist())
    order = np.argsort(-scores, kind="stable")
    return [rec.bundle.items.decode([dom.item_ids[r]])[0] for r in order
            if dom.item_ids[r] not in seen and keep(int(dom.item_ids[r]))]


# ------------------------------------------------------------------------ filters
def test_filters_apply_before_the_cut_so_k_items_come_back(rec):
    user = rec.bundle.users.decode([3])[0]
    category = rec.bundle.data.item_table["category"]
    plain = exact_ranking(rec, user, "d1", lambda i: True)
    excluded = plain[:4]
    wanted_category = int(category[rec.bundle.items.get(plain[5])])
    allowed = plain[2:40]
    r = rec.recommend(user, "d1", 6, filters={"exclude_items": excluded, "allow_items": allowed,
                                              "attributes": {"category": [wanted_category, 0]}})
    ex_ids = {rec.bundle.items.get(x) for x in excluded}
    al_ids = {rec.bundle.items.get(x) for x in allowed}
    want = exact_ranking(rec, user, "d1", lambda i: i not in ex_ids and i in al_ids and category[i] in (wanted_category, 0))
    assert r.items == want[:6] and len(r.items) == min(6, len(want))
    np.testing.assert_array_less(np.diff(r.scores), 1e-6)  # best first


def test_attribute_filter_alone_keeps_k_items(rec):
    user = rec.bundle.users.decode([5])[0]
    category = rec.bundle.data.item_table["category"]
    common = int(np.bincount(category[rec.bundle.domains[0].item_ids]).argmax())
    r = rec.recommend(user, "d1", 10, filters={"attributes": {"category": common}})
    want = exact_ranking(rec, user, "d1", lambda i: category[i] == common)
    assert len(want) >= 10 and r.items == want[:10]


def test_filters_through_the_index_when_many_items_pass(rec, monkeypatch):
    """Above BRUTE_FORCE_MAX allowed rows the FAISS index searches with a selector."""
    import adirec.serve.service as service
    monkeypatch.setattr(service, "BRUTE_FORCE_MAX", 1)
    user = rec.bundle.users.decode([5])[0]
    category = rec.bundle.data.item_table["category"]
    r = rec.recommend(user, "d1", 10, filters={"attributes": {"category": [3, 4]}})
    assert r.items == exact_ranking(rec, user, "d1", lambda i: category[i] in (3, 4))[:10]


def test_filters_in_batch_popular_and_http(rec):
    from fastapi.testclient import TestClient
    from adirec.serve.app import create_app
    users = rec.bundle.users.decode([1, 2])
    filters = {"attributes": {"category": [1, 2]}, "exclude_items": ["no-such-item"]}
    batch = rec.recommend_batch(users + ["ghost"], "d2", 4, filters=filters, include_features=True)
    for r in batch:
        assert len(r.items) == 4 and all(f["category"] in (1, 2) for f in r.item_features)
    assert batch[2].source == "popular" and "no-such-item" in " ".join(batch[0].notes)
    with TestClient(create_app(rec)) as c:
        one = c.post("/v1/recommend", json={"user_id": users[0], "domain": "d2", "k": 4, "filters": filters}).json()
        assert one["items"] == batch[0].items
        many = c.post("/v1/recommend/batch", json={"user_ids": users, "domain": "d2", "k": 4, "filters": filters}).json()
        assert [x["items"] for x in many["results"]] == [r.items for r in batch[:2]]
        bad = c.post("/v1/recommend", json={"user_id": 1, "domain": "d2", "filters": {"attributes": {"gender": 1}}})
        assert bad.status_code == 422 and "not a filterable item field" in bad.text


def test_recommend_cli_filters(bundle, rec, capsys):
    from adirec.cli import main
    user = str(rec.bundle.users.decode([4])[0])
    assert main(["recommend", str(bundle[0]), "--domain", "d1", "--user", user, "--k", "5",
                 "--where", "category=2,3", "--item-features"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["items"]) == 5 and all(f["category"] in (2, 3) for f in out["item_features"])
    first = out["items"][0]
    assert main(["recommend", str(bundle[0]), "--domain", "d1", "--user", user, "--k", "5",
                 "--where", "category=2,3", "--exclude-items", str(first)]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["items"] == out["items"][1:] + again["items"][4:] and first not in again["items"]
    assert main(["recommend", str(bundle[0]), "--domain", "d1", "--user", user, "--where", "category"]) == 2
    assert "expected FIELD=V1,V2" in capsys.readouterr().err


# ------------------------------------------------------------------------ history
def test_history_endpoint_lists_training_positives_newest_first(rec):
    from fastapi.testclient import TestClient
    from adirec.serve.app import create_app
    tr = rec.bundle.data.splits["train"]
    uid = 7
    rows = np.flatnonzero((tr.user == uid) & (tr.weight > 0))
    rows = rows[np.argsort(tr.timestamp[rows], kind="stable")][::-1][:3]  # newest first
    with TestClient(create_app(rec)) as c:
        h = c.post("/v1/history", json={"user_id": rec.bundle.users.decode([uid])[0], "domain": "d1", "limit": 3}).json()
        assert h["user_known"] and h["timestamps"] == tr.timestamp[rows].tolist()
        assert h["items"] == rec.bundle.items.decode(tr.item[rows])
        assert h["domains"] == [rec.bundle.domain_names[d] for d in tr.domain[rows]]
        assert len(h["item_features"]) == 3 and "category" in h["item_features"][0]
        ghost = c.post("/v1/history", json={"user_id": "ghost", "domain": "d1"}).json()
        assert not ghost["user_known"] and ghost["items"] == []


# ---------------------------------------------------------------------- index add
def new_items_table(bundle, n: int = 3):
    import pyarrow as pa
    keys = [10_000 + j for j in range(n)]  # synthetic item keys are integers
    return pa.table({"item": pa.array(keys, pa.int64()), "category": pa.array([3] * n, pa.int64()),
                     "brand": pa.array([1, 2, 3][:n], pa.int64()),
                     "item_domain_ctr": pa.array([0.5] * n, pa.float64())}), keys


def test_index_add_puts_new_items_in_the_domain(bundle, tmp_path):
    import shutil
    import pyarrow.parquet as pq
    from adirec.cli import main
    from adirec.serve.bundle import load_bundle
    from adirec.serve.service import Recommender
    path = tmp_path / "b"
    shutil.copytree(bundle[0], path)
    table, keys = new_items_table(bundle)
    pq.write_table(table, tmp_path / "new.parquet")
    before = load_bundle(path)
    assert main(["index", "add", str(path), "--domain", "d2", "--items", str(tmp_path / "new.parquet")]) == 0
    after = load_bundle(path)  # verifies the new checksums
    assert after.manifest["revision"] == 1 and after.manifest["num_items"] == len(before.items) + 3
    assert after.model_items == len(before.items) and after.domains[1].size == before.domains[1].size + 3
    assert [after.domains[d].size for d in (0, 2)] == [before.domains[d].size for d in (0, 2)]
    # the new vectors are the item tower's, with the unknown item id and the file's features
    model, data = bundle[1], bundle[2]
    feats = {"item_id": torch.zeros(3, dtype=torch.long), "category": torch.tensor([3, 3, 3]),
             "brand": torch.tensor([1, 2, 3]), "price_bucket": torch.zeros(3, dtype=torch.long),
             "item_domain_popularity": torch.zeros(3, 1), "item_domain_ctr": torch.full((3, 1), 0.5),
             "item_domain_price": torch.zeros(3, 1)}
    with torch.no_grad():
        want = model.item_embedding(feats, torch.ones(3, dtype=torch.long)).numpy()
    np.testing.assert_allclose(after.domains[1].embeddings[-3:], want, rtol=1e-5, atol=1e-6)
    # recommendations can return them; a user who "asks" for one gets it
    rec = Recommender(after)
    r = rec.recommend(after.users.decode([1])[0], "d2", 3, filters={"allow_items": keys})
    assert sorted(r.items) == keys and r.source == "model"
    hist = rec.recommend("new", "d2", 3, features={"history": [keys[0]]})
    assert keys[0] not in hist.items  # a new item in a history counts as seen
    assert rec.metadata()["revision"] == 1
    # adding the same keys again is refused, naming them
    assert main(["index", "add", str(path), "--domain", "d2", "--items", str(tmp_path / "new.parquet")]) == 2


def test_index_add_from_csv_and_reload_picks_it_up(bundle, tmp_path):
    import shutil
    from fastapi.testclient import TestClient
    from adirec.serve.app import ServeConfig, create_app
    from adirec.serve.items import add_items
    from adirec.serve.service import Recommender
    path = tmp_path / "b"
    shutil.copytree(bundle[0], path)
    rec = Recommender.from_path(path)
    with TestClient(create_app(rec, ServeConfig(enable_reload=True, api_token=TOKEN))) as c:
        (tmp_path / "new.csv").write_text("item,category,price_bucket\n20001,2,4\n20002,5,1\n")
        summary = add_items(path, "d3", tmp_path / "new.csv")
        assert summary["added"] == 2 and summary["revision"] == 1
        assert c.get("/v1/metadata").json()["domains"]["d3"]["items"] == rec.bundle.domains[2].size
        assert c.post("/v1/admin/reload", headers=AUTH).status_code == 200
        assert c.get("/v1/metadata").json()["domains"]["d3"]["items"] == rec.bundle.domains[2].size + 2
        r = c.post("/v1/recommend", json={"user_id": 1, "domain": "d3", "k": 2, "include_features": True,
                                          "filters": {"allow_items": [20001, 20002]}}).json()
        assert sorted(r["items"]) == [20001, 20002]
        assert {f["category"] for f in r["item_features"]} == {2, 5}


@pytest.mark.parametrize("content, message", [
    ("category\n1\n", "no column 'item'"),
    ("item,colour\n30001,1\n", "unknown column(s) ['colour']"),
    ("item,category\n30001,99\n", "row 0: 99 is not an encoded value"),
    ("item,item_domain_ctr\n30001,1e308\n", "finite number(s) in [-100, 100]"),
    ("item\n30001\n30001\n", "keys repeated in the file: [30001]"),
    ("item\nabc\n", "item keys are integers"),
])
def test_index_add_rejects_bad_files_with_the_problem(bundle, tmp_path, content, message):
    from adirec.serve.items import add_items
    (tmp_path / "bad.csv").write_text(content)
    before = sorted(p.name for p in bundle[0].parent.iterdir())
    with pytest.raises(ValueError) as e:
        add_items(bundle[0], "d1", tmp_path / "bad.csv")
    assert message in str(e.value)
    assert sorted(p.name for p in bundle[0].parent.iterdir()) == before  # nothing left behind


def test_index_add_refuses_known_items_and_supplied_vectors(bundle, tmp_path):
    from adirec.serve.bundle import write_bundle
    from adirec.serve.items import add_items
    known = bundle[2].item_keys[1]
    (tmp_path / "known.csv").write_text(f"item\n{known}\n")
    with pytest.raises(ValueError, match="already in the bundle"):
        add_items(bundle[0], "d1", tmp_path / "known.csv")
    data = bundle[2]
    vectors = [np.ones((len(c), 8), np.float32) for c in data.corpus]
    write_bundle(tmp_path / "s", bundle[1], data, model_name="adi-se", item_vectors=vectors)
    (tmp_path / "new.csv").write_text("item\n40001\n")
    with pytest.raises(ValueError, match="supplied at export"):
        add_items(tmp_path / "s", "d1", tmp_path / "new.csv")


# ------------------------------------------------------------------------ metrics
def test_metrics_count_requests_latency_and_errors(rec):
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families
    from adirec.serve.app import create_app
    with TestClient(create_app(rec), raise_server_exceptions=False) as c:
        for _ in range(3):
            c.post("/v1/recommend", json={"user_id": 1, "domain": "d1", "k": 2})
        c.post("/v1/recommend", json={"user_id": 1, "domain": "nope"})
        c.post("/v1/recommend", json={"user_id": 1, "domain": "d1", "k": 0})
        c.get("/no/such/path")
        text = c.get("/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}

    def value(name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0)
    assert value("adirec_requests_total", endpoint="/v1/recommend", method="POST", status="200") == 3
    assert value("adirec_requests_total", endpoint="/v1/recommend", method="POST", status="404") == 1
    assert value("adirec_request_errors_total", endpoint="/v1/recommend", status="422") == 1
    assert value("adirec_request_errors_total", endpoint="unmatched", status="404") == 1
    assert value("adirec_request_duration_seconds_count", endpoint="/v1/recommend", method="POST") == 5
    assert value("adirec_request_duration_seconds_bucket", endpoint="/v1/recommend", method="POST", le="+Inf") == 5


# ------------------------------------------------------------------- the process
def test_serve_prints_its_url_bundle_domains_and_docs(bundle):
    import httpx
    from server_process import start_server, stop_server
    server = start_server(bundle[0], "--require-token", env={"ADIREC_API_TOKEN": TOKEN})
    try:
        text = server.text()
        port = int(server.url.rsplit(":", 1)[1])
        assert port > 0 and f"listening on http://127.0.0.1:{port}" in text  # the real port of --port 0
        assert str(bundle[0].resolve()) in text and "d1 (" in text and "d3 (" in text
        assert f"http://127.0.0.1:{port}/docs" in text and "token required everywhere" in text
        assert httpx.get(f"{server.url}/healthz").status_code == 401
        assert httpx.get(f"{server.url}/healthz", headers=AUTH).json()["status"] == "ok"
    finally:
        stop_server(server)
