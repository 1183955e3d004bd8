import numpy as np
import pytest
import torch

from adirec.data.batches import FeatureStore, iterate_batches
from adirec.data.build import RawInteractions, Vocabulary, build_dataset
from adirec.data.dataset import HIST_ALL, HIST_DOMAIN


def make(tiny_raw, **kw):
    return build_dataset("tiny", ["A", "B"], tiny_raw["train"], None, tiny_raw["test"],
                         users=tiny_raw["users"], items=tiny_raw["items"], history_len=3, **kw)


def test_vocabulary_is_built_on_train_and_unknown_maps_to_zero(tiny_raw):
    data = make(tiny_raw)
    assert list(data.user_keys[1:]) == ["u1", "u2", "u3"]  # u4 only has features, no training row
    assert data.num_items == 5
    test = data.splits["test"]
    assert test.user.tolist()[2] == 0  # u9 never trained
    assert data.item_keys[test.item[0]] == "e"
    # feature vocabularies ignore entities absent from train: u4's gender "x" is unknown
    assert data.schema.vocab_sizes["gender"] == 3  # <unk>, f, m
    # dense features are standardised with the statistics of training users only
    spend = data.user_table["spend"][1:, 0]
    assert np.allclose(spend.mean(), 0.0, atol=1e-6) and np.allclose(spend.std(), 1.0, atol=1e-5)


def test_sequence_feature_is_truncated_and_padded(tiny_raw):
    data = make(tiny_raw)
    tags = data.item_table["tags"]
    d = data.item_keys.tolist().index("d")
    c = data.item_keys.tolist().index("c")
    assert tags.shape == (6, 2)
    assert (tags[d] > 0).all() and (tags[c] == 0).all()


def test_history_never_contains_the_target(tiny_raw):
    data = make(tiny_raw)
    store = FeatureStore(data)
    tr = data.splits["train"]
    feats = store.user_features(tr.user, tr.domain, exclude_item=tr.item)
    for name in (HIST_ALL, HIST_DOMAIN):
        h = feats[name].numpy()
        assert h.shape == (len(tr), 3)
        assert not np.any(h == tr.item[:, None]), name


def test_history_is_most_recent_and_domain_specific(tiny_raw):
    data = make(tiny_raw)
    store = FeatureStore(data)
    key = {k: i for i, k in enumerate(data.item_keys)}
    u1 = data.user_keys.tolist().index("u1")
    feats = store.user_features(np.array([u1, u1]), np.array([0, 1]))
    # u1's positives by time: a(A) b(A) c(B) d(A); L = 3 keeps the newest three
    assert feats[HIST_ALL][0].tolist() == [key["b"], key["c"], key["d"]]
    assert feats[HIST_DOMAIN][0].tolist() == [key["a"], key["b"], key["d"]]
    assert feats[HIST_DOMAIN][1].tolist() == [0, 0, key["c"]]
    # excluding the target keeps the full length when the user has enough other items
    ex = store.user_features(np.array([u1]), np.array([0]), exclude_item=np.array([key["c"]]))
    assert ex[HIST_ALL][0].tolist() == [key["a"], key["b"], key["d"]]


def test_feature_store_shapes_and_per_domain_lookup(tiny_raw):
    data = make(tiny_raw)
    store = FeatureStore(data)
    items = torch.tensor([1, 2, 3])
    f0 = store.item_features(items, 0)
    f1 = store.item_features(items, torch.tensor([1, 1, 1]))
    assert f0["item_id"].shape == (3,) and f0["tags"].shape == (3, 2)
    assert f0["item_domain_popularity"].shape == (3, 1)
    assert not torch.equal(f0["item_domain_popularity"], f1["item_domain_popularity"])
    for name, field in ((f.name, f) for f in data.schema.side("item")):
        assert (f0[name].dtype == torch.float32) == (field.kind == "dense")


def test_batches_cover_every_row_once_and_shard_without_overlap(tiny_raw):
    data = make(tiny_raw)
    tr = data.splits["train"]
    seen = torch.cat([b.item * 100 + b.user for b in iterate_batches(tr, 4, shuffle=True, seed=3)])
    assert sorted(seen.tolist()) == sorted((tr.item * 100 + tr.user).tolist())
    shards = [torch.cat([b.user * 100 + b.item for b in iterate_batches(tr, 2, shuffle=True, seed=1, rank=r, world_size=2)])
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(tr) // 2
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_empty_domain_and_bad_input_are_named(tiny_raw):
    train = tiny_raw["train"]
    with pytest.raises(ValueError, match="domains with no training interactions: \\['C'\\]"):
        build_dataset("tiny", ["A", "B", "C"], train)
    bad = RawInteractions(train.user, train.item, train.domain, weight=np.full(len(train), np.nan))
    with pytest.raises(ValueError, match="NaN"):
        build_dataset("tiny", ["A", "B"], bad)
    with pytest.raises(ValueError, match="empty"):
        build_dataset("tiny", ["A"], RawInteractions(np.array([]), np.array([]), np.array([])))


def test_vocabulary_encodes_ints_and_strings_in_sorted_order():
    v = Vocabulary(np.array([5, 3, 5, 9]))
    assert v.encode(np.array([3, 5, 9, 7])).tolist() == [1, 2, 3, 0]  # by value, not first appearance
    s = Vocabulary(np.array(["y", "x", "y"], dtype=object))
    assert s.encode(np.array(["y", "x", "z"], dtype=object)).tolist() == [2, 1, 0]
    assert s.keys().tolist() == ["<unk>", "x", "y"]


def test_summary_reports_overlap(tiny_raw):
    s = make(tiny_raw).summary()
    assert s["domains"]["A"]["train"] == 6 and s["domains"]["B"]["train"] == 5
    assert s["overlap"]["users_in_2plus_domains"] == 2  # u1 and u3
    assert s["overlap"]["pairs"]["A&B"]["items"] == 1  # A has {a, b, d}, B has {a, c, e}


def test_per_domain_dense_features_are_aligned_and_standardised(tiny_raw):
    ctr = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 40.0, 50.0]])
    data = make(tiny_raw, item_domain_dense={"ctr": ctr})
    assert data.schema["ctr"].per_domain and data.schema["ctr"].side == "item"
    t = data.item_domain_table["ctr"][..., 0]  # (D, I + 1)
    assert t.shape == (2, 6) and np.all(t[:, 0] == 0)
    order = [data.item_keys.tolist().index(k) for k in "abcde"]
    assert np.allclose(t[:, order] * ctr.std() + ctr.mean(), ctr, atol=1e-4)
    with pytest.raises(ValueError, match="expected \\(2, 5"):
        make(tiny_raw, item_domain_dense={"ctr": ctr[:, :3]})
    with pytest.raises(ValueError, match="NaN"):
        make(tiny_raw, item_domain_dense={"ctr": np.full((2, 5), np.nan)})
