"""Order-aware history encoders, batches of sequences, the full softmax and the item bias."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adirec.data.batches import FeatureStore, SequenceBatches
from adirec.data.build import RawInteractions, build_dataset
from adirec.data.dataset import HIST_ALL
from adirec.models.adi import TwoTowerModel
from adirec.models.config import TwoTowerConfig
from adirec.models.layers import Dropout, dropout
from adirec.models.sequence import HistoryEncoder, RecencyEncoder, TransformerEncoder, written_out_attention
import adirec.train.loss as loss_module
from adirec.train.loss import full_softmax_loss, sampled_softmax_loss

SMALL = dict(embedding_dim=8, expert_hidden=(16,), expert_out=8, forward_hidden=(8,), output_dim=8)


def _history(B=3, L=6, E=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(B, L, E, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, :2] = False  # a shorter history, left-padded
    mask[2, :5] = False  # a single item
    return e * mask.unsqueeze(-1), mask


def test_transformer_is_causal_a_future_item_never_changes_an_earlier_position():
    torch.manual_seed(0)
    enc = TransformerEncoder(8, max_len=6, layers=2, heads=2, dropout=0.1).eval()
    e, mask = _history()
    out = enc.causal(e, mask)
    for t in range(5):
        changed = e.clone()
        changed[:, t + 1:] = torch.randn_like(changed[:, t + 1:])
        assert torch.allclose(enc.causal(changed, mask)[:, :t + 1], out[:, :t + 1], atol=1e-6)
    assert torch.allclose(enc.last(e, mask), out[:, -1], atol=1e-6)


def test_transformer_attention_is_scaled_dot_product_attention_with_the_causal_mask():
    torch.manual_seed(0)
    enc = TransformerEncoder(8, max_len=6, layers=1, heads=2, dropout=0.3).eval()
    block = enc.blocks[0]
    x, mask = _history()
    L = x.shape[1]
    allowed = (torch.arange(L)[:, None] >= torch.arange(L)[None, :]) & mask[:, None, :] | torch.eye(L, dtype=torch.bool)
    q, k, v = block.qkv(block.norm1(x)).view(3, L, 3, 2, 4).permute(2, 0, 3, 1, 4)
    # softmax(q k^T / sqrt(d)) v over the allowed keys, by hand
    scores = torch.einsum("bhtd,bhjd->bhtj", q, k) / 2.0
    weights = torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), dim=-1)
    a = torch.einsum("bhtj,bhjd->bhtd", weights, v)
    h = x + block.proj(a.transpose(1, 2).reshape(3, L, 8))
    expected = h + block.ff(block.norm2(h))
    assert torch.allclose(block(x, allowed), expected, atol=1e-6)
    # training on the CPU: the same attention with layers.dropout on its weights
    torch.manual_seed(1)
    got = written_out_attention(q, k, v, allowed[:, None], 0.3)
    torch.manual_seed(1)
    kept = dropout(torch.ones_like(weights), 0.3, training=True)  # the same draws: the same mask
    assert torch.allclose(got, torch.einsum("bhtj,bhjd->bhtd", weights * kept, v), atol=1e-6)
    assert not torch.allclose(got, a, atol=1e-3)


def test_dropout_zeroes_a_p_share_and_keeps_the_expectation():
    torch.manual_seed(0)
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = dropout(x, 0.2, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.8) < 0.005  # 200K draws: std of the share 0.0009
    scale = 32768 / (32768 - round(0.2 * 32768))
    assert torch.all(y[kept] == 2.0 * scale)  # survivors scaled by 1 / (1 - p), p on its grid
    y.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)  # the gradient passes the same mask
    assert abs(y.mean().item() - 2.0) < 0.02
    # the positions of one draw are independent: neighbours drawn from one 64-bit word agree by chance
    pairs = kept.view(-1, 4)
    assert abs((pairs[:, 0] == pairs[:, 1]).float().mean().item() - (0.8 ** 2 + 0.2 ** 2)) < 0.01
    assert torch.equal(dropout(x, 0.2, training=False), x)
    assert torch.equal(dropout(x, 0.0, training=True), x)
    with pytest.raises(ValueError, match="dropout must be in"):
        Dropout(1.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        dropout(x, -0.1, training=True)


@pytest.mark.parametrize("encoder", [HistoryEncoder(), RecencyEncoder(6)])
def test_pooling_encoders_give_every_position_what_last_gives_its_prefix(encoder):
    if isinstance(encoder, RecencyEncoder):
        with torch.no_grad():
            encoder.rank_logits.copy_(torch.linspace(1.0, -1.0, 6))  # favour recent items
    e, mask = _history()
    out = encoder.causal(e, mask)  # (B, L, E)
    L = e.shape[1]
    for t in range(L):
        prefix = torch.zeros_like(e)
        pmask = torch.zeros_like(mask)
        prefix[:, L - 1 - t:] = e[:, :t + 1]  # the items up to t, right-aligned
        pmask[:, L - 1 - t:] = mask[:, :t + 1]
        assert torch.allclose(out[:, t], encoder.last(prefix, pmask), atol=1e-6)
    # the mean encoder is eq. 7
    if type(encoder) is HistoryEncoder:
        manual = torch.stack([e[b][mask[b]].mean(0) for b in range(len(e))])
        assert torch.allclose(encoder.last(e, mask), manual, atol=1e-6)


def _timeline_data(n_users=12, n_items=30, seed=0, history_len=5):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, int(rng.integers(2, 11)), replace=False)):
            rows.append((f"u{u}", f"i{i}", int(rng.integers(2)), 10 * k + u))
    u, i, d, t = (np.array([r[j] for r in rows], dtype=object if j < 2 else np.int64) for j in range(4))
    return build_dataset("seq", ["d0", "d1"], RawInteractions(u, i, d, np.ones(len(u), np.float32), t),
                         history_len=history_len)


def test_sequence_batches_train_every_row_once_from_the_positives_before_it():
    data = _timeline_data()
    tr = data.splits["train"]
    order = np.lexsort((tr.item, tr.timestamp, tr.user))
    timeline: dict[int, list] = {}
    for r in order:
        timeline.setdefault(int(tr.user[r]), []).append((int(tr.item[r]), int(tr.domain[r])))
    batches = SequenceBatches(tr, data.num_users, length=4)
    assert len(batches) == sum(len(v) - 1 for v in timeline.values())
    covered = []
    for b in batches(epoch=0, batch_size=8, seed=3):
        for row in range(len(b.user)):
            seq = timeline[int(b.user[row])]
            items = [x for x, _ in seq]
            has = b.target[row] > 0
            window, targets = b.window[row][has].tolist(), b.target[row][has].tolist()
            a = items.index(targets[0])  # items are distinct per user
            # position t holds the item just before target t, and the targets are a run of the timeline
            assert targets == items[a:a + len(targets)] and window == items[a - 1:a - 1 + len(targets)]
            assert b.domain[row][has].tolist() == [d for _, d in seq[a:a + len(targets)]]
            assert b.window_domain[row][has].tolist() == [d for _, d in seq[a - 1:a - 1 + len(targets)]]
            covered += [(int(b.user[row]), j) for j in range(a, a + len(targets))]
    assert sorted(covered) == sorted((u, j) for u, seq in timeline.items() for j in range(1, len(seq)))


def test_positions_of_a_sequence_give_the_vectors_of_the_same_rows():
    """forward_positions (one pass per sequence) = forward on each row's own history, for the mean
    encoder whose summary does not depend on where a history sits in a window."""
    data = _timeline_data(history_len=12)  # every user's history fits one window
    store = FeatureStore(data)
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, 2, TwoTowerConfig(**SMALL, dial="se")).eval()
    tr = data.splits["train"]
    batch = next(iter(SequenceBatches(tr, data.num_users, length=12)(batch_size=10 ** 6, seed=0)))
    rows = batch.target > 0
    with torch.no_grad():
        u_seq = model.user_embedding_positions(store.position_features(batch.user, batch.domain), batch.window,
                                               batch.window_domain, batch.domain, rows)
        user = batch.user[:, None].expand_as(batch.target)[rows]
        item, domain = batch.target[rows], batch.domain[rows]
        when = {(int(a), int(b)): int(c) for a, b, c in zip(tr.user, tr.item, tr.timestamp)}
        times = torch.tensor([when[(int(a), int(b))] for a, b in zip(user, item)])
        u_row = model.user_embedding(store.user_features(user, domain, before=(times, item)), domain)
    assert torch.allclose(u_seq, u_row, atol=1e-5)


def test_full_and_sampled_softmax_agree_when_the_sample_is_the_whole_corpus():
    g = torch.Generator().manual_seed(0)
    B, C, O = 5, 7, 4
    user, items = torch.randn(B, O, generator=g), torch.randn(C, O, generator=g)
    target = torch.tensor([0, 3, 6, 2, 3])
    weight = torch.tensor([1.0, 0.5, 2.0, 1.0, 1.0])
    full = full_softmax_loss(user, items, target, temperature=0.3, weight=weight)
    # the whole corpus as the columns, every item once: Q is uniform, so log Q is a constant per row
    columns = torch.arange(C)
    logits = user @ items.T
    sampled = sampled_softmax_loss(logits, target, target, columns, torch.full((C,), np.log(1.0 / C)),
                                   temperature=0.3, weight=weight)
    assert torch.allclose(full, sampled, atol=1e-6)
    manual = -(torch.log_softmax(logits / 0.3, dim=1)[torch.arange(B), target] * weight).sum() / weight.sum()
    assert torch.allclose(full, manual, atol=1e-6)


@pytest.mark.parametrize("rows_per_block", [2, 3, 64])
def test_full_softmax_blocks_match_autograds_cross_entropy(monkeypatch, rows_per_block):
    """The blockwise loss (one row block's logits in memory at a time) has the value and both
    gradients of ``F.cross_entropy`` over the whole (B, C) logit matrix, whatever the block."""
    monkeypatch.setattr(loss_module, "_rows_per_block", lambda user, corpus_size: rows_per_block)
    g = torch.Generator().manual_seed(1)
    B, C, width = 7, 5, 3
    user = torch.randn(B, width, generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randn(C, width, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 4, 4, 1, 2, 3, 0])
    weight = torch.rand(B, generator=g, dtype=torch.float64)
    ours = full_softmax_loss(user, items, target, temperature=0.7, weight=weight)
    grads = torch.autograd.grad(ours, (user, items))
    losses = torch.nn.functional.cross_entropy((user / 0.7) @ items.T, target, reduction="none")
    theirs = (losses * weight).sum() / weight.sum()
    expected = torch.autograd.grad(theirs, (user, items))
    assert torch.allclose(ours, theirs, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-12)
    assert torch.autograd.gradcheck(lambda u, v: full_softmax_loss(u, v, target, weight=weight), (user, items))


@pytest.mark.parametrize("which", ["user", "items"])
def test_full_softmax_unweighted_mean_with_one_input_trained(monkeypatch, which):
    """``weight=None`` (the incoming gradient an expanded scalar) and one input without gradient."""
    monkeypatch.setattr(loss_module, "_rows_per_block", lambda user, corpus_size: 2)
    g = torch.Generator().manual_seed(2)
    user, items = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64)
    target = torch.tensor([3, 0, 0, 2, 1])
    trained = user if which == "user" else items
    trained.requires_grad_(True)
    (ours,) = torch.autograd.grad(full_softmax_loss(user, items, target, temperature=0.5), trained)
    (theirs,) = torch.autograd.grad(torch.nn.functional.cross_entropy((user / 0.5) @ items.T, target), trained)
    assert torch.allclose(ours, theirs, atol=1e-12)


def test_full_softmax_runs_in_float32_under_autocast():
    """Under autocast the blocks are scored in float32 both ways, so the loss and its gradients are
    those computed without it, and never below zero."""
    g = torch.Generator().manual_seed(3)
    user = (torch.randn(6, 4, generator=g) * 8).requires_grad_(True)
    items = (torch.randn(9, 4, generator=g) * 8).requires_grad_(True)
    target = torch.tensor([0, 8, 3, 3, 5, 1])
    plain = full_softmax_loss(user, items, target, reduction="sum")
    want = torch.autograd.grad(plain, (user, items))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = full_softmax_loss(user, items, target, reduction="sum")
        got = torch.autograd.grad(cast, (user, items))
    assert cast.dtype == torch.float32 and torch.equal(cast, plain)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    per_row = loss_module._CorpusCrossEntropy.apply(user.detach(), items.detach(), target)
    assert bool((per_row >= 0).all())


@pytest.mark.parametrize("target, match", [
    (torch.tensor([0, 1]), "target must be"),
    (torch.tensor([0, 1, 2], dtype=torch.int32), "long tensor"),
    (torch.tensor([0, -1, 2]), r"index the 4 corpus items, got values in \[-1, 2\]"),
    (torch.tensor([0, 4, 2]), r"index the 4 corpus items, got values in \[0, 4\]"),
])
def test_full_softmax_rejects_a_bad_target(target, match):
    with pytest.raises(ValueError, match=match):
        full_softmax_loss(torch.randn(3, 2), torch.randn(4, 2), target)


def test_item_bias_is_one_more_vector_entry_started_at_the_popularity_prior():
    data = _timeline_data()
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, 2, TwoTowerConfig(**SMALL, item_bias=True)).eval()
    assert model.vector_dim == 9
    counts = torch.zeros(2, data.num_items + 1)
    tr = data.splits["train"]
    for i, d in zip(tr.item, tr.domain):
        counts[d, i] += 1
    model.set_item_prior(counts, temperature=0.1)
    assert torch.allclose(model.item_bias, 0.1 * torch.log1p(counts)) and bool((model.item_bias[:, 0] == 0).all())
    store = FeatureStore(data)
    users, items = np.array([1, 2, 3]), np.array([1, 5, 9])
    dom = torch.tensor([1, 1, 1])
    with torch.no_grad():
        u = model.user_embedding(store.user_features(users, dom), dom)
        v = model.item_embedding(store.item_features(items, 1), dom)
        cos = (model.user_tower(store.user_features(users, dom), dom)
               * model.item_tower(store.item_features(items, 1), dom)).sum(-1)
    assert torch.allclose(u[:, -1], torch.ones(3))
    assert torch.allclose((u * v).sum(-1), cos + model.item_bias[1, torch.as_tensor(items)], atol=1e-6)


def test_an_ensemble_scores_the_weighted_sum_of_its_members(tmp_path):
    from adirec.cli import main
    from adirec.data.spec import DataSpec
    from adirec.runs import ensemble_runs, load_run
    from adirec.train.loop import TwoTowerScorer
    args = ["--data", "synthetic:tiny", "--model", "adi-se", "--epochs", "1", "--embedding-dim", "8", "--expert-hidden", "16",
            "--expert-out", "8", "--forward-hidden", "8", "--output-dim", "8", "--no-progress", "--threads", "1",
            "--eval-ks", "10", "--early-stopping-metric", "recall@10", "--no-self-training"]
    runs = []
    for seed, extra in ((0, []), (1, ["--item-bias"])):
        run = tmp_path / f"r{seed}"
        assert main(["train", *args, "--seed", str(seed), "--out", str(run), *extra]) == 0
        runs.append(run)
    ens = ensemble_runs(runs, tmp_path / "ens", weights=[0.25, 2.0])
    model, data, cfg = load_run(ens)
    assert cfg["model"] == "ensemble" and model.vector_dim == 8 + 9
    store = FeatureStore(data)
    users, items = np.arange(1, 6), np.asarray(data.corpus[1][:7])
    want = sum(w * TwoTowerScorer(load_run(r)[0], store, data.num_items).score(users, 1, items)
               for w, r in zip((0.25, 2.0), runs))
    got = TwoTowerScorer(model, store, data.num_items).score(users, 1, items)
    assert torch.allclose(got, want, atol=1e-5)
    assert main(["evaluate", str(ens), "--k", "10"]) == 0
    assert DataSpec(**cfg["data"]).source == "synthetic:tiny"


@pytest.mark.parametrize("encoder, batching, size", [("transformer", "auto", 8192), ("mean", "auto", 1024),
                                                     ("transformer", "rows", 1024)])
def test_batch_size_auto_follows_how_the_run_batches(tmp_path, encoder, batching, size):
    from adirec.train.config import TrainConfig
    from adirec.train.loop import Trainer
    data = _timeline_data(n_users=40)
    model = TwoTowerModel(data.schema, data.num_domains, TwoTowerConfig(**SMALL, history_encoder=encoder))
    cfg = TrainConfig(epochs=1, batch_size="auto", batching=batching, num_negatives=4, progress=False,
                      holdout_fraction=0.25, eval_ks=(5,), early_stopping_metric="recall@5",
                      self_training={"enabled": False})
    trainer = Trainer(model, data, cfg, out_dir=tmp_path)
    assert (trainer.sequences is not None) == (size == 8192)
    assert trainer.batch_size == size and trainer.fit()["batch_size"] == size
    # a number is taken as given, however the run batches
    assert Trainer(model, data, TrainConfig(**{**cfg.__dict__, "batch_size": 7})).batch_size == 7


def test_auto_batching_takes_rows_when_the_run_self_trains_and_sequences_refuse_it(tmp_path):
    """An order-aware encoder under a self-training preset (adi-se --history-encoder transformer)
    trains: auto batches rows, since Algorithm 1 labels rows; asking for sequences says why not."""
    from adirec.train.config import TrainConfig
    from adirec.train.loop import Trainer
    data = _timeline_data(n_users=40)
    model = TwoTowerModel(data.schema, data.num_domains, TwoTowerConfig(**SMALL, history_encoder="transformer"))
    cfg = TrainConfig(epochs=2, batch_size="auto", num_negatives=4, progress=False, holdout_fraction=0.25,
                      eval_ks=(5,), early_stopping_metric="recall@5", self_training={"enabled": True})
    trainer = Trainer(model, data, cfg, out_dir=tmp_path)
    assert trainer.sequences is None and trainer.batch_size == 1024
    assert trainer.fit()["epochs_run"] == 2
    with pytest.raises(ValueError, match="self-training labels rows, not sequences"):
        Trainer(model, data, TrainConfig(**{**cfg.__dict__, "batching": "sequences"}))


@pytest.mark.parametrize("bad", ["big", 0, -1, 2.5, True])
def test_batch_size_is_a_positive_integer_or_auto(bad):
    from adirec.train.config import TrainConfig
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=bad)
