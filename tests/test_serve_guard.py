"""The serving layer's bad-input suite: inputs that crashed, stalled or fooled the server, the
API's access control, a user's own key, and export --overwrite. Each test names what it protects."""
from __future__ import annotations

import json
import os
import time
import tracemalloc

import numpy as np
import pytest

from serve_bundles import AUTH, TOKEN, tiny_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("guard") / "bundles" / "b")


@pytest.fixture(scope="module")
def rec(bundle):
    from adirec.serve.service import Recommender
    return Recommender.from_path(bundle[0])


def make_client(rec, **config):
    from fastapi.testclient import TestClient
    from adirec.serve.app import ServeConfig, create_app
    return TestClient(create_app(rec, ServeConfig(**config)), raise_server_exceptions=False)


@pytest.fixture
def client(rec):
    with make_client(rec) as c:
        yield c


# ------------------------------------------------------------ denial of service
def test_key_lookup_costs_the_key_not_the_vocabulary(rec):
    """A 100 kB key once made a fixed-width copy of the whole vocabulary at the key's width
    (200 users x 400 kB here; 24 GiB on a large bundle)."""
    huge = "u" * 100_000
    tracemalloc.start()
    try:
        ids = rec.bundle.users.encode([huge, rec.bundle.users.decode([1])[0]])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ids.tolist() == [0, 1]
    assert peak < 2_000_000, f"{peak} bytes allocated for one lookup"


@pytest.mark.parametrize("field", ["user_id", "history"])
def test_megabyte_keys_get_a_fast_422(client, field):
    huge = "x" * 1_000_000
    body = {"user_id": huge, "domain": "d1"} if field == "user_id" else \
        {"user_id": "new", "domain": "d1", "features": {"history": ["a", huge]}}
    start = time.perf_counter()
    r = client.post("/v1/recommend", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert time.perf_counter() - start < 2.0
    assert r.status_code in (413, 422), r.text  # over the 1 MiB body limit, or the key limit


@pytest.mark.parametrize("path, body", [
    ("/v1/recommend", {"user_id": "x" * 300_000, "domain": "d1"}),
    ("/v1/recommend", {"user_id": "new", "domain": "d1", "features": {"history": ["y" * 300_000]}}),
    ("/v1/recommend/batch", {"user_ids": ["a", "z" * 300_000], "domain": "d1"}),
    ("/v1/history", {"user_id": "x" * 300_000, "domain": "d1"}),
    ("/v1/recommend", {"user_id": "new", "domain": "d1", "filters": {"exclude_items": ["q" * 300_000]}}),
])
def test_overlong_keys_are_a_422_naming_the_limit(client, path, body):
    start = time.perf_counter()
    r = client.post(path, json=body)
    assert time.perf_counter() - start < 2.0
    assert r.status_code == 422 and "300000 characters long; keys are at most 256" in r.text, r.text[:300]


@pytest.mark.parametrize("value", [1e30, 1e308, -1e30, 100.5, [1e30]])
def test_out_of_range_dense_feature_is_a_422_not_an_empty_200(client, value):
    """user_domain_activity = 1e30 once gave all-zero scores or an empty list with 200."""
    r = client.post("/v1/recommend", json={"user_id": "new", "domain": "d1", "k": 5,
                                           "features": {"user_domain_activity": value}})
    assert r.status_code == 422, r.text
    assert "in [-100, 100]" in r.text and "user_domain_activity" in r.text


def test_in_range_dense_feature_ranks_k_items(client):
    r = client.post("/v1/recommend", json={"user_id": "new", "domain": "d1", "k": 5,
                                           "features": {"user_domain_activity": 100.0}})
    assert r.status_code == 200 and len(r.json()["items"]) == 5
    assert all(np.isfinite(r.json()["scores"]))


def test_non_finite_user_vector_is_never_ranked(rec, client, monkeypatch):
    """A vector of NaN searched by FAISS finds nothing: the answer was an empty list with 200."""
    import torch
    model = rec.bundle.model
    monkeypatch.setattr(model, "user_embedding", lambda feats, dom: torch.full((len(dom), 8), float("nan")))
    user = rec.bundle.users.decode([1])[0]
    one = rec.recommend(user, "d1", 5)
    assert one.source == "popular" and len(one.items) == 5 and "not finite" in one.notes[0]
    batch = rec.recommend_batch([user, "ghost"], "d1", 5)
    assert [r.source for r in batch] == ["popular", "popular"] and "not finite" in batch[0].notes[0]
    r = client.post("/v1/recommend", json={"user_id": "new", "domain": "d1", "features": {"gender": 1}})
    assert r.status_code == 422 and "non-finite vector" in r.text


def test_non_finite_scores_are_dropped_with_a_note(rec, monkeypatch):
    from adirec.serve.service import Recommender
    other = Recommender(rec.bundle)
    d = other.bundle.domains[0]
    real = d.index

    class Overflowing:  # an index whose first hit overflowed
        def search(self, q, k, params=None):
            s, i = real.search(q, k, params=params)
            s[:, 0] = np.inf
            return s, i
    monkeypatch.setattr(d, "index", Overflowing())
    r = other.recommend(other.bundle.users.decode([1])[0], "d1", 5, exclude_seen=False)
    assert len(r.items) == 4 and all(np.isfinite(r.scores)) and any("not finite" in n for n in r.notes)


@pytest.mark.parametrize("body", [
    b"[" * 200_000 + b"]" * 200_000,
    b'{"user_id": 1, "domain": "d1", "features": {"history": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
    b'{"user_id": 1, "domain": "d1", "features": {"gender": ' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"}}",
    b'{"user_id": 1, "domain": "d1", "features": ' + b"[" * 40 + b"]" * 40 + b"}",
])
def test_deeply_nested_json_is_a_422(client, body):
    r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "nested more than 32 levels" in r.text, r.text[:200]


def test_brackets_inside_strings_do_not_count_as_nesting(client):
    key = '[{"' * 80  # 240 characters: 80 levels if the brackets counted
    r = client.post("/v1/recommend", json={"user_id": key, "domain": "d1", "k": 2})
    assert r.status_code == 200 and r.json()["source"] == "popular"


@pytest.mark.parametrize("body, status", [
    (b'{"user_id": ' + b"9" * 5000 + b', "domain": "d1"}', 400),  # beyond the JSON parser's digits
    (json.dumps({"user_id": 10 ** 30, "domain": "d1"}).encode(), 422),
    (json.dumps({"user_id": 1, "domain": "d1", "k": 10 ** 30}).encode(), 422),
    (json.dumps({"user_id": {"a": 1}, "domain": "d1"}).encode(), 422),
    (json.dumps({"user_id": 1, "domain": ["d1"]}).encode(), 422),
    (json.dumps({"user_id": 1, "domain": "d1", "filters": {"attributes": {"category": "x"}}}).encode(), 422),
    (json.dumps({"user_ids": "abc", "domain": "d1"}).encode(), 422),
    (b"\xff\xfe\x00garbage", 422),
    (b'"just a string"', 422),
])
def test_wrong_types_and_huge_numbers_are_4xx(client, body, status):
    path = "/v1/recommend/batch" if b"user_ids" in body else "/v1/recommend"
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:300]


