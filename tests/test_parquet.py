"""Parquet layout, streaming reader and high-cardinality ids (hashing, sparse gradients)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from adirec.data.batches import Batch, FeatureStore, iterate_batches
from adirec.data.build import DataWarning, RawCandidates, build_dataset
from adirec.data.dataset import HIST_ALL, HIST_DOMAIN
from adirec.data.convert import convert
from adirec.data.parquet import ParquetLayout, load_parquet
from adirec.data.sources import load_source
from adirec.data.sources.synthetic import PRESETS, load_synthetic
from adirec.data.streaming import ParquetStream, iterate_parquet, row_group_units
from adirec.models.adi import TwoTowerModel
from adirec.models.registry import build_config
from adirec.train.loop import SparseDenseAdam, Trainer, make_optimizer
from adirec.train.config import TrainConfig

SMALL = dict(embedding_dim=8, expert_hidden=(16,), expert_out=8, forward_hidden=(8,), output_dim=8)


def assert_same_data(a, b):
    assert (a.name, a.domains, a.meta) == (b.name, b.domains, b.meta)
    assert a.schema.to_dict() == b.schema.to_dict()
    assert np.array_equal(a.user_keys, b.user_keys) and np.array_equal(a.item_keys, b.item_keys)
    assert a.user_keys.dtype == b.user_keys.dtype == object
    for s in ("train", "valid", "test"):
        for c in ("user", "item", "domain", "weight", "timestamp"):
            x, y = getattr(a.splits[s], c), getattr(b.splits[s], c)
            assert x.dtype == y.dtype and np.array_equal(x, y), (s, c)
    for t in ("user_table", "item_table", "user_domain_table", "item_domain_table"):
        ta, tb = getattr(a, t), getattr(b, t)
        assert list(ta) == list(tb), t
        for k in ta:
            assert ta[k].dtype == tb[k].dtype and np.array_equal(ta[k], tb[k]), (t, k)
    assert len(a.corpus) == len(b.corpus) and all(np.array_equal(x, y) for x, y in zip(a.corpus, b.corpus))
    assert sorted(a.candidates) == sorted(b.candidates)
    for s in a.candidates:
        for c in ("user", "domain", "items"):
            assert np.array_equal(getattr(a.candidates[s], c), getattr(b.candidates[s], c)), (s, c)


@pytest.fixture(scope="module")
def tiny():
    return load_synthetic("tiny", seed=0)


@pytest.fixture(scope="module")
def layout(tiny, tmp_path_factory):
    return ParquetLayout(convert(tiny, tmp_path_factory.mktemp("pq") / "tiny", row_group_rows=300))


# ------------------------------------------------------------------------ layout
def test_round_trip_is_exact(tiny, layout):
    assert_same_data(tiny, layout.load())
    assert_same_data(tiny, load_source(f"parquet:{layout.path}"))
    files = layout.manifest["files"]
    assert files["interactions/train.parquet"]["rows"] == len(tiny.splits["train"])
    md = pq.ParquetFile(layout.split_path("train")).metadata
    assert md.num_row_groups == -(-len(tiny.splits["train"]) // 300)
    assert max(md.row_group(g).num_rows for g in range(md.num_row_groups)) == 300


def test_string_keys_and_candidate_lists_round_trip(tiny_raw, tmp_path):
    cands = {"test": RawCandidates(np.array(["u1", "u2"], dtype=object), np.array([1, 1]),
                                   [["e", "a", "b"], ["b", "zz"]])}
    data = build_dataset("hand", ["x", "y"], tiny_raw["train"], test=tiny_raw["test"], users=tiny_raw["users"],
                         items=tiny_raw["items"], candidates=cands, history_len=3, meta={"source": "hand"})
    back = load_parquet(convert(data, tmp_path / "hand"))
    assert_same_data(data, back)
    assert back.candidates["test"].items.tolist() == data.candidates["test"].items.tolist()
    assert -1 in back.candidates["test"].items  # padding of the shorter list survives


def test_synthetic_written_in_chunks_equals_the_in_memory_path(tiny, tmp_path):
    back = load_parquet(convert("synthetic:tiny", tmp_path / "chunked", row_group_rows=300))
    assert_same_data(tiny, back)
    # several blocks of users (each user's rows in one block), another seed and history length
    cfg = dataclasses.replace(PRESETS["tiny"], block_users=48)
    assert cfg.num_blocks > 4
    got = load_parquet(convert(cfg, tmp_path / "blocks", seed=4, history_len=7))
    assert_same_data(load_synthetic(cfg, seed=4, history_len=7), got)
    # per-domain item features (item_domain_ctr, item_domain_price) too
    cfg = dataclasses.replace(PRESETS["tiny"], item_domain_dense=True)
    got = load_parquet(convert(cfg, tmp_path / "dense"))
    assert "item_domain_ctr" in got.item_domain_table
    assert_same_data(load_synthetic(cfg), got)


def test_layout_feature_store_matches_the_in_memory_one(tiny, layout):
    ref, got = FeatureStore(tiny), layout.feature_store()
    tr = tiny.splits["train"]
    for d_shift in (0, 1):  # the row's own domain, and the user seen from another domain
        dom = (tr.domain + d_shift) % tiny.num_domains
        a = ref.user_features(tr.user, dom, exclude_item=tr.item)
        b = got.user_features(tr.user, dom, exclude_item=tr.item)
        assert list(a) == list(b)
        for k in a:
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    for d in range(tiny.num_domains):
        a, b = ref.item_features(np.arange(tiny.num_items + 1), d), got.item_features(np.arange(tiny.num_items + 1), d)
        assert all(torch.equal(a[k], b[k]) for k in a)
    short = load_synthetic("tiny", seed=0, history_len=5)
    a = FeatureStore(short).user_features(tr.user, tr.domain, exclude_item=tr.item)
    b = layout.feature_store(history_len=5).user_features(tr.user, tr.domain, exclude_item=tr.item)
    assert torch.equal(a[HIST_ALL], b[HIST_ALL]) and torch.equal(a[HIST_DOMAIN], b[HIST_DOMAIN])
    with pytest.raises(ValueError, match="--history-len 60"):
        layout.feature_store(history_len=60)


def test_training_view_holds_a_validation_sample(tiny, layout):
    view = layout.training_view(valid_users=40, seed=1)
    valid_users = np.unique(view.data.splits["valid"].user)
    assert len(valid_users) == 40
    tr, vt = tiny.splits["train"], view.data.splits["train"]
    sample_rows = np.isin(tr.user, valid_users)
    assert np.isin(vt.user, valid_users).sum() == sample_rows.sum()  # all their rows, for masking
    assert len(view.data.splits["test"]) == 0
    assert np.array_equal(view.item_counts, np.bincount(tr.item, minlength=tiny.num_items + 1))
    assert len(view.batches) == len(tr)
    capped = layout.training_view(valid_rows=100, seed=1)  # a row budget bounds the sample too
    kept = np.unique(capped.data.splits["valid"].user)
    n_rows = np.isin(tr.user, kept).sum()
    assert 1 <= len(kept) < 40 and n_rows <= 100


def test_atomic_write_and_clear_errors(tiny, tmp_path):
    out = tmp_path / "x"
    convert(tiny, out)
    with pytest.raises(FileExistsError, match="overwrite"):
        convert(tiny, out)
    bad = load_synthetic("tiny", seed=0)
    bad.meta = {"not json": object()}
    with pytest.raises(ValueError, match="JSON"):
        convert(bad, tmp_path / "y")
    with pytest.raises(ValueError, match="JSON"):
        convert(bad, out, overwrite=True)
    assert not (tmp_path / "y").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x"]  # no temporary directory left
    assert load_parquet(out).name == tiny.name  # the failed overwrite left the old layout
    with pytest.raises(FileNotFoundError, match="manifest"):
        ParquetLayout(tmp_path)
    with pytest.raises(ValueError, match="converting"):
        load_source(f"parquet:{out}", domains=["d1"])
    (out / "corpus.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="corpus.parquet"):
        ParquetLayout(out)


def test_convert_command(tmp_path, capsys):
    from adirec.cli import main
    assert main(["data", "convert", "synthetic:tiny", "--to", str(tmp_path / "c"), "--row-group-rows", "500"]) == 0
    assert "synthetic-tiny" in capsys.readouterr().out
    info = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert info["row_group_rows"] == 500 and info["source"] == "synthetic:tiny"
    assert main(["data", "convert", "synthetic:tiny", "--to", str(tmp_path / "c")]) == 2


# --------------------------------------------------------------------- streaming
def _pairs(batches) -> np.ndarray:
    return np.concatenate([np.stack([b.user.numpy(), b.item.numpy()], 1) for b in batches])


def _keys(pairs: np.ndarray) -> np.ndarray:
    return pairs[:, 0] * 10**6 + pairs[:, 1]  # synthetic users never repeat an item: a row id


def test_unshuffled_stream_equals_in_memory_batches(tiny, layout):
    tr = tiny.splits["train"]
    a = list(iterate_batches(tr, 128, shuffle=False))
    b = list(iterate_parquet(layout.split_path("train"), 128, shuffle=False))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert isinstance(y, Batch)
        for c in ("user", "item", "domain", "weight"):
            assert getattr(x, c).dtype == getattr(y, c).dtype and torch.equal(getattr(x, c), getattr(y, c))


@pytest.mark.parametrize("readers", [1, 4, 6, 24])  # 24 > 10 row groups: groups are sliced
def test_shards_cover_every_row_exactly_once(tiny, layout, readers):
    path = layout.split_path("train")
    parts = [_pairs(iterate_parquet(path, 50, shuffle=True, seed=3, shuffle_buffer=500, reader=r,
                                    num_readers=readers)) for r in range(readers)]
    allk = _keys(np.concatenate(parts))
    tr = tiny.splits["train"]
    assert len(allk) == len(tr) and len(np.unique(allk)) == len(tr)
    assert np.array_equal(np.sort(allk), np.sort(_keys(np.stack([tr.user, tr.item], 1))))
    assert all(len(p) for p in parts)  # every reader got a share


def test_ranks_times_dataloader_workers_cover_every_row_once(tiny, layout):
    stream = ParquetStream(layout.split_path("train"), shuffle_buffer=400, num_workers=2)
    parts = [_pairs(stream(batch_size=64, rank=r, world_size=2, seed=9)) for r in range(2)]
    allk = _keys(np.concatenate(parts))
    assert len(allk) == len(np.unique(allk)) == len(tiny.splits["train"])
    assert not set(_keys(parts[0])) & set(_keys(parts[1]))


def test_shuffling_is_seeded_and_the_buffer_is_bounded(layout):
    path = layout.split_path("train")
    a = _keys(_pairs(iterate_parquet(path, 100, shuffle=True, seed=1, shuffle_buffer=600)))
    b = _keys(_pairs(iterate_parquet(path, 100, shuffle=True, seed=1, shuffle_buffer=600)))
    c = _keys(_pairs(iterate_parquet(path, 100, shuffle=True, seed=2, shuffle_buffer=600)))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and np.array_equal(np.sort(a), np.sort(c))
    # with no buffer, rows never leave their row group's turn: nothing is held across groups
    units = row_group_units(path)
    t = pq.read_table(path)
    keys = _keys(np.stack([t.column("user").to_numpy(), t.column("item").to_numpy()], 1))
    starts = np.cumsum([0] + [u.rows for u in units])
    group_of = dict(zip(keys, np.searchsorted(starts, np.arange(len(keys)), side="right") - 1))
    seq = [group_of[k] for k in _keys(_pairs(iterate_parquet(path, 100, shuffle=True, seed=1, shuffle_buffer=0)))]
    changes = sum(1 for x, y in zip(seq, seq[1:]) if x != y)
    assert changes == len(units) - 1  # each group's rows come out together


def test_trainer_runs_from_a_stream(layout):
    import warnings
    view = layout.training_view()
    torch.manual_seed(0)
    model = TwoTowerModel(view.data.schema, view.data.num_domains, build_config("dnn", **SMALL))
    tcfg = TrainConfig(epochs=1, batch_size=256, num_negatives=32, progress=False, num_threads=1, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # time-consistent histories: nothing to warn about
        t = Trainer(model, view.data, tcfg,
                    batches=view.batches, store=view.store, item_counts=view.item_counts)
    assert view.store.time_ordered
    s = t.fit()
    assert t.history[0]["loss"] > 0 and 0.0 <= s["best_valid_recall@50"] <= 1.0
    assert t.sampler.q.shape == (view.data.num_items + 1,)


def _older_layout(layout, tmp_path):
    """A copy of ``layout`` as written before the stored positives: the latest-positive windows only."""
    import shutil
    old = tmp_path / "older"
    shutil.copytree(layout.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for rel in [r for r in manifest["files"] if r.startswith("history/positives_")]:
        (old / rel).unlink()
        del manifest["files"][rel]
    (old / "manifest.json").write_text(json.dumps(manifest))
    return ParquetLayout(old)


def test_streamed_histories_hold_only_the_positives_before_each_row(tiny, layout, tmp_path):
    ref, got = FeatureStore(tiny), layout.feature_store()
    assert ref.time_ordered and got.time_ordered
    assert isinstance(got._hist_all.sorted, np.memmap)  # read on demand, not loaded
    tr = tiny.splits["train"]
    for d_shift in (0, 1):  # the row's own domain (training rows), another one (pseudo rows)
        dom = (tr.domain + d_shift) % tiny.num_domains
        a = ref.user_features(tr.user, dom, exclude_item=tr.item, before=(tr.timestamp, tr.item))
        b = got.user_features(tr.user, dom, exclude_item=tr.item, before=(tr.timestamp, tr.item))
        for k in (HIST_ALL, HIST_DOMAIN):
            assert torch.equal(a[k], b[k]), k
    # no history item at or after its row in the split order (time, then item id)
    hist = b[HIST_ALL].numpy()
    when = {(u, i): t for u, i, t in zip(tr.user.tolist(), tr.item.tolist(), tr.timestamp.tolist())}
    for r in np.random.default_rng(0).choice(len(tr), 300, replace=False):
        u, t, i = int(tr.user[r]), int(tr.timestamp[r]), int(tr.item[r])
        assert all((when[(u, h)], h) < (t, i) for h in hist[r].tolist() if h)
    # an older layout keeps only each user's latest positives: a streamed run warns
    older = _older_layout(layout, tmp_path)
    store = older.feature_store()
    assert not store.time_ordered
    view = older.training_view()
    model = TwoTowerModel(view.data.schema, view.data.num_domains, build_config("dnn", **SMALL))
    tcfg = TrainConfig(epochs=1, batch_size=256, num_negatives=32, progress=False, num_threads=1, device="cpu")
    with pytest.warns(DataWarning, match="a row's history can hold positives after it"):
        Trainer(model, view.data, tcfg, batches=view.batches, store=view.store, item_counts=view.item_counts)


def test_synthetic_written_in_blocks_stores_the_same_positives(tmp_path):
    cfg = dataclasses.replace(PRESETS["tiny"], block_users=48)
    blocks = ParquetLayout(convert(cfg, tmp_path / "blocks", seed=2))
    whole = ParquetLayout(convert(load_synthetic(cfg, seed=2), tmp_path / "whole"))
    for n in ("all", "domain"):
        for rel in (f"history/positives_{n}.npy", f"history/positives_{n}_offsets.npy"):
            a, b = np.load(blocks.path / rel), np.load(whole.path / rel)
            assert a.dtype == b.dtype and np.array_equal(a, b), rel
            assert blocks.manifest["files"][rel] == whole.manifest["files"][rel]


# ------------------------------------------------------------- high-cardinality ids
def test_hashing_into_a_fixed_table(tiny):
    cfg = build_config("adi-se", **SMALL, hash_buckets=64)
    model = TwoTowerModel(tiny.schema, tiny.num_domains, cfg)
    emb = model.embeddings
    sizes = tiny.schema.vocab_sizes
    for v, table in emb.tables.items():
        assert table.num_embeddings == (64 if sizes[v] > 64 else sizes[v]), v
    assert set(emb.hashed) == {v for v in emb.tables if sizes[v] > 64} and "item_id" in emb.hashed
    ids = torch.arange(sizes["item_id"])
    rows = emb.rows("item_id", ids)
    assert rows[0] == 0 and rows[1:].min() >= 1 and rows.max() <= 63
    assert torch.equal(rows, emb.rows("item_id", ids))  # deterministic
    assert len(torch.unique(rows[1:])) > 50  # spread over the buckets
    assert torch.equal(emb.rows("gender", torch.arange(3)), torch.arange(3))  # small vocabularies untouched
    u = model.user_embedding(FeatureStore(tiny).user_features([1, 2], [0, 1]), torch.tensor([0, 1]))
    assert u.shape == (2, 8) and torch.isfinite(u).all()
    with pytest.raises(ValueError, match="hash_buckets"):
        build_config("adi-se", hash_buckets=1)


def test_sparse_gradients_update_only_touched_rows(tiny):
    torch.manual_seed(0)
    model = TwoTowerModel(tiny.schema, tiny.num_domains, build_config("dnn", **SMALL, sparse_embeddings=True))
    opt = make_optimizer(model, 1e-2, 0.0)
    assert isinstance(opt, SparseDenseAdam) and isinstance(opt.optimizers[0], torch.optim.SparseAdam)
    assert opt.optimizers[1].defaults["fused"]  # the dense parameters take torch's fused Adam
    t = Trainer(model, tiny, TrainConfig(epochs=1, batch_size=64, num_negatives=8, progress=False, device="cpu"))
    table = model.embeddings.tables["item_id"].weight
    start = table.detach().clone()
    touched = torch.zeros(len(table), dtype=torch.bool)
    for batch in list(iterate_batches(tiny.splits["train"], 64, shuffle=True, seed=0))[:3]:
        loss, _ = t.loss(batch, 0.0)
        t.optimizer.zero_grad()
        loss.backward()
        assert table.grad.is_sparse
        touched[table.grad.coalesce().indices()[0]] = True
        t.optimizer.step()
    moved = (table.detach() != start).any(dim=1)
    assert moved.any() and torch.equal(moved, touched & (torch.arange(len(table)) != 0))  # row 0: padding
    dense = TwoTowerModel(tiny.schema, tiny.num_domains, build_config("dnn", **SMALL))
    plain = make_optimizer(dense, 1e-2, 0.0)
    assert isinstance(plain, torch.optim.Adam) and plain.defaults["fused"]
