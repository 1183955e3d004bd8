"""The training loop: mixed-domain batches, sampled softmax with logQ correction, self-training,
a checkpoint per epoch, early stopping on a validation split that is never the reported one.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from adirec.data.build import DataWarning
from adirec.data.batches import Batch, FeatureStore, SequenceBatch, SequenceBatches, iterate_batches
from adirec.data.dataset import HIST_ALL
from adirec.data.dataset import MultiDomainData
from adirec.data.split import holdout_split, sample_candidates
from adirec.eval.protocols import SeenItems
from adirec.models.adi import TwoTowerModel
from adirec.models.ensemble import RunModel
from adirec.train.config import TrainConfig, lr_factor, resolve_batch_size
from adirec.train.objective import RetrievalObjective
from adirec.train.sampler import NegativeSampler
from adirec.train.tensorboard import TensorBoardCurves
from adirec.train import distributed as ddp
from adirec.utils import (
    atomic_write_json, load_tensors, load_weights, read_json, save_tensors, save_weights, use_threads,
)


class TwoTowerScorer:
    """Scores (users x items) in a domain with a two-tower model; item vectors cached per domain.
    Scores are computed on the model's device and returned there."""

    def __init__(self, model: RunModel, store: FeatureStore, num_items: int, chunk: int = 8192):
        self.model, self.store, self.num_items, self.chunk = model, store, num_items, chunk
        self.device = next(model.parameters()).device
        self._items: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def item_matrix(self, domain: int) -> torch.Tensor:
        """(I + 1, O) vectors of every item (row 0 = unknown item) in ``domain``."""
        if domain not in self._items:
            self.model.eval()
            parts = []
            for start in range(0, self.num_items + 1, self.chunk):
                c = np.arange(start, min(start + self.chunk, self.num_items + 1))
                d = torch.full((len(c),), domain, dtype=torch.long, device=self.device)
                parts.append(self.model.item_embedding(self.store.item_features(c, domain, device=self.device), d))
            self._items[domain] = torch.cat(parts)
        return self._items[domain]

    @torch.no_grad()
    def user_matrix(self, users: np.ndarray, domain: int) -> torch.Tensor:
        self.model.eval()
        d = torch.full((len(users),), domain, dtype=torch.long, device=self.device)
        return self.model.user_embedding(self.store.user_features(users, d, device=self.device), d)

    @torch.no_grad()
    def score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        rows = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(self.device)
        return self.user_matrix(users, domain) @ self.item_matrix(domain)[rows].T


class SparseDenseAdam:
    """``torch.optim.SparseAdam`` for the embedding tables with sparse gradients (it reads and
    writes only the rows a batch touched) and ``torch.optim.Adam`` for every other parameter.
    Weight decay applies to the dense parameters only (SparseAdam has none)."""

    def __init__(self, sparse: list[nn.Parameter], dense: list[nn.Parameter], lr: float, weight_decay: float):
        self.optimizers: list[torch.optim.Optimizer] = [torch.optim.SparseAdam(sparse, lr=lr)]
        if dense:
            self.optimizers.append(_adam(dense, lr, weight_decay))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, s in zip(self.optimizers, states, strict=True):
            o.load_state_dict(s)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float):
    """Adam over every parameter, or :class:`SparseDenseAdam` when some embedding tables produce
    sparse gradients (``TwoTowerConfig.sparse_embeddings``)."""
    sparse = {id(p): p for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse
              for p in m.parameters()}
    if not sparse:
        return _adam(list(model.parameters()), lr, weight_decay)
    dense = [p for p in model.parameters() if id(p) not in sparse]
    return SparseDenseAdam(list(sparse.values()), dense, lr, weight_decay)


