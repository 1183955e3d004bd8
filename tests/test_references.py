import json
import math

import numpy as np
import pytest
import torch

from adirec.data.build import RawCandidates, RawInteractions, build_dataset
from adirec.eval.protocols import SeenItems, evaluate
from adirec.models.references import EASE, ItemKNN, Popularity, build_reference, select_ease_lambda

from conftest import shared_data

# two domains, four users, five items; u1 is active in both domains
#   d0: u1 {a, b}, u2 {a, b, c}, u3 {b, c}
#   d1: u4 {a, d}, u1 {d}, u3 {d, e}
TRAIN = [("u1", "a", 0), ("u1", "b", 0), ("u2", "a", 0), ("u2", "b", 0), ("u2", "c", 0),
         ("u3", "b", 0), ("u3", "c", 0), ("u4", "a", 1), ("u4", "d", 1), ("u1", "d", 1),
         ("u3", "d", 1), ("u3", "e", 1), ("u2", "a", 0)]  # the last row repeats a pair: counted once


@pytest.fixture
def tiny():
    u, i, d = (np.array([r[k] for r in TRAIN], dtype=object if k < 2 else np.int64) for k in range(3))
    # candidates: u2 in d1 ranks {a, d, e, zz}; zz was never trained on (id 0)
    cands = {"valid": RawCandidates(np.array(["u2"], dtype=object), np.array([1]), [["e", "zz", "d", "a"]])}
    valid = RawInteractions(np.array(["u2"], dtype=object), np.array(["d"], dtype=object), np.array([1]))
    data = build_dataset("tiny", ["d0", "d1"], RawInteractions(u, i, d), valid, candidates=cands)
    ids = {k: n for n, k in enumerate(data.item_keys)}
    users = {k: n for n, k in enumerate(data.user_keys)}
    return data, ids, users


def _items(ids, names):
    return np.array([ids[n] for n in names])


def _ranking(scores: torch.Tensor, names: list[str]) -> list[str]:
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return [names[j] for j in order]


def test_popularity_counts_and_tie_order(tiny):
    data, ids, users = tiny
    names = ["a", "b", "c", "d", "e"]
    items = _items(ids, names)
    u = np.array([users["u1"], users["u3"]])
    pop = Popularity().fit(data)
    # distinct (user, item) pairs over all domains: a 3, b 3, c 2, d 3, e 1
    assert pop.raw_score(u, 0, items)[0].tolist() == [3, 3, 2, 3, 1]
    s = pop.score(u, 0, items)
    assert s.shape == (2, 5) and torch.equal(s[0], s[1])
    # a, b, d tie at 3: broken by the count in d0 (b 3, a 2, d 0)
    assert _ranking(s[0], names) == ["b", "a", "d", "c", "e"]
    # in d1 the same tie is broken by d1 counts (d 3, a 1, b 0)
    assert _ranking(pop.score(u, 1, items)[0], names) == ["d", "a", "b", "c", "e"]
    dpop = build_reference("domain-popularity").fit(data)
    assert dpop.raw_score(u, 0, items)[0].tolist() == [2, 3, 2, 0, 0]
    # a and c tie at 2 in d0, d and e at 0: the smaller raw id first
    assert _ranking(dpop.score(u, 0, items)[0], names) == ["b", "a", "c", "d", "e"]
    assert _ranking(dpop.score(u, 1, items)[0], names) == ["d", "a", "e", "b", "c"]
    # the unknown item ranks below every known one, even one with count 0
    s = dpop.score(u[:1], 1, np.array([0, ids["b"]]))
    assert s[0, 0] < s[0, 1]
    # the shortcut equals the generic tie-breaking of the base class
    from adirec.models.references import Reference
    for model in (pop, dpop):
        for d in (0, 1):
            all_items = np.arange(data.num_items + 1)
            assert torch.equal(torch.argsort(model.score(u, d, all_items), dim=1),
                               torch.argsort(Reference.score(model, u, d, all_items), dim=1))


