"""Behaviour histories are time-consistent: a row sees only the positives before it."""
from __future__ import annotations

import numpy as np
import torch

from adirec.data.batches import FeatureStore
from adirec.data.build import RawInteractions, build_dataset
from adirec.data.dataset import HIST_ALL, HIST_DOMAIN
from adirec.train.config import TrainConfig
from adirec.train.loop import Trainer
from adirec.models.adi import TwoTowerModel
from adirec.models.config import TwoTowerConfig


def _timeline(with_time: bool = True):
    # user "u": a@1 (d0), b@2 (d1), c@2 (d0, same time as b: item id decides), d@3 (d0); user "v": a@5
    users = np.array(["u", "u", "u", "u", "v"], dtype=object)
    items = np.array(["a", "b", "c", "d", "a"], dtype=object)
    domains = np.array([0, 1, 0, 0, 0])
    times = np.array([1, 2, 2, 3, 5]) if with_time else None
    train = RawInteractions(users, items, domains, np.ones(5, np.float32), times)
    return build_dataset("timeline", ["d0", "d1"], train, history_len=4)


def _ids(data, keys):
    lookup = {k: i for i, k in enumerate(data.item_keys)}
    return [lookup[k] for k in keys]


def _row(store, data, user_key, domain, time, item_key):
    u = np.array([list(data.user_keys).index(user_key)])
    i = np.array(_ids(data, [item_key]))
    f = store.user_features(u, np.array([domain]), exclude_item=i, before=(np.array([time]), i))
    keep = lambda t: [data.item_keys[x] for x in t[0].tolist() if x]
    return keep(f[HIST_ALL]), keep(f[HIST_DOMAIN])


def test_history_holds_only_positives_before_the_row_in_split_order():
    data = _timeline()
    store = FeatureStore(data)
    assert store.time_ordered
    assert _row(store, data, "u", 0, 1, "a") == ([], [])
    assert _row(store, data, "u", 1, 2, "b") == (["a"], [])
    assert _row(store, data, "u", 0, 2, "c") == (["a", "b"], ["a"])  # b@2 precedes c@2: item order
    assert _row(store, data, "u", 0, 3, "d") == (["a", "b", "c"], ["a", "c"])
    # a pseudo row of d in domain d1 sees the d1 positives before d's time only
    assert _row(store, data, "u", 1, 3, "d") == (["a", "b", "c"], ["b"])
    # validation / test rows come after every training positive: looked up without a cut-off
    u = np.array([list(data.user_keys).index("u")])
    f = store.user_features(u, np.array([0]))
    assert [data.item_keys[x] for x in f[HIST_ALL][0].tolist() if x] == ["a", "b", "c", "d"]


def test_without_time_a_row_sees_every_other_positive():
    data = _timeline(with_time=False)
    store = FeatureStore(data)
    assert not store.time_ordered
    all_items, _ = _row(store, data, "u", 0, 0, "b")
    assert sorted(all_items) == ["a", "c", "d"]


def test_random_timelines_never_show_an_item_at_or_after_the_row():
    rng = np.random.default_rng(0)
    n = 400
    users = rng.integers(0, 20, n).astype(str).astype(object)
    items = rng.integers(0, 50, n).astype(str).astype(object)
    times = rng.integers(0, 30, n)  # many ties in time
    train = RawInteractions(users, items, rng.integers(0, 2, n), np.ones(n, np.float32), times)
    data = build_dataset("random", ["d0", "d1"], train, history_len=8)
    store = FeatureStore(data)
    tr = data.splits["train"]
    f = store.user_features(tr.user, tr.domain, exclude_item=tr.item, before=(tr.timestamp, tr.item))
    when = {}  # (user, item) -> earliest (time, item) of that positive
    for u, i, t in zip(tr.user, tr.item, tr.timestamp):
        when[(u, i)] = min(when.get((u, i), (t, i)), (t, i))
    for r in range(n):
        for name in (HIST_ALL, HIST_DOMAIN):
            for h in f[name][r].tolist():
                if h:
                    assert when[(tr.user[r], h)] < (tr.timestamp[r], tr.item[r])


class _RecordingStore(FeatureStore):
    """Records every (row order key, history) the trainer asks for."""

    seen: list

    def user_features(self, user, domain, exclude_item=None, device=None, *, before=None):
        out = super().user_features(user, domain, exclude_item, device, before=before)
        if before is not None:
            self.seen.append((np.asarray(user), np.asarray(before[0]), np.asarray(before[1]),
                              out[HIST_ALL].numpy()))
        return out


