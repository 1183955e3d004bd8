"""Data-parallel training on torch.distributed: 2 CPU processes (gloo) against 1 process.

One pair of processes is spawned for the whole module (it is the slow part) and runs every
check; the tests below read what it reported.
"""
from __future__ import annotations

import copy
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adirec.data.convert import convert
from adirec.data.parquet import ParquetLayout
from adirec.data.sources.synthetic import load_synthetic
from adirec.eval.protocols import SeenItems, evaluate
from adirec.models.adi import TwoTowerModel
from adirec.models.layers import DomainSpecificBatchNorm
from adirec.models.registry import build_config
from adirec.data.spec import DataSpec
from adirec import runs
from adirec.train import distributed as ddp
from adirec.train.config import SelfTrainingConfig, TrainConfig
from adirec.train.loop import Trainer, TwoTowerScorer
from adirec.utils import load_weights

SMALL = dict(embedding_dim=8, expert_hidden=(32,), expert_out=16, forward_hidden=(16,), output_dim=16)
EPOCHS = 3


def _config(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=EPOCHS, batch_size=256, num_negatives=64, progress=False, device="cpu",
                                 patience=0, num_threads=1), **kw})


def _gather(x: np.ndarray) -> list[np.ndarray]:
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, x)
    return parts


def _flat_grads(model) -> np.ndarray:
    out = []
    for p in model.parameters():
        g = torch.zeros_like(p) if p.grad is None else p.grad.to_dense()
        out.append(g.flatten())
    return torch.cat(out).numpy().copy()


class _Recording:
    """A batch source that remembers the (user, item) pairs it handed out."""

    def __init__(self, stream):
        self.stream, self.rows = stream, []

    def __len__(self):
        return len(self.stream)

    def __call__(self, **kw):
        for b in self.stream(**kw):
            self.rows.append(np.stack([b.user.numpy(), b.item.numpy()], axis=1))
            yield b


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    assert ddp.init_from_env() and ddp.rank_world() == (rank, world)
    res: dict = {}
    data = load_synthetic("tiny")

    # 1. `adirec train` under torchrun: every rank trains, rank 0 alone writes the run
    summary = runs.train_run(DataSpec("synthetic:tiny"), "adi-se", f"{tmp}/run2", model_overrides=SMALL,
                            train_config=_config())
    res["summary"] = summary

    # 2. one gradient step through DDP = the mean of the ranks' own gradients
    torch.manual_seed(0)
    model = TwoTowerModel(data.schema, data.num_domains, build_config("adi-se", **SMALL))
    t = Trainer(model, data, _config(num_negatives=16, self_training=SelfTrainingConfig(enabled=False)))
    batch = next(iter(t._epoch_batches(0)))
    model.train()
    t.sampler.generator.manual_seed(rank)  # the same negatives for both computations
    loss, _ = t.loss(batch, 0.0)
    model.zero_grad(set_to_none=True)
    loss.backward()
    local = _flat_grads(model)
    t.sampler.generator.manual_seed(rank)
    loss, _ = t._ddp(batch, 0.0)
    model.zero_grad(set_to_none=True)
    loss.backward()
    res["grad_err"] = float(np.abs(_flat_grads(model) - np.mean(_gather(local), axis=0)).max())
    res["grad_scale"] = float(np.abs(local).max())
    res["batches_disjoint"] = len(set(map(tuple, np.concatenate(
        [np.stack([u, i], 1) for u, i in _gather(np.stack([batch.user.numpy(), batch.item.numpy()]))]).tolist())))

    # 3. DSBN running statistics: rank-local during the epoch (DDP must not broadcast rank 0's
    # over the others at each forward), then averaged over ranks
    bn = DomainSpecificBatchNorm(4, 2)
    local_bn = copy.deepcopy(bn)
    wrapped = ddp.wrap(bn, lambda x, d: bn(x, d).sum())
    g = torch.Generator().manual_seed(rank)
    for _ in range(3):
        x, d = torch.randn(32, 4, generator=g) + 3.0 * rank, torch.arange(32) % 2
        wrapped(x, d).backward()
        local_bn(x, d)
    res["dsbn_rank_local"] = all(torch.equal(a, b) for a, b in zip(bn.buffers(), local_bn.buffers()))
    bufs = lambda: torch.cat([b.flatten().double() for b in model.buffers() if b.is_floating_point()]).numpy()  # noqa: E731
    before = _gather(bufs())
    res["buffers_differ_before"] = bool(np.abs(before[0] - before[1]).max() > 1e-6)
    ddp.average_buffers(model)
    after = _gather(bufs())
    res["buffers_equal_after"] = bool(np.array_equal(after[0], after[1]))
    res["buffers_mean_err"] = float(np.abs(after[0] - np.mean(before, axis=0)).max())

    # 4. evaluation: each rank scores a share of the users, the raw results are gathered
    if rank == 0:
        load_weights(model, f"{tmp}/run2/model.safetensors")
    for p in model.parameters():
        dist.broadcast(p.data, 0)
    for b in model.buffers():
        dist.broadcast(b, 0)
    scorer = TwoTowerScorer(model, t.store, data.num_items)
    r = ddp.evaluate_across_ranks(scorer, data, split="test", protocol="full", ks=[10, 50], seen=SeenItems(data))
    if rank == 0:
        np.savez(f"{tmp}/gathered.npz", domain=r.query_domain, user=r.query_user,
                 **{k.replace("@", "_"): v for k, v in r.per_query.items()})
        res["eval_metrics"] = r.metrics(data.domains)

    # 5. streaming from Parquet with uneven shares (3 row groups over 2 ranks): Join, no row lost
    view = ParquetLayout(f"{tmp}/tiny_pq").training_view()
    rec = _Recording(view.batches)
    torch.manual_seed(0)
    model = TwoTowerModel(view.data.schema, view.data.num_domains, build_config("dnn", **SMALL))
    Trainer(model, view.data, _config(epochs=1), batches=rec, store=view.store,
            item_counts=view.item_counts).fit()
    mine = np.concatenate(rec.rows)
    res["stream_rows"] = [len(m) for m in _gather(mine)]
    both = np.concatenate(_gather(mine))
    res["stream_distinct"] = len({(int(u), int(i)) for u, i in both})
    params = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()
    res["params_equal"] = bool(np.array_equal(*_gather(params)))

    with open(f"{tmp}/rank{rank}.json", "w") as fh:
        json.dump(res, fh)
    ddp.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    convert(load_synthetic("tiny"), tmp / "tiny_pq", row_group_rows=1000)  # 1000 + 1000 + 806 rows
    try:
        mp.spawn(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, join=True)
    except mp.ProcessExitedException:
        # a rank killed by a signal (seen once in ~30 runs as an abort inside gloo, or a port
        # taken between _free_port and bind): one fresh attempt; a real error fails twice
        tmp = tmp_path_factory.mktemp("ddp_retry")
        convert(load_synthetic("tiny"), tmp / "tiny_pq", row_group_rows=1000)
        mp.spawn(_worker, args=(2, _free_port(), str(tmp)), nprocs=2, join=True)
    return tmp, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_one_and_two_processes_reach_the_same_metrics(two_ranks, tmp_path):
    tmp, (r0, r1) = two_ranks
    assert r1["summary"] is None  # the other ranks report nothing
    two = r0["summary"]["best_valid_recall@50"]
    one = runs.train_run(DataSpec("synthetic:tiny"), "adi-se", tmp_path / "run1", model_overrides=SMALL,
                        train_config=_config())["best_valid_recall@50"]
    # seed-to-seed spread of this set-up (1 process, seeds 0-3) is 0.52-0.59; untrained ~0.3
    assert one > 0.42 and two > 0.42
    assert abs(one - two) < 0.1