def test_itemknn_cosine_by_hand(tiny):
    data, ids, users = tiny
    names = ["a", "b", "c", "d", "e"]
    items = _items(ids, names)
    knn = ItemKNN().fit(data)
    # d0 columns over users (u1, u2, u3): a = (1,1,0), b = (1,1,1), c = (0,1,1)
    ab, ac, bc = 2 / math.sqrt(6), 1 / 2, 2 / math.sqrt(6)
    got = knn.raw_score(np.array([users["u1"], users["u3"]]), 0, items)
    expected = torch.tensor([[ab, ab, ac + bc, 0, 0],  # u1 has a, b (an item is not its own neighbour)
                             [ab + ac, bc, bc, 0, 0]], dtype=torch.float32)  # u3 has b, c
    assert torch.allclose(got, expected, atol=1e-6)
    # d1 columns over users (u1, u3, u4): a = (0,0,1), d = (1,1,1), e = (0,1,0); u1's d1 history is {d}
    got = knn.raw_score(np.array([users["u1"]]), 1, items)
    assert torch.allclose(got, torch.tensor([[1 / math.sqrt(3), 0, 0, 0, 1 / math.sqrt(3)]]), atol=1e-6)
    # history="all": u1's d0 items that d1 knows (a) count as well
    got = ItemKNN(history="all").fit(data).raw_score(np.array([users["u1"]]), 1, items)
    assert torch.allclose(got, torch.tensor([[1 / math.sqrt(3), 0, 0, 1 / math.sqrt(3), 1 / math.sqrt(3)]]), atol=1e-6)
    # ties (a and e at 1/sqrt3, b and c at 0) are broken by d1 counts, then the raw id
    assert _ranking(knn.score(np.array([users["u1"]]), 1, items)[0], names) == ["a", "e", "d", "b", "c"]


def test_itemknn_pooled_uses_every_domain(tiny):
    data, ids, users = tiny
    knn = build_reference("itemknn-pooled").fit(data)
    assert knn.name == "itemknn-pooled" and knn.history == "all"
    # pooled columns over users (u1..u4): a = (1,1,0,1), d = (1,0,1,1); shared users u1, u4
    s = knn.raw_score(np.array([users["u2"]]), 1, _items(ids, ["d"]))  # u2 has a, b, c
    b = np.array([1, 1, 1, 0]); c = np.array([0, 1, 1, 0]); d = np.array([1, 0, 1, 1]); a = np.array([1, 1, 0, 1])
    cos = lambda x, y: x @ y / math.sqrt((x @ x) * (y @ y))
    assert s.item() == pytest.approx(cos(a, d) + cos(b, d) + cos(c, d), abs=1e-6)


def _ridge_without_self(x: np.ndarray, lam: float) -> np.ndarray:
    """EASE by definition: column j regressed on every other column with an L2 penalty."""
    n = x.shape[1]
    b = np.zeros((n, n))
    for j in range(n):
        rest = [k for k in range(n) if k != j]
        xr = x[:, rest]
        b[rest, j] = np.linalg.solve(xr.T @ xr + lam * np.eye(n - 1), xr.T @ x[:, j])
    return b


@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_ease_closed_form_equals_direct_solve(tiny, lam):
    data, ids, users = tiny
    ease = EASE(lam).fit(data)
    for dom, rows, cols in ((0, ["u1", "u2", "u3"], ["a", "b", "c"]), (1, ["u1", "u3", "u4"], ["a", "d", "e"])):
        tr = data.splits["train"]
        x = np.zeros((len(rows), len(cols)))
        for uu, ii, dd in zip(tr.user, tr.item, tr.domain):
            if dd == dom:
                x[rows.index(data.user_keys[uu]), cols.index(data.item_keys[ii])] = 1
        b = _ridge_without_self(x, lam)
        got = ease.raw_score(np.array([users[r] for r in rows]), dom, _items(ids, cols)).numpy()
        np.testing.assert_allclose(got, x @ b, atol=1e-5)
        # the matrix itself, in the order of its rows
        order = [cols.index(data.item_keys[k]) for k in ease.items[dom]]
        np.testing.assert_allclose(ease.weights[dom].numpy(), b[np.ix_(order, order)], atol=1e-5)
    assert ease.num_parameters() == 9 + 9


def test_references_evaluate_with_sampled_candidates(tiny):
    data, ids, users = tiny
    # u2 in d1 ranks e, zz (unknown), d, a; domain popularity in d1: d 3, a 1, e 1 -> d first
    res = evaluate(build_reference("domain-popularity").fit(data), data, split="valid", protocol="sampled", ks=[1, 2])
    m = res.metrics(data.domains)
    assert m["recall@1"]["d1"] == 1.0
    # item-kNN: u2 has no d1 history, every score is 0; the tie order still puts d first
    res = evaluate(ItemKNN().fit(data), data, split="valid", protocol="sampled", ks=[1])
    assert res.metrics(data.domains)["recall@1"]["d1"] == 1.0


