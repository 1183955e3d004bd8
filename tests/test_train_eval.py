import json
import math

import numpy as np
import pytest
import torch

from adirec.eval.metrics import aggregate, ranking_metrics
from adirec.train.loss import sampled_softmax_loss
from adirec.train.sampler import NegativeSampler
from adirec.train.config import SelfTrainingConfig
from adirec.train.self_training import select_top_fraction


def test_logq_corrected_loss_matches_hand_computation():
    # two rows, three columns: columns 0, 1 are the in-batch positives, column 2 a sampled negative
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    loss = sampled_softmax_loss(logits, torch.tensor([0, 1]), torch.tensor([7, 8]), torch.tensor([7, 8, 9]),
                                log_q, temperature=0.5)
    def row(z, pos):
        return -(z[pos] - math.log(sum(math.exp(x) for x in z)))
    z0 = [2 / 0.5 - math.log(0.5), 1 / 0.5 - math.log(0.25), 0.5 / 0.5 - math.log(0.25)]
    z1 = [0 / 0.5 - math.log(0.5), 3 / 0.5 - math.log(0.25), 1 / 0.5 - math.log(0.25)]
    expected = (row(z0, 0) + row(z1, 1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_accidental_hits_are_masked_and_weights_apply():
    logits = torch.tensor([[1.0, 5.0, 0.0], [1.0, 2.0, 0.0]])
    log_q = torch.zeros(3)
    # column 1 holds item 7 again: an accidental hit for row 0, a negative for row 1
    loss = sampled_softmax_loss(logits, torch.tensor([0, 1]), torch.tensor([7, 8]), torch.tensor([7, 7, 9]),
                                log_q, weight=torch.tensor([1.0, 0.0]))
    expected = -(1.0 - math.log(math.exp(1.0) + math.exp(0.0)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_loss_rejects_wrong_shapes_and_temperature():
    with pytest.raises(ValueError, match="logits must be"):
        sampled_softmax_loss(torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([1, 2]),
                             torch.tensor([1, 2, 3]), torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        sampled_softmax_loss(torch.zeros(1, 1), torch.tensor([0]), torch.tensor([1]), torch.tensor([1]),
                             torch.zeros(1), temperature=0.0)


def test_sampler_proposal_and_log_q():
    counts = np.array([0, 1, 4, 0, 16])
    s = NegativeSampler(counts, proposal="unigram", alpha=0.5, seed=0)
    q = s.q.numpy()
    assert q[0] == 0 and q[3] == 0
    assert q[1:3].tolist() == pytest.approx([1 / 7, 2 / 7]) and q[4] == pytest.approx(4 / 7)
    draws = s.sample(20000).numpy()
    assert set(np.unique(draws)) <= {1, 2, 4}
    assert np.mean(draws == 4) == pytest.approx(4 / 7, abs=0.02)
    lq = s.log_q(torch.tensor([4]), num_in_batch=10, num_sampled=5)
    assert lq.item() == pytest.approx(math.log(10 * 16 / 21 + 5 * 4 / 7), rel=1e-6)
    u = NegativeSampler(counts, proposal="uniform")
    assert u.q.numpy()[[1, 2, 4]].tolist() == pytest.approx([1 / 3] * 3)
    with pytest.raises(ValueError, match="proposal"):
        NegativeSampler(counts, proposal="zipf")


def test_ranking_metrics_on_hand_made_rankings():
    hits = np.array([[False, True, False, False],   # one relevant item, found at rank 2
                     [True, False, False, True],    # two relevant, both in top 4
                     [False, False, False, False]])
    m = ranking_metrics(hits, np.array([1, 2, 3]), [1, 4])
    assert m["recall@1"].tolist() == [0.0, 0.5, 0.0]
    assert m["recall@4"].tolist() == pytest.approx([1.0, 1.0, 0.0])
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@4"].tolist() == pytest.approx([1 / math.log2(3), (1 + 1 / math.log2(5)) / idcg2, 0.0])
    agg = aggregate(m, np.array([0, 0, 1]), ["x", "y", "z"])
    assert agg["recall@4"] == pytest.approx({"x": 1.0, "y": 0.0, "mean": 0.5})


def test_self_training_selects_exactly_the_top_fraction():
    conf = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0])
    assert sorted(select_top_fraction(conf, 0.3).tolist()) == [1, 3, 5]
    assert len(select_top_fraction(conf, 0.05)) == 0
    assert len(select_top_fraction(torch.rand(1000), 0.2)) == 200
    cfg = SelfTrainingConfig(start_epoch=1, p0=0.1, delta_p=0.05, max_p=0.2)
    assert [cfg.fraction(e) for e in range(5)] == pytest.approx([0.0, 0.1, 0.15, 0.2, 0.2])
    assert SelfTrainingConfig(enabled=False).fraction(5) == 0.0
    with pytest.raises(ValueError, match="max_p"):
        SelfTrainingConfig(max_p=1.5)


def test_holdout_and_sampled_candidates_follow_the_protocol():
    from adirec.data.sources import load_source
    from adirec.data.split import holdout_split, sample_candidates
    data = load_source("synthetic:tiny")
    reduced, held = holdout_split(data, 0.5, seed=0)
    tr, full = reduced.splits["train"], data.splits["train"]
    assert len(tr) + len(held) == len(full)
    assert len(np.unique(held.user)) == len(held)  # one held-out positive per chosen user
    key = data.num_items + 1
    train_pairs = set((tr.user * key + tr.item).tolist())
    assert not set((held.user * key + held.item).tolist()) & train_pairs
    cands = sample_candidates(reduced, held, 20, seed=1)
    assert cands.items.shape == (len(held), 20)
    assert np.array_equal(cands.items[:, 0], held.item)
    for u, d, row in zip(cands.user, cands.domain, cands.items):
        row = row[row >= 0]
        assert len(np.unique(row)) == len(row)
        assert np.isin(row[1:], data.corpus[d]).all()
        assert not {u * key + i for i in row[1:].tolist()} & train_pairs  # negatives unseen by the user


def test_cosine_schedule_sets_each_steps_rate_from_the_planned_epochs():
    from adirec.data.sources import load_source
    from adirec.models.adi import TwoTowerModel
    from adirec.models.registry import build_config
    from adirec.train.config import TrainConfig, lr_factor
    from adirec.train.loop import Trainer

    assert lr_factor("constant", 0.7) == 1.0
    assert [lr_factor("cosine", x) for x in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")

    data = load_source("synthetic:tiny")
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, data.num_domains, build_config("dnn", embedding_dim=8))
    cfg = TrainConfig(epochs=3, batch_size=256, lr=0.01, lr_schedule="cosine", num_negatives=16, patience=0,
                      progress=False, device="cpu", self_training={"enabled": False})
    trainer = Trainer(model, data, cfg, report_split="test")
    rates, step = [], trainer.optimizer.step

    def recording_step(*args, **kwargs):
        rates.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.fit()
    n = len(trainer.train_data.splits["train"])
    per_epoch = math.ceil(n / 256)
    assert len(rates) == 3 * per_epoch
    # step s of epoch e starts after e + s * 256 / n of the 3 planned epochs
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * (e + min(1.0, s * 256 / n)) / 3))
                for e in range(3) for s in range(per_epoch)]
    assert rates == pytest.approx(expected)
    assert rates[0] == pytest.approx(0.01) and rates[-1] < 0.01 * 0.05


def test_self_training_says_once_when_disjoint_catalogues_leave_nothing_to_label(tmp_path, capsys):
    import pyarrow as pa

    import adirec
    rng = np.random.default_rng(0)
    rows = [(f"u{u}", f"{name}{rng.integers(0, 15)}", name, t)  # each domain its own 15 items
            for u in range(40) for name in ("a", "b", "c") for t in range(6)]
    users, items, domains, times = map(list, zip(*rows))
    data = adirec.load_data(pa.table({"user": users, "item": items, "scenario": domains, "ts": times}),
                            user_col="user", item_col="item", domain_col="scenario", time_col="ts")
    run = adirec.train(data, "adi-se", out=str(tmp_path / "run"), epochs=3, progress=False, eval_ks=[10],
                       early_stopping_metric="recall@10", model_config={"embedding_dim": 8})
    epochs = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [e["pseudo_fraction"] > 0 for e in epochs] == [False, True, True]  # self-training was on
    assert all(e["pseudo_candidates"] == 0 and e["pseudo_rows"] == 0 for e in epochs)
    assert capsys.readouterr().err.count("self-training has nothing to label") == 1