def _adam(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where it has one (float parameters on the CPU or CUDA):
    the same update up to float rounding, one kernel for all parameters instead of a loop over
    them (a step over adi-plus's parameters 5x faster on the CPU; benchmarks/README.md, "Dropout
    and Adam"). A run resumed from a checkpoint written before adirec used it keeps that
    checkpoint's loop (the optimizer's saved settings win)."""
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


class Trainer:
    """Trains a :class:`TwoTowerModel` on a :class:`MultiDomainData`.

    ``report_split`` names the split whose numbers will be reported; validation never uses it:
    when the data's ``valid`` split is the reported one (or empty), a slice of the training
    interactions is held out instead.

    Streaming (``adirec.data.parquet.ParquetLayout.training_view``): ``batches(epoch=,
    batch_size=, rank=, world_size=, seed=)`` replaces the in-memory training split as the source
    of batches, ``store`` the FeatureStore built from it and ``item_counts`` its item counts
    (the sampler's); ``data`` then only needs what validation reads.

    Under torch.distributed (see ``adirec.train.distributed``) the loss runs through a DDP
    module, each rank takes ``batch_size / world_size`` rows of every global batch, running
    statistics are averaged over ranks after each epoch, validation gathers every rank's
    per-user results, and only rank 0 writes.
    """

    def __init__(self, model: TwoTowerModel, data: MultiDomainData, config: TrainConfig,
                 *, report_split: str = "test", protocol: str = "full", out_dir: str | Path | None = None,
                 batches=None, store: FeatureStore | None = None, item_counts: np.ndarray | None = None):
        self.config = config
        self.device = ddp.resolve_device(config.device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # kernels, NCCL and caches on this process's GPU
        self.model = model.to(self.device)
        self.batches = batches
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.protocol = protocol
        if report_split != "valid" and len(data.splits["valid"]):
            self.train_data, self.val_split, self.val_protocol = data, "valid", protocol
        else:
            self.train_data, held = holdout_split(data, config.holdout_fraction, config.seed)
            self.train_data.splits["valid"] = held
            self.train_data.candidates = {}
            if protocol == "sampled":  # mirror the reported protocol on the held-out rows
                width = data.candidates["valid"].items.shape[1] if "valid" in data.candidates else 100
                self.train_data.candidates = {"valid": sample_candidates(
                    self.train_data, held, width, seed=config.seed)}
            self.val_split, self.val_protocol = "valid", protocol
        self.data = data
        self.metric = config.early_stopping_metric or (
            "recall@10" if self.val_protocol == "sampled" else "recall@50")
        self.eval_ks = sorted(set(config.eval_ks) | {int(self.metric.partition("@")[2])})
        self.store = store if store is not None else FeatureStore(self.train_data)
        ordered = any(f.name == HIST_ALL and f.ordered for f in self.train_data.schema.fields)
        if ordered and not self.store.time_ordered:  # a streamed layout keeps each user's latest window only
            warnings.warn("training streams its rows from a Parquet layout, whose stored histories are each "
                          "user's latest training positives: a row's history can hold positives after it. Load "
                          "the data in memory (a layout without a test split, or another source) for histories "
                          "that hold only the positives before each row", DataWarning, stacklevel=2)
        in_corpus = torch.zeros(data.num_domains, data.num_items + 1, dtype=torch.bool)  # (D, I+1)
        for d, corpus in enumerate(data.corpus):
            in_corpus[d, torch.from_numpy(np.asarray(corpus, dtype=np.int64))] = True
        self.in_corpus = in_corpus.to(self.device)
        tr = self.train_data.splits["train"]
        counts = np.bincount(tr.item, minlength=data.num_items + 1) if item_counts is None else item_counts
        self.rank, self.world_size = ddp.rank_world()
        if self.world_size > 1 and torch.distributed.get_backend() == "nccl" and self.device.type != "cuda":
            raise ValueError(f"the process group uses NCCL, which needs CUDA tensors, but the device is {self.device}")
        self.sampler = NegativeSampler(counts, proposal=config.proposal, alpha=config.proposal_alpha,
                                       seed=config.seed + 7919 * self.rank,  # other negatives per rank
                                       device=self.device)
        self.optimizer = make_optimizer(model, config.lr, config.weight_decay)
        self.objective = RetrievalObjective(model, self.store, data, config, self.sampler, self.in_corpus, self.device)
        if config.domain_weighting == "balanced":
            if batches is not None:
                raise ValueError("--domain-weighting balanced needs each domain's training rows, which a stream "
                                 "does not count; load the data in memory")
            self.objective.domain_factor = domain_balance(tr.domain, tr.weight, data.num_domains).to(self.device)
        self.sequences = self._sequence_batches(batches)
        self.batch_size = resolve_batch_size(config.batch_size, sequences=self.sequences is not None)
        if isinstance(model, TwoTowerModel) and model.item_bias is not None:
            item_counts = np.zeros((data.num_domains, data.num_items + 1))
            np.add.at(item_counts, (tr.domain[tr.weight > 0], tr.item[tr.weight > 0]), 1)
            model.set_item_prior(torch.from_numpy(item_counts).to(self.device), config.temperature)
        # DDP reduces gradients of what runs inside its forward(): wrap the loss, not the model
        self._ddp = ddp.wrap(model, self.loss, self.device) if self.world_size > 1 else None
        self.history: list[dict] = []
        self._resumed_seconds = 0.0
        self._said_nothing_to_label = False

    # ------------------------------------------------------------------ step
    def loss(self, batch: Batch | SequenceBatch, p: float) -> tuple[torch.Tensor, int]:
        """Loss of one batch (:class:`~adirec.train.objective.RetrievalObjective`); returns
        (loss, number of pseudo rows)."""
        if isinstance(batch, SequenceBatch):
            return self.objective.sequence_loss(batch)[0], 0
        return self.objective.rows_loss(batch, p)

    # ------------------------------------------------------------------ loop
    def validate(self) -> dict:
        scorer = TwoTowerScorer(self.model, self.store, self.data.num_items)
        result = ddp.evaluate_across_ranks(scorer, self.train_data, split=self.val_split,
                                           protocol=self.val_protocol, ks=self.eval_ks,
                                           seen=SeenItems(self.train_data))
        return result.metrics(self.data.domains)

    def fit(self, *, resume: bool = False) -> dict:
        """Train until ``epochs`` or early stopping; leaves the model at its best epoch.

        With ``resume`` the state saved after the last completed epoch in ``out_dir`` (weights,
        optimizer, random generators, early-stopping counters, history) is restored first, so a
        resumed run on the CPU ends with the same weights as one that was never interrupted.
        Raises :class:`TrainingDiverged` on a non-finite loss.
        """
        cfg = self.config
        if cfg.num_threads or self.world_size == 1:  # under torchrun each process already has its share
            use_threads(cfg.num_threads)
        self._start = time.time()
        self._best, self._best_epoch, self._bad_epochs = -math.inf, -1, 0
        self._best_state: dict[str, torch.Tensor] | None = None
        torch.manual_seed(cfg.seed + self.rank)
        first = self._restore() if resume else 0
        for epoch in range(first, cfg.epochs):
            row = self._train_epoch(epoch)
            row.update(self._validate_epoch(row))
            improved = self._track(epoch, row)
            self._report(row, improved)
            if self.out_dir is not None and self.rank == 0:
                self._checkpoint(self.out_dir, epoch + 1, improved, row)
            if cfg.patience and self._bad_epochs >= cfg.patience:
                break
        return self._finish()

    # ------------------------------------------------------------------ epoch steps
    def _train_epoch(self, epoch: int) -> dict:
        """One pass over this rank's training batches; the epoch's row of ``metrics.jsonl``."""
        cfg, main = self.config, self.rank == 0
        self.model.train()
        p = cfg.self_training.fraction(epoch)
        source = self.batches if self.batches is not None else self.sequences
        n_train = len(source) if source is not None else len(self.train_data.splits["train"])
        t0, total, n_rows, n_pseudo = time.time(), 0.0, 0, 0
        self.objective.pseudo_candidates = 0
        bar = tqdm(total=n_train // self.world_size, unit="samples", unit_scale=True,
                   disable=not (cfg.progress and main), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   leave=False, dynamic_ncols=True)
        with ddp.join(self._ddp):  # ranks whose share runs out first wait for the others
            for batch in self._epoch_batches(epoch):
                loss, k = (self._ddp if self._ddp is not None else self.loss)(batch, p)
                if not torch.isfinite(loss):
                    raise TrainingDiverged(epoch + 1, float(loss.detach()), cfg)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._set_lr(epoch + min(1.0, n_rows * self.world_size / max(n_train, 1)))
                self.optimizer.step()
                total += loss.item() * len(batch)
                n_rows += len(batch)
                n_pseudo += k
                bar.update(len(batch))
                bar.set_postfix(loss=f"{total / n_rows:.4f}")
        bar.close()
        if self.world_size > 1:  # one model everywhere before validating and saving
            ddp.average_buffers(self.model)
            total, rows_sum, pseudo_sum, candidates_sum = ddp.all_reduce_sums(
                [total, n_rows, n_pseudo, self.objective.pseudo_candidates])
            n_rows, n_pseudo = int(rows_sum), int(pseudo_sum)
            self.objective.pseudo_candidates = int(candidates_sum)
        seconds = time.time() - t0
        if p > 0 and self.objective.pseudo_candidates == 0 and main and not self._said_nothing_to_label:
            tqdm.write("self-training has nothing to label: no training item of one domain is in another "
                       "domain's corpus (the domains' catalogues are disjoint)", file=sys.stderr)
            self._said_nothing_to_label = True
        return {"epoch": epoch + 1, "loss": total / max(n_rows, 1), "pseudo_fraction": p,
                "pseudo_rows": n_pseudo, "pseudo_candidates": int(self.objective.pseudo_candidates),
                "epoch_seconds": seconds,
                "samples_per_second": n_rows / max(seconds, 1e-9)}

    def _set_lr(self, epochs_done: float) -> None:
        """The rate of the next step, from how far into the planned epochs training is (a function
        of the epoch and its rows only, so a resumed run follows the same schedule)."""
        cfg = self.config
        if cfg.lr_schedule == "constant":
            return
        lr = cfg.lr * lr_factor(cfg.lr_schedule, epochs_done / cfg.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _validate_epoch(self, row: dict) -> dict:
        metrics = self.validate()
        return {f"valid_{self.metric}": metrics[self.metric]["mean"], "valid": metrics}

    def _track(self, epoch: int, row: dict) -> bool:
        """Early-stopping bookkeeping; keeps a copy of the best weights. True when improved."""
        self.history.append(row)
        value = row[f"valid_{self.metric}"]
        if value > self._best:
            self._best, self._best_epoch, self._bad_epochs = value, epoch + 1, 0
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return True
        self._bad_epochs += 1
        return False

    def _report(self, row: dict, improved: bool) -> None:
        if self.config.progress and self.rank == 0:
            tqdm.write(f"epoch {row['epoch']}: loss {row['loss']:.4f}  valid {self.metric} "
                       f"{row[f'valid_{self.metric}']:.4f}{' *' if improved else ''}  "
                       f"{row['samples_per_second']:.0f} samples/s")
        if self.config.tensorboard and self.rank == 0:
            TensorBoardCurves(self.config.tensorboard).write(row)

    def _finish(self) -> dict:
        summary = {"best_epoch": self._best_epoch, "valid_metric": self.metric,
                   f"best_valid_{self.metric}": self._best, "epochs_run": len(self.history),
                   "train_seconds": time.time() - self._start + self._resumed_seconds,
                   "params": self.model.num_parameters(), "batch_size": self.batch_size, "device": str(self.device),
                   "threads": torch.get_num_threads(),
                   "validation": {"split": "valid" if self.train_data is self.data else "holdout-from-train",
                                  "protocol": self.val_protocol}}
        if self._best_state is not None:  # leave the model at its best epoch, as saved on disk
            self.model.load_state_dict(self._best_state)
        if self.out_dir is not None and self.rank == 0:
            atomic_write_json(self.out_dir / "summary.json", summary)
        return summary

    def _sequence_batches(self, stream) -> SequenceBatches | None:
        """The batches of sequences when this run trains on them (TrainConfig.batching), else None."""
        cfg = self.config
        encoder = self.model.config.history_encoder
        fields = {f.name: f for f in self.train_data.schema.fields}
        # auto picks sequences only where they can be built; an explicit "sequences" explains why not
        wanted = cfg.batching == "sequences" or (
            cfg.batching == "auto" and encoder != "mean" and self.store.time_ordered and HIST_ALL in fields
            and isinstance(self.model, TwoTowerModel) and stream is None and not cfg.self_training.enabled)
        if not wanted:
            return None
        if not isinstance(self.model, TwoTowerModel) or HIST_ALL not in fields:
            raise ValueError("batching by sequences needs a two-tower model that reads the history hist_all")
        if stream is not None:
            raise ValueError("batching by sequences needs the training split in memory, not a stream")
        if cfg.self_training.enabled:
            raise ValueError("self-training labels rows, not sequences: use --batching rows or --no-self-training")
        return SequenceBatches(self.train_data.splits["train"], self.train_data.num_users, fields[HIST_ALL].dim)

    def _epoch_batches(self, epoch: int):
        """This rank's batches of one epoch: its ``batch_size / world_size`` share of each global
        batch, from the stream when there is one, else from the in-memory training split (as
        rows, or as sequences)."""
        rank, world = self.rank, self.world_size
        size, seed = max(1, self.batch_size // world), self.config.seed * 100003 + epoch
        source = self.batches if self.batches is not None else self.sequences
        if source is not None:
            return source(epoch=epoch, batch_size=size, rank=rank, world_size=world, seed=seed)
        return iterate_batches(self.train_data.splits["train"], size, shuffle=True, seed=seed,
                               rank=rank, world_size=world)

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint(self, out_dir: Path, epoch: int, improved: bool, row: dict) -> None:
        """Weights of the epoch, the best weights, the metrics row, and the state to resume from
        (written last: a run interrupted while checkpointing resumes from the epoch before)."""
        ckpt = out_dir / "checkpoints"
        ckpt.mkdir(parents=True, exist_ok=True)
        save_weights(self.model, ckpt / f"epoch_{epoch:03d}.safetensors")
        if improved:
            save_weights(self.model, out_dir / "model.safetensors")
        with open(out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        optim, optim_tensors = _split_state(self.optimizer.state_dict())
        tensors |= {f"optimizer/{k}": v for k, v in optim_tensors.items()}
        tensors["rng/torch"] = torch.get_rng_state()
        tensors["rng/sampler"] = self.sampler.generator.get_state()
        if self.device.type == "cuda":
            tensors["rng/cuda"] = torch.cuda.get_rng_state(self.device)
        save_tensors(tensors, ckpt / RESUME_TENSORS, metadata={"epoch": str(epoch)})
        atomic_write_json(ckpt / RESUME_STATE, {
            "epoch": epoch, "best": self._best, "best_epoch": self._best_epoch, "bad_epochs": self._bad_epochs,
            "history": self.history, "optimizer": optim,
            "train_seconds": time.time() - self._start + self._resumed_seconds})

    def _restore(self) -> int:
        """Load the state saved after the last completed epoch; returns the next epoch (0-based)."""
        if self.out_dir is None or not (self.out_dir / "checkpoints" / RESUME_STATE).is_file():
            raise FileNotFoundError(f"{self.out_dir}: no completed epoch to resume from "
                                    f"({RESUME_STATE} missing); start the run again")
        ckpt = self.out_dir / "checkpoints"
        state = read_json(ckpt / RESUME_STATE)
        tensors, meta = load_tensors(ckpt / RESUME_TENSORS)
        if meta.get("epoch") != str(state["epoch"]):
            raise ValueError(f"{ckpt / RESUME_TENSORS}: holds epoch {meta.get('epoch')}, "
                             f"{RESUME_STATE} says {state['epoch']}; the checkpoint is inconsistent")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        self.optimizer.load_state_dict(_join_state(state["optimizer"], {
            k[10:]: v for k, v in tensors.items() if k.startswith("optimizer/")}))
        torch.set_rng_state(tensors["rng/torch"])
        self.sampler.generator.set_state(tensors["rng/sampler"])
        if self.device.type == "cuda" and "rng/cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng/cuda"], self.device)
        self.history = list(state["history"])
        self._best, self._best_epoch, self._bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self._resumed_seconds = float(state.get("train_seconds", 0.0))
        if self._best_epoch > 0:  # the best weights are the run's model.safetensors
            latest = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            load_weights(self.model, self.out_dir / "model.safetensors")
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(latest)
        return int(state["epoch"])


def domain_balance(domain: np.ndarray, weight: np.ndarray, num_domains: int) -> torch.Tensor:
    """(D,) factors N / (D N_d) on the weight of a row of each domain, from the domains and weights
    of the training rows (N_d the domain's summed weight, its rows when every weight is 1): each
    domain's rows then weigh N / D together, as much as any other's, and the mean weight stays
    what it was. A domain without training weight gets 0 (it has nothing to weigh)."""
    total = np.bincount(domain, weights=np.asarray(weight, dtype=np.float64), minlength=num_domains)  # (D,)
    factor = np.divide(total.sum(), num_domains * total, out=np.zeros_like(total), where=total > 0)
    return torch.from_numpy(factor).float()


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float, config: TrainConfig):
        self.epoch, self.loss = epoch, loss
        super().__init__(f"training diverged in epoch {epoch}: the loss is {loss} (lr {config.lr:g}, "
                         f"temperature {config.temperature:g}); lower --lr or raise --temperature")


RESUME_TENSORS = "last.safetensors"
RESUME_STATE = "last.json"


def _split_state(state, prefix: str = "") -> tuple[object, dict[str, torch.Tensor]]:
    """A nested state dict as (JSON-able structure with tensor references, {name: tensor})."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            tensors[path] = x.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(x, dict):
            return {"__dict__": [[walk(k, f"{path}.k{i}"), walk(v, f"{path}.{i}")]
                                 for i, (k, v) in enumerate(x.items())]}
        if isinstance(x, (list, tuple)):
            return {"__list__": [walk(v, f"{path}.{i}") for i, v in enumerate(x)], "tuple": isinstance(x, tuple)}
        return x

    return walk(state, prefix or "s"), tensors


def _join_state(structure, tensors: dict[str, torch.Tensor]):
    def walk(x):
        if isinstance(x, dict) and "__tensor__" in x:
            return tensors[x["__tensor__"]]
        if isinstance(x, dict) and "__dict__" in x:
            return {walk(k): walk(v) for k, v in x["__dict__"]}
        if isinstance(x, dict) and "__list__" in x:
            items = [walk(v) for v in x["__list__"]]
            return tuple(items) if x.get("tuple") else items
        return x
    return walk(structure)