def test_reference_errors(tiny):
    data, _, _ = tiny
    with pytest.raises(ValueError, match="unknown reference"):
        build_reference("svd")
    with pytest.raises(ValueError, match="lambda"):
        EASE(0.0)
    with pytest.raises(ValueError, match="scope"):
        ItemKNN(scope="global")
    with pytest.raises(ValueError, match="history"):
        ItemKNN(history="others")
    with pytest.raises(RuntimeError, match="fit"):
        Popularity().score(np.array([1]), 0, np.array([1]))
    with pytest.raises(ValueError, match="domain 2"):
        ItemKNN().fit(data).score(np.array([1]), 2, np.array([1]))


def test_select_ease_lambda_uses_holdout_from_train():
    from adirec.data.sources import load_source
    data = load_source("synthetic:tiny")
    best, found = select_ease_lambda(data, grid=(1.0, 10.0, 100.0))
    assert best in found and set(found) == {1.0, 10.0, 100.0}
    assert all(0.0 <= v <= 1.0 for v in found.values())
    with pytest.raises(ValueError, match="grid"):
        select_ease_lambda(data, grid=(0.0,))


# ------------------------------------------------------------------ real data (../shared/README.md)
XMREC = {  # sampled-100, valid, Recall@10 for s1, s2, s3
    "domain-popularity": ({}, [0.296, 0.714, 0.633]),
    "itemknn": ({}, [0.375, 0.797, 0.759]),
    "ease": ({"lam": 200.0}, [0.364, 0.806, 0.771]),
}
MOVIELENS = {  # age3, test, full ranking, mean Recall@20/50/100
    "popularity": ({}, [0.079, 0.141, 0.244]),
    "domain-popularity": ({}, [0.085, 0.154, 0.253]),
    "itemknn-pooled": ({}, [0.104, 0.197, 0.300]),
    "ease-pooled": ({"lam": 500.0}, [0.156, 0.284, 0.423]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(XMREC))
def test_xmrec_reference_numbers(name):
    from adirec.data.sources import load_source
    data = load_source(f"xmrec:{shared_data('xmrec')}")
    kwargs, expected = XMREC[name]
    r = evaluate(build_reference(name, **kwargs).fit(data), data, split="valid", protocol="sampled", ks=[10],
                 seen=SeenItems(data)).metrics(data.domains)["recall@10"]
    print(f"xmrec {name}: " + json.dumps({d: round(v, 4) for d, v in r.items()}))
    assert [r[d] for d in ("s1", "s2", "s3")] == pytest.approx(expected, abs=0.005), json.dumps(r)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MOVIELENS))
def test_movielens_reference_numbers(name):
    from adirec.data.sources import load_source
    data = load_source(f"recbole:{shared_data('movielens-1m')}/ml-1m", domain_by="user.age:25,35")
    kwargs, expected = MOVIELENS[name]
    m = evaluate(build_reference(name, **kwargs).fit(data), data, split="test", protocol="full", ks=[20, 50, 100],
                 seen=SeenItems(data)).metrics(data.domains)
    got = [m[f"recall@{k}"]["mean"] for k in (20, 50, 100)]
    print(f"movielens {name}: R@20/50/100 " + json.dumps([round(v, 4) for v in got]))
    assert got == pytest.approx(expected, abs=0.005), json.dumps(got)


# ------------------------------------------------------------------ recency and sequences
# two domains; u1's positives in time order: a@1 (d0), b@2 (d0), c@3 (d1), a@4 (d1), d@5 (d0)
# (a is seen twice: its latest time, 4, counts); u2: b@1, c@2, d@3 in d0; u3: a@1, c@2 in d1
TIMED = [("u1", "a", 0, 1), ("u1", "b", 0, 2), ("u1", "c", 1, 3), ("u1", "a", 1, 4), ("u1", "d", 0, 5),
         ("u2", "b", 0, 1), ("u2", "c", 0, 2), ("u2", "d", 0, 3), ("u3", "a", 1, 1), ("u3", "c", 1, 2)]


@pytest.fixture
def timed():
    cols = list(zip(*TIMED))
    train = RawInteractions(np.array(cols[0], dtype=object), np.array(cols[1], dtype=object),
                            np.array(cols[2]), timestamp=np.array(cols[3]))
    data = build_dataset("timed", ["d0", "d1"], train)
    ids = {k: n for n, k in enumerate(data.item_keys)}
    users = {k: n for n, k in enumerate(data.user_keys)}
    return data, ids, users


def _row(model, user, domain, ids, names):
    x = model._history_rows(np.array([user]), domain).to_dense()[0]
    m = model.matrix_of_domain[domain]
    return [float(x[model._col[m, ids[n]]]) if model._col[m, ids[n]] >= 0 else None for n in names]