def test_huge_body_is_a_413_before_parsing(client):
    body = b'{"user_id": "' + b"x" * (2 << 20) + b'", "domain": "d1"}'
    r = client.post("/v1/recommend", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit is 1048576 bytes" in r.text


# -------------------------------------------------------------- access control
def test_admin_endpoint_needs_the_token(rec):
    with make_client(rec, enable_reload=True, api_token=TOKEN) as c:
        r = c.post("/v1/admin/reload")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "needs a token" in r.text
        r = c.post("/v1/admin/reload", headers={"Authorization": "Bearer wrong-token-000000000"})
        assert r.status_code == 401 and "wrong token" in r.text
        assert c.post("/v1/admin/reload", headers=AUTH).status_code == 200
        # other endpoints stay open without a token, but a wrong one is refused
        assert c.post("/v1/recommend", json={"user_id": 1, "domain": "d1"}).status_code == 200
        r = c.post("/v1/recommend", json={"user_id": 1, "domain": "d1"}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401


def test_require_token_makes_every_api_endpoint_need_it(rec):
    with make_client(rec, api_token=TOKEN, require_token=True) as c:
        for method, path, body in [("POST", "/v1/recommend", {"user_id": 1, "domain": "d1"}),
                                   ("POST", "/v1/recommend/batch", {"user_ids": [1], "domain": "d1"}),
                                   ("POST", "/v1/history", {"user_id": 1, "domain": "d1"}),
                                   ("GET", "/v1/metadata", None), ("GET", "/healthz", None), ("GET", "/metrics", None)]:
            assert c.request(method, path, json=body).status_code == 401, path
            assert c.request(method, path, json=body, headers=AUTH).status_code == 200, path
        for static in ("/", "/docs", "/openapi.json"):  # no data in them; the page asks for the token
            assert c.get(static).status_code == 200


def test_reload_and_token_settings_are_checked_at_start(tmp_path):
    from adirec.serve.app import ServeConfig, read_token
    with pytest.raises(ValueError, match="needs a token: set ADIREC_API_TOKEN or pass --token-file"):
        ServeConfig(enable_reload=True)
    with pytest.raises(ValueError, match="--require-token needs a token"):
        ServeConfig(require_token=True)
    with pytest.raises(ValueError, match="at least 16 printable"):
        ServeConfig(api_token="short")
    (tmp_path / "t").write_text(f"  {TOKEN}\n")
    assert read_token(tmp_path / "t", {}) == TOKEN
    assert read_token(None, {"ADIREC_API_TOKEN": TOKEN}) == TOKEN and read_token(None, {}) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_token(tmp_path / "empty", {})
    assert "test-token" not in repr(ServeConfig(api_token=TOKEN))


def test_reload_loads_only_bundles_under_the_root(bundle, rec, tmp_path):
    import shutil
    root = bundle[0].parent  # the default root: the directory holding the served bundle
    outside = tmp_path / "outside"
    shutil.copytree(bundle[0], outside)
    link = root / "link-out"
    if not link.is_symlink():
        os.symlink(outside, link)
    with make_client(rec, enable_reload=True, api_token=TOKEN) as c:
        def reload(path):
            return c.post("/v1/admin/reload", json={"bundle": path}, headers=AUTH)
        assert reload("b").status_code == 200  # relative to the root
        assert reload(str(bundle[0])).status_code == 200  # absolute, inside
        for escape, message in [(str(outside), "outside the reload root"), ("../outside", "contains '..'"),
                                (f"{root}/../{root.name}/b", "contains '..'"), ("link-out", "outside the reload root"),
                                ("/etc", "outside the reload root")]:
            r = reload(escape)
            assert r.status_code == 403 and message in r.text, (escape, r.text)
        assert reload("missing").status_code == 422  # inside, but not a bundle
    with make_client(rec, enable_reload=True, api_token=TOKEN, reload_root=tmp_path) as c:
        assert c.post("/v1/admin/reload", json={"bundle": "outside"}, headers=AUTH).status_code == 200


# -------------------------------------------------------------- a user's own key
@pytest.fixture(scope="module")
def scoped(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("scoped") / "b", scope="domain")


def test_domain_scoped_user_is_found_by_their_own_id(scoped, capsys):
    """XMRec users are stored as 'market:userId'; the user's own id fell back to popular items."""
    from adirec.cli import main
    from adirec.serve.service import Recommender
    path, _, data = scoped
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["user_key_scope"] == "domain"
    rec = Recommender.from_path(path)
    stored = data.user_keys[1]  # e.g. 'd2:0'
    domain, own = stored.split(":")
    by_own = rec.recommend(own, domain, 5)
    by_stored = rec.recommend(stored, domain, 5)
    assert by_own.user_known and by_own.source == "model" and by_own.user_key == stored
    assert by_own.items == by_stored.items
    assert not rec.recommend(own, next(d for d in data.domains if d != domain), 5).user_known  # another market's user
    assert [r.user_key for r in rec.recommend_batch([own, stored, "nobody"], domain, 3)] == [stored, stored, None]
    assert main(["recommend", str(path), "--domain", domain, "--user", own, "--k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == "model" and out["user_key"] == stored
    assert rec.metadata()["user_key_scope"] == "domain"


def test_global_keys_are_not_domain_qualified(bundle, rec):
    assert rec.bundle.user_key_scope == "global"
    assert not rec.recommend("d1:" + str(rec.bundle.users.decode([1])[0]), "d1", 3).user_known


# ---------------------------------------------------------------- bundle files
@pytest.mark.parametrize("what", ["run", "data", "file", "empty", "symlink"])
def test_export_overwrite_refuses_what_is_not_a_bundle(tmp_path, what):
    from adirec.serve.bundle import write_bundle
    from serve_bundles import tiny_data, tiny_model
    target = tmp_path / "target"
    if what == "run":
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / "summary.json").write_text("{}")
    elif what == "data":
        target.mkdir()
        (target / "train.parquet").write_bytes(b"PAR1")
    elif what == "file":
        target.write_text("notes")
    elif what == "empty":
        target.mkdir()
    else:
        (tmp_path / "elsewhere").mkdir()
        target.symlink_to(tmp_path / "elsewhere")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    data = tiny_data()
    with pytest.raises(FileExistsError, match="--overwrite replaces bundles only") as e:
        write_bundle(target, tiny_model(data), data, model_name="adi-se", overwrite=True)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing deleted, nothing left behind
    if what == "run":
        assert "looks like a training run" in str(e.value) and "summary.json" in str(e.value)


def test_export_overwrite_replaces_a_bundle(bundle, tmp_path):
    import shutil
    from adirec.serve.bundle import load_bundle, write_bundle
    target = tmp_path / "b"
    shutil.copytree(bundle[0], target)
    write_bundle(target, bundle[1], bundle[2], model_name="adi-se", overwrite=True)
    assert load_bundle(target).manifest["revision"] == 0


def test_version_1_bundle_is_migrated_and_a_newer_one_refused(bundle, tmp_path):
    import shutil
    from adirec.serve.bundle import BundleError, FORMAT_VERSION, load_bundle
    from adirec.serve.bundle import _sha256  # noqa: F401  (checksums stay valid: only the manifest changes)
    old = tmp_path / "v1"
    shutil.copytree(bundle[0], old)
    m = json.loads((old / "manifest.json").read_text())
    for key in ("user_key_scope", "model_items", "revision"):
        del m[key]
    m["format_version"] = 1
    m["data"] = "xmrec:/somewhere"
    (old / "manifest.json").write_text(json.dumps(m))
    b = load_bundle(old)
    assert b.manifest["format_version"] == FORMAT_VERSION and b.manifest["migrated_from"] == 1
    assert b.user_key_scope == "domain" and b.model_items == len(b.items)
    m["format_version"] = FORMAT_VERSION + 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="re-export the run with this adirec"):
        load_bundle(old)


def test_the_package_keeps_no_test_helpers():
    import importlib.util
    assert importlib.util.find_spec("adirec.serve.process") is None
    import server_process
    assert callable(server_process.start_server) and callable(server_process.stop_server)