def test_trainer_and_self_training_ask_for_time_consistent_histories():
    rng = np.random.default_rng(1)
    n = 600
    users = rng.integers(0, 30, n).astype(str).astype(object)
    items = rng.integers(0, 40, n).astype(str).astype(object)
    train = RawInteractions(users, items, rng.integers(0, 2, n), np.ones(n, np.float32), rng.integers(0, 1000, n))
    data = build_dataset("random", ["d0", "d1"], train, history_len=8)
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, 2, TwoTowerConfig(embedding_dim=8, expert_hidden=(16,), expert_out=8,
                                                          forward_hidden=(8,), output_dim=8))
    cfg = TrainConfig(epochs=2, batch_size=128, num_negatives=16, progress=False, patience=0,
                      early_stopping_metric="recall@10", eval_ks=(10,),
                      self_training={"enabled": True, "start_epoch": 0, "p0": 0.5, "max_p": 0.5})
    trainer = Trainer(model, data, cfg, report_split="test")
    store = _RecordingStore(trainer.train_data)
    store.seen = []
    trainer.store = trainer.objective.store = store
    trainer.fit()
    tr = trainer.train_data.splits["train"]
    order = {}
    for u, i, t in zip(tr.user, tr.item, tr.timestamp):
        order[(u, i)] = min(order.get((u, i), (t, i)), (t, i))
    checked = 0
    for u, t, i, hist in store.seen:
        for r in range(len(u)):
            for h in hist[r]:
                if h:
                    assert order[(u[r], h)] < (t[r], i[r])
                    checked += 1
    assert checked > 100


def test_holdout_takes_the_last_positive_in_the_splits_order():
    """Equal timestamps are ordered by item id, as histories are: user u's last positive is d@3;
    at d's time moved to 2, b and c and d tie and the largest item id, d, is still the last."""
    from adirec.data.split import holdout_split
    for times in ([1, 2, 2, 3, 5], [1, 2, 2, 2, 5]):
        users = np.array(["u", "u", "u", "u", "v"], dtype=object)
        items = np.array(["a", "b", "c", "d", "a"], dtype=object)
        train = RawInteractions(users, items, np.array([0, 1, 0, 0, 0]), np.ones(5, np.float32), np.array(times))
        data = build_dataset("timeline", ["d0", "d1"], train, history_len=4)
        assert _ids(data, ["b", "c", "d"]) == sorted(_ids(data, ["b", "c", "d"]))  # item ids follow the keys
        for seed in range(8):
            _, held = holdout_split(data, 1.0, seed=seed)
            assert [data.item_keys[i] for i in held.item.tolist()] == ["d"], (times, seed)


def test_the_train_valid_view_adds_the_known_validation_positives_to_the_histories():
    import pytest
    from adirec.data.split import history_view
    users = np.array(["u", "u", "v", "v"], dtype=object)
    train = RawInteractions(users, np.array(["a", "b", "a", "c"], dtype=object), np.zeros(4, np.int64),
                            np.ones(4, np.float32), np.array([1, 2, 1, 2]))
    # u's validation item c is known; v's is z, never trained on (id 0): no history can hold it
    valid = RawInteractions(np.array(["u", "v"], dtype=object), np.array(["c", "z"], dtype=object),
                            np.zeros(2, np.int64), np.ones(2, np.float32), np.array([3, 3]))
    test = RawInteractions(np.array(["u", "v"], dtype=object), np.array(["b", "b"], dtype=object),
                           np.zeros(2, np.int64), np.ones(2, np.float32), np.array([4, 4]))
    data = build_dataset("views", ["d0"], train, valid, test, history_len=4)
    assert history_view(data, "test") is data and history_view(data, "valid", "train+valid") is data
    view = history_view(data, "test", "train+valid")
    assert len(view.splits["train"]) == 5 and len(view.splits["valid"]) == 0
    assert len(view.splits["test"]) == 2 and view.splits["test"] is data.splits["test"]
    store = FeatureStore(view)
    u = np.array([list(data.user_keys).index(k) for k in ("u", "v")])
    hist = store.user_features(u, np.zeros(2, np.int64))[HIST_ALL]
    assert [[data.item_keys[x] for x in row if x] for row in hist.tolist()] == [["a", "b", "c"], ["a", "c"]]
    with pytest.raises(ValueError, match="history must be one of"):
        history_view(data, "test", "valid")


def test_the_search_inside_each_segment_matches_a_search_of_the_whole_timeline():
    from adirec.data.batches import ENTRY_DTYPE, PositiveHistories
    rng = np.random.default_rng(0)
    n, K = 2000, 60
    keys, times, items = rng.integers(1, K, n), rng.integers(0, 30, n), rng.integers(1, 50, n)  # many ties
    h = PositiveHistories(keys, items, times, K + 1)
    q = 3000
    qk, qt, qi = rng.integers(0, K + 1, q), rng.integers(-1, 32, q), rng.integers(0, 52, q)  # key 0: empty
    needles = np.empty(q, ENTRY_DTYPE)
    needles["key"], needles["time"], needles["item"] = qk, qt, qi
    want = np.searchsorted(h.sorted, needles, side="left")
    assert np.array_equal(h._first_not_before(qk, qt, qi, h.indptr[qk + 1]), want)
    empty = PositiveHistories(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert empty.recent(np.array([1, 2]), 4, None, before=(np.array([5, 5]), np.array([1, 1]))).shape == (2, 4)
