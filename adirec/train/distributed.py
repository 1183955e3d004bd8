"""Data-parallel training and evaluation on ``torch.distributed`` (DistributedDataParallel).

Launch with torchrun; every process runs the same command and torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...) tells it its place::

    torchrun --nproc-per-node 4 -m adirec train --data parquet:DIR --model adi-se --out RUN
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
             --rdzv-endpoint HOST:29500 -m adirec train ...          # on each machine

How each piece of state stays right across ranks:

* **Data.** Each rank reads a disjoint share of the training rows: the in-memory path splits
  one global permutation (:func:`~adirec.data.batches.iterate_batches`), the Parquet path
  shards row groups over ranks and loader workers (:mod:`adirec.data.streaming`). The global
  batch is ``TrainConfig.batch_size``, split evenly over the ranks, so 1 and N processes take the
  same number of optimizer steps per epoch. Ranks whose share runs out first wait inside
  ``Join`` instead of rows being dropped.
* **Gradients.** The loss is computed inside the forward() of the DDP-wrapped
  :class:`LossModule`, so DDP averages the gradients of every step over the ranks. Embedding
  tables with sparse gradients need the ``gloo`` backend (NCCL has no sparse all-reduce).
* **Domain-specific batch norm.** DDP's default ``broadcast_buffers`` copies rank 0's buffers
  over every other rank at each forward, which would silently throw away the running
  statistics that the other ranks' rows of each domain produced. Buffers are therefore not
  broadcast: during an epoch each rank normalises with its own batch statistics (as plain
  BatchNorm under DDP does) and keeps its own running statistics, and at the end of every epoch,
  before validation and checkpoints, :func:`average_buffers` all-reduces them to their mean over
  ranks. Means of per-rank running means are the running mean of the global batches; running
  variances average the within-rank variances (the between-rank spread of shard means of iid
  shards is small, ``var / shard size``).
* **Self-training.** Pseudo-labels are selected per rank: each rank keeps the most confident
  fraction ``p`` of its own shard of the batch. Selection is per batch in single-process
  training too, and a rank's shard is a uniformly random part of the global batch, so this is
  the same rule applied to a smaller sample (no extra communication per step).
* **Evaluation.** Each rank scores the users with ``user % world_size == rank``; the raw
  per-query results (``EvalResult.per_query``, ``query_domain``, ``query_user``, and each
  corpus item's best rank for coverage) are gathered (``EvalResult.concatenate``) and the
  metrics computed once from all of them (averaging per-rank metrics would weigh ranks,
  not users). Every rank gets the same numbers, so early stopping agrees everywhere.
* **Writes.** Rank 0 alone writes checkpoints, ``metrics.jsonl``, ``config.json`` and
  ``summary.json``.

Devices: ``TrainConfig.device="auto"`` gives each process the GPU ``cuda:LOCAL_RANK`` when CUDA
is available, else the CPU; the backend follows the device: ``nccl`` for CUDA, ``gloo`` for the
CPU. NCCL has no sparse all-reduce, so sparse embedding gradients on several GPU processes are
refused with an error that says so.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from adirec.eval.protocols import EvalResult, evaluate


# ---------------------------------------------------------------------- process group
def default_backend(device: torch.device | str = "cpu") -> str:
    """``nccl`` for CUDA tensors, ``gloo`` otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device this process trains on.

    ``"auto"``: ``cuda:LOCAL_RANK`` (torchrun's local rank, 0 without torchrun) when CUDA is
    available, else the CPU; ``cuda:0`` when the process sees a single GPU (a launcher that
    sets ``CUDA_VISIBLE_DEVICES`` per process). ``"cuda"`` alone means the same GPU choice, and
    is an error without CUDA; ``"cuda:N"`` and ``"cpu"`` are taken as given, but ``"cuda:N"`` is
    refused when torchrun starts several processes on the machine (they would share one GPU).
    """
    text = str(device)
    if text == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        text = "cuda"
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {text!r} asked for, but CUDA is not available in this build of "
                             f"torch ({torch.__version__}) or on this machine; use --device cpu")
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if dev.index is not None and local_processes > 1:
            raise ValueError(f"device {text!r} would put all {local_processes} processes of this machine on "
                             f"one GPU; under torchrun use --device auto or cuda (process i takes cuda:LOCAL_RANK)")
        if dev.index is not None:
            index = dev.index
        else:
            index = int(os.environ.get("LOCAL_RANK", "0")) if torch.cuda.device_count() > 1 else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device cuda:{index} asked for, but only {torch.cuda.device_count()} "
                             f"GPU(s) are visible")
        dev = torch.device("cuda", index)
    return dev


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def is_main() -> bool:
    return rank_world()[0] == 0


def init_from_env(backend: str | None = None, device: torch.device | None = None) -> bool:
    """Join the process group that torchrun describes in the environment, with ``backend`` or
    the one that suits ``device`` (see :func:`default_backend`). Returns True when this call
    created it (and the caller should :func:`shutdown` it), False when there is nothing to do
    (no torchrun, a single process, or a group that already exists)."""
    if not dist.is_available() or dist.is_initialized():
        return False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE={world} but {missing} are not set; launch with torchrun")
    if device is not None and device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives and all_gather_object use the current GPU
    dist.init_process_group(backend=backend or default_backend(device or "cpu"))
    # torchrun gives each process a fair share of the cores unless the user chose otherwise
    if "OMP_NUM_THREADS" not in os.environ:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


# ---------------------------------------------------------------------- training pieces
class LossModule(nn.Module):
    """Computes the training loss inside ``forward`` so that DistributedDataParallel sees the
    gradient-carrying computation; ``model`` is registered so DDP finds its parameters."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, *args, **kwargs):
        return self._loss_fn(*args, **kwargs)


def wrap(model: nn.Module, loss_fn, device: torch.device | None = None) -> nn.parallel.DistributedDataParallel:
    """The DDP module whose forward(*args) returns ``loss_fn(*args)``; ``model`` must already be
    on ``device`` (a GPU gives DDP its ``device_ids``).

    Buffers are not broadcast (see the module docstring: DSBN), and parameters that a rank's
    batch did not use (a domain's experts or norms when the domain is absent) are allowed.
    """
    DDP = nn.parallel.DistributedDataParallel
    # torch >= 2.13 names the per-forward buffer broadcast `forward_sync_buffers`
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False}
                               if "forward_sync_buffers" in inspect.signature(DDP).parameters
                               else {"broadcast_buffers": False})
    gpu = device if device is not None and device.type == "cuda" else None
    if gpu is not None and dist.get_backend() == "nccl" and any(
            isinstance(m, nn.Embedding) and m.sparse for m in model.modules()):
        raise ValueError("sparse embedding gradients cannot be all-reduced by NCCL across GPU processes; "
                         "use --no-sparse-embeddings, or --device cpu")
    return DDP(LossModule(model, loss_fn), find_unused_parameters=True,
               device_ids=[gpu.index] if gpu is not None else None, **no_sync)