def test_recency_weights_follow_the_latest_time(timed):
    data, ids, users = timed
    u1 = users["u1"]
    pooled = EASE(1.0, scope="pooled", decay=0.5).fit(data)
    # all domains, newest first: d@5 (rank 0), a@4 (1; its earlier time 1 does not count), c@3 (2), b@2 (3)
    assert _row(pooled, u1, 0, ids, ["d", "a", "c", "b"]) == [1.0, 0.5, 0.25, 0.125]
    per_domain = EASE(1.0, decay=0.5).fit(data)
    # u1 in d0: d@5, b@2, a@1; in d1: a@4, c@3 (each domain's own history is ranked)
    assert _row(per_domain, u1, 0, ids, ["d", "b", "a"]) == [1.0, 0.5, 0.25]
    assert _row(per_domain, u1, 1, ids, ["a", "c"]) == [1.0, 0.5]
    # decay 1 is the binary history of the unweighted model, bit for bit
    plain, weighted_as_one = EASE(1.0, scope="pooled").fit(data), EASE(1.0, scope="pooled", decay=1.0).fit(data)
    items = np.arange(1, data.num_items + 1)
    assert torch.equal(plain.raw_score(np.array([u1]), 0, items), weighted_as_one.raw_score(np.array([u1]), 0, items))
    # the matrix does not depend on the decay; the score is the weighted row times it
    assert torch.equal(pooled.weights[0], plain.weights[0])
    x = pooled._history_rows(np.array([u1]), 0).to_dense()
    expected = (x @ plain.weights[0])[0, torch.as_tensor(pooled._col[0, items])]
    assert torch.allclose(pooled.raw_score(np.array([u1]), 0, items)[0], expected)


def test_recency_weighting_changes_the_ranking(timed):
    data, ids, users = timed
    # u2 (b@1, c@2, d@3 in d0): with a steep decay the latest item, d, decides the scores alone
    names = ["a", "b", "c", "d"]
    flat = EASE(0.5, scope="pooled").fit(data)
    steep = EASE(0.5, scope="pooled", decay=0.001).fit(data)
    u, cols = np.array([users["u2"]]), torch.as_tensor(flat._col[0, _items(ids, names)])
    d_row = flat.weights[0][flat._col[0, ids["d"]]][cols]
    got = steep.raw_score(u, 0, _items(ids, names))[0]
    assert torch.allclose(got, d_row, atol=0.01 * float(d_row.abs().max()))
    assert not torch.allclose(flat.raw_score(u, 0, _items(ids, names))[0], d_row, atol=0.01 * float(d_row.abs().max()))


def test_recency_needs_timestamps(tiny):
    data, _, _ = tiny  # no times
    with pytest.raises(ValueError, match="needs timestamps"):
        build_reference("ease-pooled-recency").fit(data)
    with pytest.raises(ValueError, match="timestamps"):
        build_reference("seq-linear").fit(data)
    with pytest.raises(ValueError, match="needs timestamps"):
        EASE(1.0).fit(data).set_decay(0.9)
    with pytest.raises(ValueError, match="decay"):
        EASE(1.0, decay=0.0)
    with pytest.raises(ValueError, match="decay"):
        EASE(1.0, decay=1.5)
    # decay 1 is the plain model and needs no time
    assert EASE(1.0, decay=1.0).fit(data).num_parameters() == 18


def test_seq_linear_by_hand(timed):
    data, ids, users = timed
    lam, decay = 0.7, 0.5
    model = build_reference("seq-linear", lam=lam, decay=decay, window=2).fit(data)
    assert model.name == "seq-linear" and model.needs_time
    # sequences over all domains by (time, item): u1 a b c a d, u2 b c d, u3 a c; items a b c d
    names = ["a", "b", "c", "d"]
    col = {n: model._col[0, ids[n]] for n in names}
    xs, ys = [], []
    for seq in (["a", "b", "c", "a", "d"], ["b", "c", "d"], ["a", "c"]):
        for t in range(1, len(seq)):
            x = np.zeros(4)
            for lag in (1, 2):
                if t - lag >= 0:
                    x[col[seq[t - lag]]] += decay ** (lag - 1)
            y = np.zeros(4)
            y[col[seq[t]]] = 1
            xs.append(x)
            ys.append(y)
    x, y = np.array(xs), np.array(ys)
    b = np.linalg.solve(x.T @ x + lam * np.eye(4), x.T @ y)
    np.testing.assert_allclose(model.weights[0].numpy(), b, atol=1e-5)
    # u1 is scored from its 2 latest distinct items: d (1), a (decay); c and b are outside the window
    h = np.zeros(4)
    h[col["d"]], h[col["a"]] = 1.0, decay
    got = model.raw_score(np.array([users["u1"]]), 1, _items(ids, names))[0].numpy()
    np.testing.assert_allclose(got, (h @ b)[[col[n] for n in names]], atol=1e-5)
    # the grid builds the same models as direct fits
    from adirec.models.references import SequentialLinear
    for lam_, decay_, fitted in SequentialLinear(window=2).fit_grid(data, (0.7, 3.0), (0.5, 1.0)):
        direct = SequentialLinear(lam_, decay_, window=2).fit(data)
        assert torch.allclose(fitted.weights[0], direct.weights[0], atol=1e-6), (lam_, decay_)


