"""The training loss restricts each domain's softmax to that domain's corpus."""
import numpy as np
import pytest
import torch

from adirec.data.batches import Batch
from adirec.data.sources import load_source
from adirec.models.adi import TwoTowerModel
from adirec.models.registry import build_config
from adirec.train.config import TrainConfig
from adirec.train.loop import Trainer


def _trainer(corpus_only: bool):
    data = load_source("synthetic:tiny")
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, data.num_domains, build_config("dnn", embedding_dim=8))
    cfg = TrainConfig(num_negatives=16, progress=False, device="cpu", corpus_negatives_only=corpus_only,
                      softmax="sampled",
                      self_training={"enabled": False})
    return data, Trainer(model, data, cfg, report_split="test")


def test_negatives_outside_the_domain_corpus_do_not_count():
    data, t = _trainer(True)
    tr = t.train_data.splits["train"]
    batch = Batch.from_interactions(tr, np.arange(64))
    captured = {}
    real = torch.nn.functional.cross_entropy

    def spy(z, target, **kw):
        captured["z"] = z
        return real(z, target, **kw)

    torch.nn.functional.cross_entropy = spy
    try:
        torch.manual_seed(1)
        t.loss(batch, 0.0)
    finally:
        torch.nn.functional.cross_entropy = real
    z = captured["z"]  # (B, N) corrected logits
    for row in range(len(batch)):
        d = int(batch.domain[row])
        allowed = np.isin(batch.item.numpy(), data.corpus[d])
        masked = torch.isinf(z[row, :len(batch)]).numpy()
        # in-batch columns outside the row's corpus are masked; the row's own positive never is
        assert not masked[row]
        assert np.all(masked[~allowed])
        hits = (batch.item == batch.item[row]).numpy()
        assert np.all(masked[allowed & ~hits] == False)  # noqa: E712  in-corpus negatives stay
    assert (~np.isin(batch.item.numpy(), np.concatenate(data.corpus[1:]))).any()  # the check had work
    assert torch.isfinite(z[torch.arange(len(batch)), torch.arange(len(batch))]).all()


def test_full_softmax_runs_over_every_corpus_without_corpus_negatives_only(monkeypatch):
    """dnn-blind's one softmax over everything holds under --softmax full too: each row is scored
    against the union of the domains' corpora, with its positive at the right column."""
    import adirec.train.objective as objective

    data = load_source("synthetic:tiny")
    union = np.unique(np.concatenate(data.corpus))
    assert all(len(c) < len(union) for c in data.corpus)  # the corpora differ: the check has work
    for corpus_only in (True, False):
        torch.manual_seed(0)
        model = TwoTowerModel(data.schema, data.num_domains, build_config("dnn", embedding_dim=8))
        cfg = TrainConfig(progress=False, device="cpu", corpus_negatives_only=corpus_only, softmax="full",
                          self_training={"enabled": False})
        t = Trainer(model, data, cfg, report_split="test")
        tr = t.train_data.splits["train"]
        batch = Batch.from_interactions(tr, np.arange(64))
        calls = []
        real = objective.full_softmax_loss

        def spy(u, items, target, **kw):
            calls.append((items.shape[0], target))
            return real(u, items, target, **kw)

        monkeypatch.setattr(objective, "full_softmax_loss", spy)
        t.loss(batch, 0.0)
        monkeypatch.setattr(objective, "full_softmax_loss", real)
        domains = sorted({int(d) for d in batch.domain})
        assert len(calls) == len(domains)
        for d, (columns, target) in zip(domains, calls):
            corpus = union if not corpus_only else np.asarray(data.corpus[d])
            assert columns == len(corpus)
            rows = (batch.domain == d).numpy()
            assert np.array_equal(corpus[target.numpy()], batch.item.numpy()[rows])  # the positives' columns


def test_balanced_domain_weighting_weighs_every_domain_the_same():
    from dataclasses import replace
    from adirec.train.loop import domain_balance
    # N / (D N_d): domains of 3, 1 and 2 rows among 6, and a domain without rows
    factor = domain_balance(np.array([0, 0, 0, 1, 2, 2]), np.ones(6), 4)
    assert torch.allclose(factor, torch.tensor([6 / 12, 6 / 4, 6 / 8, 0.0]))
    assert torch.allclose(factor * torch.tensor([3.0, 1.0, 2.0, 0.0]), torch.tensor([1.5, 1.5, 1.5, 0.0]))
    # with a weight column the domains' summed weights are balanced: 2 + 1 | 3 | 0.5 + 0.5 of 7
    weighted = domain_balance(np.array([0, 0, 1, 2, 2]), np.array([2.0, 1.0, 3.0, 0.5, 0.5]), 3)
    assert torch.allclose(weighted, torch.tensor([7 / 9, 7 / 9, 7 / 3]))

    data = load_source("synthetic:tiny")
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, data.num_domains, build_config("dnn", embedding_dim=8))
    cfg = TrainConfig(progress=False, device="cpu", softmax="full", domain_weighting="balanced",
                      self_training={"enabled": False})
    t = Trainer(model, data, cfg, report_split="test")
    tr = t.train_data.splits["train"]
    expected = domain_balance(tr.domain, tr.weight, data.num_domains)
    assert torch.equal(t.objective.domain_factor, expected)
    assert len(set(expected.tolist())) == data.num_domains  # the tiny set's domains differ in size
    # the batch loss is the factor-weighted mean of the rows' own losses (eval mode: no dropout)
    model.eval()
    batch = Batch.from_interactions(tr, np.arange(48))
    balanced = t.objective.rows_loss(batch, 0.0)[0]
    t.objective.domain_factor = None
    rows = torch.stack([t.objective.rows_loss(replace(batch, weight=torch.eye(len(batch))[i]), 0.0)[0]
                        for i in range(len(batch))])  # (B,) each row's loss alone
    w = expected[batch.domain]
    assert torch.allclose(balanced, (w * rows).sum() / w.sum(), atol=1e-6)
    assert not torch.allclose(balanced, rows.mean(), atol=1e-4)  # and differs from the unweighted mean
    # a stream does not count its domains' rows
    with pytest.raises(ValueError, match="needs each domain's training rows"):
        Trainer(model, data, cfg, report_split="test", batches=object())


def test_balanced_domain_weighting_reaches_the_loss_over_sequences(monkeypatch):
    """Over batches of sequences every position's weight is its domain's factor."""
    from adirec.train.loop import domain_balance
    data = load_source("synthetic:tiny")
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, data.num_domains, build_config("dnn-plus", data.num_domains, embedding_dim=8))
    cfg = TrainConfig(progress=False, device="cpu", softmax="full", domain_weighting="balanced",
                      batching="sequences", batch_size=256, self_training={"enabled": False})
    t = Trainer(model, data, cfg, report_split="test")
    assert t.sequences is not None  # the run trains on sequences
    seen = {}
    real = t.objective._full

    def spy(u, item, domain, weight):
        seen.update(domain=domain, weight=weight)
        return real(u, item, domain, weight)

    monkeypatch.setattr(t.objective, "_full", spy)
    batch = next(iter(t._epoch_batches(0)))
    t.objective.sequence_loss(batch)
    rows = batch.target > 0
    tr = t.train_data.splits["train"]
    factor = domain_balance(tr.domain, tr.weight, data.num_domains)
    assert torch.equal(seen["weight"], batch.weight[rows] * factor[batch.domain[rows]])
    assert len(set(seen["weight"].tolist())) > 1  # positions of more than one domain, weighed apart
