"""The training loss restricts each domain's softmax to that domain's corpus."""
import numpy as np
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