def test_ease_grid_builds_the_same_models_as_direct_fits(timed):
    data, _, users = timed
    items, u = np.arange(1, data.num_items + 1), np.array([users["u1"], users["u2"]])
    for scope in ("domain", "pooled"):
        for lam, decay, fitted in EASE(scope=scope).fit_grid(data, (0.5, 4.0), (0.5, 1.0)):
            direct = EASE(lam, scope=scope, decay=decay).fit(data)
            for m in range(len(direct.weights)):
                assert torch.allclose(fitted.weights[m], direct.weights[m], atol=1e-6)
            assert torch.allclose(fitted.raw_score(u, 1, items), direct.raw_score(u, 1, items), atol=1e-6)


def test_select_settings_tries_every_pair_on_the_holdout():
    from adirec.data.sources import load_source
    from adirec.models.references import select_settings
    data = load_source("synthetic:tiny")
    lam, decay, found = select_settings(data, "ease-pooled-recency", (10.0, 100.0), (0.5, 1.0))
    assert set(found) == {(10.0, 0.5), (10.0, 1.0), (100.0, 0.5), (100.0, 1.0)}
    assert found[(lam, decay)] == max(found.values())
    # the decay-1 column is plain EASE's choice on the same hold-out
    plain_lam, plain = select_ease_lambda(data, grid=(10.0, 100.0), scope="pooled")
    assert plain == {k[0]: v for k, v in found.items() if k[1] == 1.0}
    # seq-linear: the decays at the middle lambda, then the lambdas at the best decay
    lam, decay, found = select_settings(data, "seq-linear", (1.0, 10.0, 100.0), (0.5, 0.9))
    assert {(10.0, 0.5), (10.0, 0.9)} <= set(found) and len(found) == 2 + 2
    assert {la for la, de in found if de == decay} == {1.0, 10.0, 100.0}
    assert found[(lam, decay)] == max(found.values()) and all(0.0 <= v <= 1.0 for v in found.values())
    with pytest.raises(ValueError, match="no lambda"):
        select_settings(data, "itemknn")


GENRE3 = {  # test, full ranking, Recall@50 per domain (Action, Comedy, Drama) and the mean
    "ease-pooled": ({"lam": 500.0}, [0.628, 0.488, 0.482, 0.532]),
    "ease-pooled-recency": ({"lam": 500.0, "decay": 0.95}, [0.658, 0.512, 0.493, 0.554]),
}


@pytest.mark.slow
def test_movielens_recency_reference_numbers():
    from adirec.data.sources import load_source
    data = load_source(f"recbole:{shared_data('movielens-1m')}/ml-1m", domain_by="user.age:25,35")
    model = build_reference("ease-pooled-recency", lam=500.0, decay=0.9).fit(data)
    m = evaluate(model, data, split="test", protocol="full", ks=[20, 50, 100], seen=SeenItems(data)).metrics(data.domains)
    got = [m[f"recall@{k}"]["mean"] for k in (20, 50, 100)]
    print("movielens age3 ease-pooled-recency 0.9: R@20/50/100 " + json.dumps([round(v, 4) for v in got]))
    assert got == pytest.approx([0.216, 0.356, 0.478], abs=0.005), json.dumps(got)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GENRE3))
def test_movielens_genre3_reference_numbers(name):
    from adirec.data.sources import load_source
    data = load_source(f"recbole:{shared_data('movielens-1m')}/ml-1m", domain_by="item.genre",
                       domains=["Action", "Comedy", "Drama"])
    kwargs, expected = GENRE3[name]
    r = evaluate(build_reference(name, **kwargs).fit(data), data, split="test", protocol="full", ks=[50],
                 seen=SeenItems(data)).metrics(data.domains)["recall@50"]
    got = [r[d] for d in ("Action", "Comedy", "Drama")] + [r["mean"]]
    print(f"movielens genre3 {name}: R@50 " + json.dumps([round(v, 4) for v in got]))
    assert got == pytest.approx(expected, abs=0.005), json.dumps(got)
