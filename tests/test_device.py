import os
"""Device placement: the trainer, scorer, self-training and evaluation put every tensor they make
on the training device.

Without a GPU, placement is checked on the CPU with torch's default device switched to ``meta``:
a tensor created without an explicit device (or converted from NumPy with ``as_tensor``) then
lands on ``meta``, and mixing it with the CPU model fails or cannot be read back. A GPU run
would fail at exactly those places with a device mismatch.
"""
import numpy as np
import pytest
import torch

from adirec.data.batches import FeatureStore, iterate_batches
from adirec.data.sources import load_source
from adirec.models.config import TwoTowerConfig
from adirec.models.registry import MODELS, build_config, build_model
from adirec.models.per_domain import PerDomainModel
from adirec.data.split import restrict_to_domain
from adirec.train.distributed import resolve_device
from adirec.train.config import TrainConfig
from adirec.train.loop import Trainer, TwoTowerScorer
from adirec.train.sampler import NegativeSampler

SMALL = dict(embedding_dim=8, expert_hidden=(16,), expert_out=8, forward_hidden=(8,), output_dim=8)


@pytest.fixture(scope="module")
def data():
    return load_source("synthetic:tiny")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")
    else:
        assert resolve_device("auto").type == "cuda"
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="cuda:x")
    assert TrainConfig(device="cuda:1").device == "cuda:1"  # availability is checked when training


def test_resolve_device_gives_each_torchrun_process_its_gpu(monkeypatch):
    # the GPU choice alone, with CUDA's answers faked (nothing runs on a GPU here)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 2)
    with pytest.raises(ValueError, match="all 4 processes"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one visible GPU per process
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="only 1 GPU"):
        resolve_device("cuda:3")


def _trainer(data, name: str, report_split: str, protocol: str, batching: str = "rows") -> Trainer:
    torch.manual_seed(0)
    model = build_model(name, data.schema, data.num_domains, build_config(name, **SMALL))
    if isinstance(model, PerDomainModel):  # each sub-model trains with its own Trainer, on its domain
        model, data = model.models[0], restrict_to_domain(data, 0)
    cfg = TrainConfig(device="cpu", num_negatives=32, batch_size=128, progress=False, batching=batching,
                      self_training={"enabled": batching == "rows"})
    return Trainer(model, data, cfg, report_split=report_split, protocol=protocol)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_step_creates_no_tensor_off_device(data, name):
    trainer = _trainer(data, name, "test", "full")
    batch = next(iterate_batches(trainer.train_data.splits["train"], 128, shuffle=True))
    with torch.device("meta"):
        loss, n_pseudo = trainer.loss(batch, 0.2)  # with pseudo-labels
        loss.backward()
    assert loss.device.type == "cpu" and torch.isfinite(loss)
    assert n_pseudo > 0 or trainer.data.num_domains == 1
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "cpu" for g in grads)


@pytest.mark.parametrize("softmax", ["full", "sampled"])
def test_a_sequence_step_creates_no_tensor_off_device(data, softmax):
    trainer = _trainer(data, "adi-plus", "test", "full", batching="sequences")
    trainer.objective.full = softmax == "full"
    batch = next(iter(trainer._epoch_batches(0)))
    with torch.device("meta"):
        loss, _ = trainer.loss(batch, 0.0)
        loss.backward()
    assert loss.device.type == "cpu" and torch.isfinite(loss)
    grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "cpu" for g in grads)


@pytest.mark.parametrize("report_split,protocol", [("test", "full"), ("valid", "sampled")])
def test_validation_creates_no_tensor_off_device(data, report_split, protocol):
    trainer = _trainer(data, "adi-se", report_split, protocol)
    with torch.device("meta"):
        metrics = trainer.validate()
    assert 0.0 <= metrics[trainer.metric]["mean"] <= 1.0


def test_scorer_and_store_place_tensors_on_the_model_device(data):
    model = build_model("adi-se", data.schema, data.num_domains, TwoTowerConfig(**SMALL)).eval()
    store = FeatureStore(data)
    feats = store.user_features(np.array([1, 2]), np.array([0, 1]), device="meta")
    assert all(t.device.type == "meta" for t in feats.values())
    assert all(t.device.type == "cpu" for t in store.item_features(np.array([1, 2]), 0).values())
    scorer = TwoTowerScorer(model, store, data.num_items)
    with torch.device("meta"):
        s = scorer.score(np.array([1, 2, 3]), 1, data.corpus[1][:5])
    assert s.shape == (3, 5) and s.device.type == "cpu"


def test_sampler_draws_on_its_device():
    counts = np.array([0, 5, 1, 0, 3])
    sampler = NegativeSampler(counts, seed=3, device="cpu")
    draw = sampler.sample(1000)
    assert draw.device.type == "cpu" and set(draw.tolist()) <= {1, 2, 4}
    assert sampler.sample(0).shape == (0,)  # in-batch negatives only
    again = NegativeSampler(counts, seed=3).sample(1000)
    assert torch.equal(draw, again)


def test_default_threads_leave_out_the_cpus_others_keep_busy(monkeypatch):
    from adirec import utils
    assert utils.default_threads(cpus=2, busy=0.0) == 2
    assert utils.default_threads(cpus=2, busy=0.4) == 2
    assert utils.default_threads(cpus=2, busy=1.0) == 1
    assert utils.default_threads(cpus=2, busy=5.0) == 1  # never fewer than one
    assert utils.default_threads(cpus=8, busy=2.6) == 5
    busy = utils.busy_cpus(sample_seconds=0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1)
    # the measurement is of /proc/stat's per-CPU non-idle time, over the CPUs this process may use:
    # cpu0 3 of 4 jiffies busy, cpu1 idle, cpu2 (not ours) fully busy
    stats = iter(["cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 100 200 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0\n",
                  "cpu  0 0 0 0 0 0 0 0\ncpu0 130 0 130 220 0 0 0 0\ncpu1 0 0 0 180 0 0 0 0\ncpu2 80 0 0 0 0 0 0 0\n"])

    class FakeStat:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return next(stats)

    monkeypatch.setattr("builtins.open", lambda *a, **k: FakeStat())
    monkeypatch.setattr(utils.os, "sched_getaffinity", lambda pid: {0, 1})
    assert utils.busy_cpus(sample_seconds=0.0) == pytest.approx(60 / 80)
