"""Tests of the synthetic multi-domain source (fast: tiny and small presets only)."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
import torch

from adirec.data.batches import FeatureStore
from adirec.data.dataset import HIST_ALL, HIST_DOMAIN
from adirec.data.sources.synthetic import (
    GENDERS, PRESETS, SPLIT_CODES, InteractionChunk, SyntheticConfig, SyntheticWorld, generate_chunks,
    leave_last_out, load_synthetic,
)


@pytest.fixture(scope="module")
def tiny():
    return load_synthetic("tiny", seed=0, history_len=10)


@pytest.fixture(scope="module")
def small_rows():
    """All raw rows of the ``small`` preset (every split), for statistics."""
    return PRESETS["small"], InteractionChunk.concat(list(generate_chunks(PRESETS["small"], 0)))


def _all_splits(data):
    return {c: np.concatenate([getattr(data.splits[s], c) for s in ("train", "valid", "test")])
            for c in ("user", "item", "domain", "timestamp")}


def _same(a, b) -> bool:
    if set(a.splits) != set(b.splits):
        return False
    for s in a.splits:
        for c in ("user", "item", "domain", "weight", "timestamp"):
            if not np.array_equal(getattr(a.splits[s], c), getattr(b.splits[s], c)):
                return False
    tables = ("user_table", "item_table", "user_domain_table", "item_domain_table")
    return (np.array_equal(a.user_keys, b.user_keys) and np.array_equal(a.item_keys, b.item_keys)
            and all(getattr(a, t).keys() == getattr(b, t).keys()
                    and all(np.array_equal(getattr(a, t)[k], getattr(b, t)[k]) for k in getattr(a, t))
                    for t in tables))


# ----------------------------------------------------------------------- sizes
def test_preset_sizes():
    expected = {"tiny": 3e3, "small": 5e4, "demo": 6e4, "default": 2e5, "large": 1e6, "xl": 1e7}
    for name, target in expected.items():
        cfg = PRESETS[name]
        assert 0.8 * target <= cfg.num_users * cfg.interactions_per_user <= 1.25 * target, name
    assert (PRESETS["default"].num_users, PRESETS["default"].num_items) == (5_000, 2_000)
    assert PRESETS["xl"].num_items == 1_000_000
    assert PRESETS["default"].domains == ["d1", "d2", "d3"]


def test_tiny_is_fast_and_sized():
    t = time.perf_counter()
    data = load_synthetic("tiny", seed=3)
    assert time.perf_counter() - t < 1.0
    n = sum(len(it) for it in data.splits.values())
    assert 2_000 <= n <= 4_500
    assert data.domains == ["d1", "d2", "d3"]


# ------------------------------------------------------------- reproducibility
def test_same_seed_identical_different_seed_differs(tiny):
    again = load_synthetic("tiny", seed=0, history_len=10)
    assert _same(tiny, again)
    other = load_synthetic("tiny", seed=1, history_len=10)
    assert not _same(tiny, other)


def test_chunks_concatenated_equal_in_memory_path(tiny):
    """Exact equality: load_synthetic builds from the very same blocks (same block_users)."""
    cfg = PRESETS["tiny"]
    chunks = list(generate_chunks(cfg, 0))
    assert len(chunks) == cfg.num_blocks >= 2
    for b, ch in enumerate(chunks):
        lo = b * cfg.block_users
        assert ch.block == b
        assert ch.user.min() >= lo and ch.user.max() < lo + cfg.block_users
    rows = InteractionChunk.concat(chunks)
    for s, code in SPLIT_CODES.items():
        m = rows.split == code
        it = tiny.splits[s]
        assert np.array_equal(tiny.user_keys[it.user].astype(np.int64), rows.user[m])
        known = it.item > 0  # items never seen in train are encoded as 0
        assert np.array_equal(tiny.item_keys[it.item[known]].astype(np.int64), rows.item[m][known])
        assert np.array_equal(it.domain, rows.domain[m])
        assert np.array_equal(it.timestamp, rows.timestamp[m])
    # the string preset name is accepted too
    again = InteractionChunk.concat(list(generate_chunks("tiny", 0)))
    assert all(np.array_equal(a, b) for a, b in zip(rows.columns().values(), again.columns().values()))


def test_other_block_size_is_statistically_consistent(small_rows):
    """Another ``block_users`` changes the random streams (not the rows' distribution)."""
    cfg, rows = small_rows
    other = InteractionChunk.concat(list(generate_chunks(
        dataclasses.replace(cfg, block_users=700), 0)))
    assert abs(len(other) / len(rows) - 1) < 0.05
    D = cfg.num_domains
    a = np.bincount(rows.domain, minlength=D) / len(rows)
    b = np.bincount(other.domain, minlength=D) / len(other)
    assert np.abs(a - b).max() < 0.02


# ---------------------------------------------------------- paper-like world
def test_traffic_shares(small_rows):
    cfg, rows = small_rows
    shares = np.bincount(rows.domain, minlength=cfg.num_domains) / len(rows)
    assert np.abs(shares - np.array(cfg.domain_shares)).max() < 0.02, shares


def test_custom_domains_and_shares():
    data = load_synthetic("tiny", seed=0, domain_shares=(0.5, 0.5), domain_names=("a", "b"),
                          num_users=400)
    assert data.domains == ["a", "b"]
    rows = _all_splits(data)
    share = np.bincount(rows["domain"], minlength=2) / len(rows["domain"])
    assert abs(share[0] - 0.5) < 0.06
    one = load_synthetic("tiny", seed=0, domain_shares=(1.0,))
    assert one.domains == ["d1"] and one.summary()["overlap"]["users_in_2plus_domains"] == 0


def test_multi_domain_users(small_rows):
    cfg, rows = small_rows
    ud = np.zeros((cfg.num_users, cfg.num_domains), dtype=bool)
    ud[rows.user, rows.domain] = True
    frac = (ud.sum(axis=1) >= 2).mean()
    assert abs(frac - cfg.multi_domain_user_frac) < 0.05, frac
    # the knob is exact at its ends (every user has >= min_interactions >= 2 rows)
    for target in (0.0, 1.0):
        data = load_synthetic("tiny", seed=0, multi_domain_user_frac=target)
        r = _all_splits(data)
        m = np.zeros((data.num_users + 1, data.num_domains), dtype=bool)
        m[r["user"], r["domain"]] = True
        assert (m[1:].sum(axis=1) >= 2).mean() == target


def test_items_in_two_or_more_domains(tiny, small_rows):
    ov = tiny.summary()["overlap"]  # training split of the smallest preset
    assert ov["items_in_2plus_domains"] > 0.5 * ov["items_total"], ov
    cfg, rows = small_rows
    act = np.zeros((cfg.num_items, cfg.num_domains), dtype=bool)
    act[rows.item, rows.domain] = True
    used = act.any(axis=1)
    assert (act.sum(axis=1) >= 2)[used].mean() > 0.7


# ---------------------------------------------------------------------- splits
def test_leave_last_out_by_time(tiny):
    tr, va, te = (tiny.splits[s] for s in ("train", "valid", "test"))
    U1 = tiny.num_users + 1
    n_valid = np.bincount(va.user, minlength=U1)
    n_test = np.bincount(te.user, minlength=U1)
    n_train = np.bincount(tr.user, minlength=U1)
    total = n_train + n_valid + n_test
    has = total >= 3
    assert np.all(n_valid[has] == 1) and np.all(n_test[has] == 1)
    assert np.all(n_valid[~has] == 0) and np.all(n_test[~has] == 0)
    last_train = np.full(U1, -1, dtype=np.int64)
    np.maximum.at(last_train, tr.user, tr.timestamp)
    t_valid = np.zeros(U1, np.int64)
    t_valid[va.user] = va.timestamp
    t_test = np.zeros(U1, np.int64)
    t_test[te.user] = te.timestamp
    assert np.all(last_train[va.user] < t_valid[va.user])
    assert np.all(t_valid[te.user] < t_test[te.user])
    # held-out rows keep their domain, which follows the traffic
    assert set(np.unique(te.domain)) == set(range(tiny.num_domains))


def test_leave_last_out_is_the_generators_split(small_rows):
    _, rows = small_rows
    assert np.array_equal(leave_last_out(rows.user, rows.timestamp), rows.split)
    shuffled = np.random.default_rng(0).permutation(len(rows))  # any row order: the rule reads time
    assert np.array_equal(leave_last_out(rows.user[shuffled], rows.timestamp[shuffled]), rows.split[shuffled])


def test_domains_keeps_those_domains_in_order_and_splits_again():
    cfg = dataclasses.replace(PRESETS["tiny"], item_domain_dense=True)
    full = InteractionChunk.concat(list(generate_chunks(cfg, 0)))
    data = load_synthetic(cfg, domains=["d3", "d1"], history_len=10)
    assert data.domains == ["d3", "d1"]
    kept = np.isin(full.domain, [2, 0])
    assert data.meta["rows"]["outside_domains"] == int((~kept).sum()) > 0
    got = _all_splits(data)
    new_domain = np.array([1, -1, 0])[full.domain[kept]]  # d1 -> 1, d3 -> 0
    known_items = data.item_keys[1:].astype(np.int64)  # held-out items never trained on are id 0
    want_item = np.where(np.isin(full.item[kept], known_items), full.item[kept], -1)
    want = sorted(zip(full.user[kept].tolist(), want_item.tolist(), new_domain.tolist(),
                      full.timestamp[kept].tolist()))
    got_item = np.where(got["item"] > 0, np.r_[-1, known_items][got["item"]], -1)
    assert sorted(zip(data.user_keys[got["user"]].astype(np.int64).tolist(), got_item.tolist(),
                      got["domain"].tolist(), got["timestamp"].tolist())) == want
    # split again on the kept rows: every user with >= 3 of them has its last as test, and a test
    # row after every valid and train row of its user
    U1 = data.num_users + 1
    total = np.bincount(got["user"], minlength=U1)
    te, va, tr = (data.splits[s] for s in ("test", "valid", "train"))
    assert np.array_equal(np.bincount(te.user, minlength=U1), (total >= 3).astype(np.int64))
    assert np.array_equal(np.bincount(va.user, minlength=U1), (total >= 3).astype(np.int64))
    latest = np.full(U1, -1, np.int64)
    np.maximum.at(latest, got["user"], got["timestamp"])
    assert np.array_equal(te.timestamp, latest[te.user])
    last_train = np.full(U1, -1, np.int64)
    np.maximum.at(last_train, tr.user, tr.timestamp)
    assert np.all(last_train[va.user] < va.timestamp)
    # the per-domain item features follow their domain: one affine map (the standardisation) of
    # the world's values in the kept domains' new order
    world_ctr = SyntheticWorld(cfg, 0).item_domain_dense()["item_domain_ctr"][..., 0]  # (3, items)
    table = data.item_domain_table["item_domain_ctr"][..., 0]  # (2, 1 + known items)
    x = np.concatenate([world_ctr[2, known_items], world_ctr[0, known_items]])
    y = np.concatenate([table[0, 1:], table[1, 1:]])
    slope, intercept = np.polyfit(x, y, 1)
    assert slope > 0 and np.allclose(y, slope * x + intercept, atol=1e-4)


def test_domains_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown domains \['x'\] \(--domains\); known domains: \['d1', 'd2', 'd3'\]"):
        load_synthetic("tiny", domains=["x"])
    with pytest.raises(ValueError, match="names a domain twice"):
        load_synthetic("tiny", domains=["d1", "d1"])
    with pytest.raises(ValueError, match="names no domain"):
        load_synthetic("tiny", domains=[])


def test_rows_sorted_distinct_and_increasing_in_time():
    for ch in generate_chunks(PRESETS["tiny"], 5):
        same_user = ch.user[1:] == ch.user[:-1]
        assert np.all(np.diff(ch.user) >= 0)
        assert np.all(np.diff(ch.timestamp)[same_user] > 0)
        pairs = ch.user * PRESETS["tiny"].num_items + ch.item
        assert len(np.unique(pairs)) == len(pairs)  # never the same item twice for a user
        assert ch.timestamp.min() >= PRESETS["tiny"].start_time


# -------------------------------------------------------------- schema, store
def test_schema_and_meta(tiny):
    kinds = {f.name: (f.side, f.kind, f.per_domain) for f in tiny.schema.fields}
    expect = {
        "age_bucket": ("user", "categorical", False), "gender": ("user", "categorical", False),
        "city_tier": ("user", "categorical", False), "purchase_power": ("user", "dense", False),
        "category": ("item", "categorical", False), "brand": ("item", "categorical", False),
        "price_bucket": ("item", "categorical", False),
        "item_domain_popularity": ("item", "dense", True),
        HIST_DOMAIN: ("user", "sequence", True), HIST_ALL: ("user", "sequence", False),
    }
    for name, k in expect.items():
        assert kinds[name] == k, name
    sizes = tiny.schema.vocab_sizes
    assert sizes["gender"] >= 3 and sizes["category"] > 5 and sizes["brand"] > sizes["category"]
    assert tiny.meta["preset"] == "tiny" and tiny.meta["seed"] == 0
    assert tiny.meta["config"]["num_users"] == PRESETS["tiny"].num_users
    assert tiny.meta["config"]["domain_names"] == ["d1", "d2", "d3"]


def test_feature_store_shapes(tiny):
    store = FeatureStore(tiny)
    tr = tiny.splits["train"]
    idx = np.arange(0, len(tr), max(1, len(tr) // 16))[:16]
    B = len(idx)
    uf = store.user_features(torch.from_numpy(tr.user[idx]), torch.from_numpy(tr.domain[idx]),
                             torch.from_numpy(tr.item[idx]))
    assert uf["user_id"].shape == (B,) and uf["user_id"].dtype == torch.long
    for name in ("age_bucket", "gender", "city_tier"):
        assert uf[name].shape == (B,) and uf[name].dtype == torch.long
        assert (uf[name] > 0).all()
    assert uf["purchase_power"].shape == (B, 1) and uf["purchase_power"].dtype == torch.float32
    assert uf[HIST_ALL].shape == (B, 10) and uf[HIST_DOMAIN].shape == (B, 10)
    assert not (uf[HIST_ALL] == torch.from_numpy(tr.item[idx])[:, None]).any()
    itf = store.item_features(torch.from_numpy(tr.item[idx]), torch.from_numpy(tr.domain[idx]))
    for name in ("item_id", "category", "brand", "price_bucket"):
        assert itf[name].shape == (B,) and (itf[name] > 0).all()
    assert itf["item_domain_popularity"].shape == (B, 1)
    allf = store.item_features(np.arange(1, tiny.num_items + 1), 1)
    assert allf["category"].shape == (tiny.num_items,)


# ------------------------------------------------------------------ signal
def _mrr(data, world, scorer):
    """MRR of the test item among the domain's corpus, training positives removed."""
    te, tr = data.splits["test"], data.splits["train"]
    ok = te.item > 0
    users, items, doms = te.user[ok], te.item[ok], te.domain[ok]
    I1 = data.num_items + 1
    row = np.full(data.num_users + 1, -1)
    row[users] = np.arange(len(users))
    seen = np.zeros((len(users), I1), dtype=bool)
    m = row[tr.user] >= 0
    seen[row[tr.user[m]], tr.item[m]] = True
    corpus = np.zeros((data.num_domains, I1), dtype=bool)
    for d in range(data.num_domains):
        corpus[d, data.corpus[d]] = True
    s = np.where(corpus[doms] & ~seen, scorer(users, doms), -np.inf)
    rank = (s > s[np.arange(len(users)), items][:, None]).sum(axis=1)
    return float(np.mean(1.0 / (rank + 1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_signal_beats_popularity(seed):
    data = load_synthetic("tiny", seed=seed)
    world = SyntheticWorld(PRESETS["tiny"], seed)
    tr = data.splits["train"]
    I1 = data.num_items + 1
    pop = np.zeros((data.num_domains, I1))
    np.add.at(pop, (tr.domain, tr.item), 1.0)
    raw_items = data.item_keys[1:].astype(np.int64)

    def oracle(aware):
        def score(users, doms):
            lg = world.oracle_logits(data.user_keys[users].astype(np.int64), doms, domain_aware=aware)
            out = np.full((len(users), I1), -np.inf)
            out[:, 1:] = lg[:, raw_items]
            return out
        return score

    mrr_pop = _mrr(data, world, lambda users, doms: pop[doms] + 1e-3 * pop.sum(axis=0))
    mrr_oracle = _mrr(data, world, oracle(True))
    mrr_shared = _mrr(data, world, oracle(False))
    assert mrr_oracle > 1.3 * mrr_pop, (mrr_oracle, mrr_pop)
    # the domain-specific part of the truth matters
    assert mrr_oracle > 1.2 * mrr_shared, (mrr_oracle, mrr_shared)


def test_features_carry_signal():
    world = SyntheticWorld(PRESETS["small"], 0)

    def r2(x, groups):
        n = groups.max() + 1
        mean = np.zeros((n, x.shape[1]))
        np.add.at(mean, groups, x)
        mean /= np.maximum(np.bincount(groups, minlength=n), 1)[:, None]
        return 1 - ((x - mean[groups]) ** 2).sum() / ((x - x.mean(axis=0)) ** 2).sum()

    vec = world.item_vec.astype(np.float64)
    assert r2(vec, world.item_category) > 0.5
    assert r2(vec, world.item_brand) > r2(vec, world.item_category)
    ub = world.user_block(0)
    profile = (ub.age * len(GENDERS) + ub.gender) * 5 + ub.city
    real = r2(ub.shared.astype(np.float64), profile)
    null = r2(ub.shared.astype(np.float64), np.random.default_rng(0).permutation(profile))
    assert real > 2 * null
    # purchase power goes with price
    rows = world.interactions(0)
    local = rows.user - ub.keys[0]
    mean_price = np.bincount(local, world.price_z[rows.item]) / np.maximum(np.bincount(local), 1)
    assert np.corrcoef(ub.purchase_power, mean_price)[0, 1] > 0.2


def test_item_domain_dense_features():
    cfg = PRESETS["tiny"]
    world = SyntheticWorld(cfg, 0)
    dense = world.item_domain_dense()
    assert set(dense) == {"item_domain_ctr", "item_domain_price"}
    for v in dense.values():
        assert v.shape == (cfg.num_domains, cfg.num_items, 1) and np.all(np.isfinite(v))
    ctr = dense["item_domain_ctr"][..., 0]
    assert np.all(ctr[~world.available] == 0) and np.all((ctr[world.available] > 0) & (ctr[world.available] < 1))
    try:  # build_dataset may not support raw item-domain tables yet
        data = load_synthetic("tiny", item_domain_dense=True)
    except NotImplementedError:
        return
    names = {f.name for f in data.schema.fields if f.per_domain and f.side == "item"}
    assert {"item_domain_ctr", "item_domain_price"} <= names


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("name, value", [
    ("num_users", 0), ("num_users", 2.5), ("num_items", 1), ("interactions_per_user", 1.0),
    ("min_interactions", 0), ("activity_dispersion", 0.0), ("domain_shares", (0.5, 0.6)),
    ("domain_shares", (1.2, -0.2)), ("domain_shares", ()), ("domain_names", ("a", "b")),
    ("multi_domain_user_frac", 1.5), ("secondary_domain_weight", -0.1), ("item_domain_prob", 2.0),
    ("num_brands", 3), ("latent_dim", 0), ("temperature", 0.0), ("favourite_categories", 99),
    ("popularity_sigma", -1.0), ("domain_shift", float("nan")), ("candidate_pool", 1),
    ("block_users", 0), ("num_price_buckets", 0), ("item_domain_dense", "yes"),
])
def test_invalid_config_raises_naming_parameter(name, value):
    with pytest.raises(ValueError, match=name):
        load_synthetic("tiny", **{name: value})


def test_invalid_calls():
    with pytest.raises(ValueError, match="preset"):
        load_synthetic("nope")
    with pytest.raises(ValueError, match="no_such_field"):
        load_synthetic("tiny", no_such_field=1)
    with pytest.raises(ValueError, match="seed"):
        load_synthetic("tiny", seed=-1)
    with pytest.raises(ValueError, match="num_items"):
        SyntheticConfig(num_items=2, domain_shares=(0.25, 0.25, 0.5))
    with pytest.raises(ValueError, match="history_len"):
        load_synthetic("tiny", history_len=0)


# ------------------------------------------------------------ domain-specific interest
def test_domain_interest_permutes_each_users_favourite_categories():
    # no noise and no other domain effect: a user's interest in domain d is exactly the mean of
    # the vectors of the favourite categories as d's permutation maps them
    cfg = SyntheticConfig(num_users=40, num_items=60, interactions_per_user=5.0, num_categories=5, num_brands=5,
                          latent_dim=6, favourite_categories=2, user_noise=0.0, domain_transform=0.0,
                          domain_shift=0.0, user_domain_shift=0.0, domain_interest=1.0, block_users=64)
    world = SyntheticWorld(cfg, seed=1)
    perm = world.category_perm
    assert perm.shape == (3, 5) and np.array_equal(perm[0], np.arange(5))
    assert all(sorted(p) == list(range(5)) for p in perm) and not np.array_equal(perm[1], perm[2])
    ub = world.user_block(0)
    pairs = [(a, b) for a in range(5) for b in range(a + 1, 5)]
    for u in range(len(ub.keys)):
        fav = next(p for p in pairs if np.allclose(world.cat_vec[list(p)].mean(0), ub.shared[u], atol=1e-5))
        for d in range(3):
            np.testing.assert_allclose(ub.interest[u, d], world.cat_vec[perm[d, list(fav)]].mean(0), atol=1e-5)
    # half-way: the mean of the shared and the permuted interest; 0: the same interest everywhere
    half = SyntheticWorld(dataclasses.replace(cfg, domain_interest=0.5), seed=1).user_block(0)
    np.testing.assert_allclose(half.interest, 0.5 * ub.shared[:, None, :] + 0.5 * ub.interest, atol=1e-5)
    none = SyntheticWorld(dataclasses.replace(cfg, domain_interest=0.0), seed=1).user_block(0)
    np.testing.assert_allclose(none.interest, np.broadcast_to(ub.shared[:, None, :], ub.interest.shape), atol=1e-6)
    with pytest.raises(ValueError, match="domain_interest"):
        dataclasses.replace(cfg, domain_interest=1.5)


def test_demo_world_needs_the_domain_to_rank():
    """In the demo preset the planted truth of a domain ranks that domain's held-out items far
    better than the user's domain-independent taste does (what a domain-blind model can learn at
    best) outside the first domain, and the items are shared by the domains."""
    cfg = PRESETS["demo"]
    world = SyntheticWorld(cfg, seed=0)
    assert world.available.mean() > 0.85 and cfg.domain_interest == 1.0
    rows = world.interactions(0)
    test = np.flatnonzero(rows.split == SPLIT_CODES["test"])
    seen = {}
    for u, i in zip(rows.user[rows.split == 0], rows.item[rows.split == 0]):
        seen.setdefault(int(u), []).append(int(i))
    recall = {}
    for aware in (True, False):
        hits = []
        for d in (1, 2):
            q = test[rows.domain[test] == d]
            logits = world.oracle_logits(rows.user[q], d, domain_aware=aware)
            for j, u in enumerate(rows.user[q]):
                logits[j, seen.get(int(u), [])] = -np.inf
            top = np.argpartition(-logits, 50, axis=1)[:, :50]
            hits += list((top == rows.item[q][:, None]).any(axis=1))
        recall[aware] = float(np.mean(hits))
    assert recall[True] > recall[False] + 0.15, recall


def test_domains_through_load_source_and_convert(tmp_path):
    from adirec.data.convert import convert
    from adirec.data.parquet import load_parquet
    from adirec.data.sources import load_source
    direct = load_synthetic("tiny", domains=["d2", "d1"], history_len=10)
    assert _same(load_source("synthetic:tiny", domains=["d2", "d1"], history_len=10), direct)
    layout = convert("synthetic:tiny", tmp_path / "layout", domains=["d2", "d1"], history_len=10)
    back = load_parquet(layout)
    assert back.domains == ["d2", "d1"] and _same(back, direct)