def join(ddp_module: nn.parallel.DistributedDataParallel | None):
    """Context in which ranks with fewer batches shadow the others' collectives (uneven shares)."""
    if ddp_module is None:
        return contextlib.nullcontext()
    from torch.distributed.algorithms.join import Join
    return Join([ddp_module])


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """All-reduce every floating-point buffer (BN / DSBN running statistics) to its mean over
    ranks, and integer buffers (``num_batches_tracked``) to their maximum."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for b in module.buffers():
        if b.is_floating_point():
            dist.all_reduce(b, op=dist.ReduceOp.SUM)
            b.div_(world)
        else:
            dist.all_reduce(b, op=dist.ReduceOp.MAX)


def all_reduce_sums(values: list[float]) -> list[float]:
    """Sums over ranks of a few scalars (loss totals, row counts)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _collective_device() -> torch.device:
    """Where tensors for this process group's collectives must live (NCCL: the current GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---------------------------------------------------------------------- evaluation
def evaluate_across_ranks(scorer, data, *, split: str, protocol: str, ks: list[int], seen=None) -> EvalResult:
    """:func:`adirec.eval.protocols.evaluate` with the users shared out over the ranks and the raw
    per-query results gathered; without a process group, plain ``evaluate``."""
    rank, world = rank_world()
    if world == 1:
        return evaluate(scorer, data, split=split, protocol=protocol, ks=ks, seen=seen)
    target = data.splits[split]
    mine = target.take(np.flatnonzero(target.user % world == rank))
    local = None
    if np.any(mine.weight > 0):
        shard = dataclasses.replace(data, splits={**data.splits, split: mine})
        local = evaluate(scorer, shard, split=split, protocol=protocol, ks=ks, seen=seen)
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError(f"{data.name}: split {split!r} has no positive interactions")
    return EvalResult.concatenate(parts)