def test_only_rank_zero_writes_the_run(two_ranks):
    tmp, (r0, _) = two_ranks
    run = tmp / "run2"
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == r0["summary"]["epochs_run"] == EPOCHS  # not once per rank
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        *(f"epoch_00{e}.safetensors" for e in (1, 2, 3)), "last.json", "last.safetensors"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "adi-se" and cfg["data"]["source"] == "synthetic:tiny"


def test_ddp_gradient_is_the_mean_of_rank_gradients(two_ranks):
    _, (r0, r1) = two_ranks
    assert r0["grad_scale"] > 0
    assert r0["grad_err"] < 1e-5 * max(1.0, r0["grad_scale"]) and r1["grad_err"] < 1e-5 * max(1.0, r1["grad_scale"])
    assert r0["batches_disjoint"] == 256  # two shards of 128 rows, no row on both ranks


def test_dsbn_statistics_are_rank_local_then_averaged(two_ranks):
    _, (r0, r1) = two_ranks
    assert r0["dsbn_rank_local"] and r1["dsbn_rank_local"]  # as if each rank ran alone
    assert r0["buffers_differ_before"]
    assert r0["buffers_equal_after"] and r1["buffers_equal_after"]
    assert r0["buffers_mean_err"] < 1e-6  # float32 sum then halve


def test_gathered_evaluation_equals_single_process(two_ranks):
    tmp, (r0, _) = two_ranks
    data = load_synthetic("tiny")
    model = TwoTowerModel(data.schema, data.num_domains, build_config("adi-se", **SMALL))
    load_weights(model, tmp / "run2" / "model.safetensors")
    from adirec.data.batches import FeatureStore
    ref = evaluate(TwoTowerScorer(model, FeatureStore(data), data.num_items), data, split="test",
                   protocol="full", ks=[10, 50], seen=SeenItems(data))
    got = np.load(tmp / "gathered.npz")
    order_ref = np.lexsort((ref.query_user, ref.query_domain))
    order_got = np.lexsort((got["user"], got["domain"]))
    assert np.array_equal(ref.query_user[order_ref], got["user"][order_got])
    assert np.array_equal(ref.query_domain[order_ref], got["domain"][order_got])
    for k, v in ref.per_query.items():
        assert np.allclose(v[order_ref], got[k.replace("@", "_")][order_got], atol=1e-6), k
    m = ref.metrics(data.domains)
    for k, row in m.items():
        assert r0["eval_metrics"][k] == pytest.approx(row, abs=1e-6)


def test_streamed_shards_cover_the_file_once_with_uneven_ranks(two_ranks):
    tmp, (r0, r1) = two_ranks
    n = ParquetLayout(tmp / "tiny_pq").split_rows("train")
    rows = r0["stream_rows"]
    assert sum(rows) == n and rows[0] != rows[1]  # uneven shares: Join kept the ranks in step
    assert r0["stream_distinct"] == n  # synthetic users never repeat an item: pairs are row ids
    assert r0["params_equal"] and r1["params_equal"]


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ddp.init_from_env() is False
    assert ddp.rank_world() == (0, 1) and ddp.is_main()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for k in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        ddp.init_from_env()
    assert ddp.default_backend("cpu") == "gloo" and ddp.default_backend("cuda") == "nccl"
