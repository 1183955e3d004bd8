"""Training throughput of adirec's ``adi-se`` and ``dnn`` beside a minimal plain-PyTorch
two-tower loop of the same embedding and MLP sizes, measured in the same run, plus a profile.
``adi-plus`` and ``dnn-plus`` are timed too, as their presets train (on this data, which has
time: batches of users' sequences, every position a row, the causal Transformer history
encoder, the full softmax when the corpus is small); their samples are those rows.

    nice -n 10 python benchmarks/train_bench.py [--preset small] [--steps 12] [--rounds 3] [--device cuda]

What is timed is one optimizer step on a batch: adirec's ``Trainer.loss`` (feature lookups,
towers, sampled softmax with logQ correction, self-training when ``p > 0``) + backward + Adam
step. The reference does the same model computation on precomputed feature tensors with none
of adirec's machinery: the same fields and embedding width, the dnn's MLP widths, the same
number of sampled negatives, the item tower run once per domain present on the distinct
columns, plain cross-entropy. Variants are timed in interleaved rounds (A B C A B C ...) and the
median round is reported, so that a busy machine slows all of them alike.

Writes ``train_bench.json`` and ``train_profile.txt`` to ``--out``.
"""
from __future__ import annotations

import argparse
import cProfile
import itertools
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adirec.data.batches import FeatureStore, iterate_batches  # noqa: E402
from adirec.data.dataset import HIST_ALL, HIST_DOMAIN  # noqa: E402
from adirec.data.schema import OOV  # noqa: E402
from adirec.data.sources.synthetic import load_synthetic  # noqa: E402
from adirec.models.adi import TwoTowerModel  # noqa: E402
from adirec.models.registry import build_config, train_defaults  # noqa: E402
from adirec.train.distributed import resolve_device  # noqa: E402
from adirec.train.config import TrainConfig  # noqa: E402
from adirec.train.loop import Trainer


# ----------------------------------------------------------------------------- reference
class PlainTwoTower(nn.Module):
    """A two-tower model in plain PyTorch: one embedding table per vocabulary (shared by the
    towers), a Linear per dense field, concat -> MLP (Linear, [BatchNorm], ReLU) -> Linear -> L2.
    Uses the fields and norms of the ``dnn`` config it mirrors: ``exclude`` fields left out,
    batch norm in the item tower only with ``item_norm``."""

    def __init__(self, schema, dim: int, hidden: tuple[int, ...], out: int, exclude=(), item_norm: bool = True):
        super().__init__()
        used = [f for f in schema.fields if f.name not in set(exclude)]
        self.user_fields = [f for f in used if f.side == "user"]
        self.item_fields = [f for f in used if f.side == "item"]
        vocabs = sorted({f.vocab_name for f in used if f.vocab_name})
        self.tables = nn.ModuleDict({v: nn.Embedding(schema.vocab_sizes[v], dim, padding_idx=0) for v in vocabs})
        self.dense = nn.ModuleDict({f.name: nn.Linear(f.dim, dim) for f in used if f.kind == "dense"})

        def tower(n_fields: int, norm: bool) -> nn.Sequential:
            layers, width = [], n_fields * dim
            for h in hidden:
                layers += [nn.Linear(width, h), *([nn.BatchNorm1d(h)] if norm else []), nn.ReLU()]
                width = h
            return nn.Sequential(*layers, nn.Linear(width, out))

        self.user_tower = tower(len(self.user_fields), True)
        self.item_tower = tower(len(self.item_fields), item_norm)

    def _inputs(self, fields, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for f in fields:
            x = feats[f.name]
            if f.kind == "categorical":
                parts.append(self.tables[f.vocab_name](x))
            elif f.kind == "sequence":
                mask = (x != OOV).unsqueeze(-1).float()
                parts.append((self.tables[f.vocab_name](x) * mask).sum(1) / mask.sum(1).clamp(min=1.0))
            else:
                parts.append(self.dense[f.name](x))
        return torch.cat(parts, dim=1)  # (B, F*E)

    def user(self, feats):
        return F.normalize(self.user_tower(self._inputs(self.user_fields, feats)), dim=-1)

    def item(self, feats):
        return F.normalize(self.item_tower(self._inputs(self.item_fields, feats)), dim=-1)


class PlainFeatures:
    """Every feature as one precomputed tensor, indexed by id (and domain): no lookups logic."""

    def __init__(self, data, history_len: int, device: torch.device):
        store = FeatureStore(data)
        D, U1 = data.num_domains, data.num_users + 1
        users = np.arange(U1)
        self.user = {}
        for f in data.schema.side("user"):
            if f.name == HIST_ALL:
                t = store._hist_all.recent(users, history_len, None)
            elif f.name == HIST_DOMAIN:
                t = np.stack([store._hist_domain.recent(users * D + d, history_len, None) for d in range(D)])
            elif f.per_domain:
                t = data.user_domain_table[f.name]
            else:
                t = data.user_table[f.name]
            self.user[f] = torch.as_tensor(t).to(device)
        self.item = {f: torch.as_tensor(data.item_domain_table[f.name] if f.per_domain else data.item_table[f.name]
                                        ).to(device) for f in data.schema.side("item")}

    @staticmethod
    def _gather(tables, ids, domain):
        return {f.name: t[domain, ids] if f.per_domain else t[ids] for f, t in tables.items()}

    def users(self, u, d):
        return self._gather(self.user, u, d)

    def items(self, i, d):
        return self._gather(self.item, i, d)


def plain_step(model, feats, opt, batch, num_items: int, negatives: int, temperature: float,
               device: torch.device) -> float:
    batch = batch.to(device)
    u = model.user(feats.users(batch.user, batch.domain))  # (B, O)
    cols = torch.cat([batch.item, torch.randint(1, num_items + 1, (negatives,), device=device)])  # (N,)
    distinct, where = torch.unique(cols, return_inverse=True)
    logits = torch.empty(len(u), len(cols), device=device)
    for d in torch.unique(batch.domain).tolist():
        rows = batch.domain == d
        v = model.item(feats.items(distinct, torch.full((len(distinct),), d, device=device)))  # (N', O)
        logits[rows] = u[rows] @ v[where].T
    loss = F.cross_entropy(logits / temperature, torch.arange(len(u), device=device))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


# ----------------------------------------------------------------------------- adirec
def adirec_step(trainer: Trainer, batch, p: float) -> float:
    loss, _ = trainer.loss(batch, p)
    trainer.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimizer.step()
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=12, help="steps per variant and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile-steps", type=int, default=8)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    data = load_synthetic(args.preset, seed=0)
    tcfg = TrainConfig(batch_size=args.batch_size, num_negatives=args.negatives, progress=False, device=str(device))
    p_self = tcfg.self_training.max_p
    trainers = {}
    for name in ("adi-se", "dnn"):
        model = TwoTowerModel(data.schema, data.num_domains, build_config(name))
        model.train()
        trainers[name] = Trainer(model, data, tcfg, report_split="test")
    mcfg = build_config("dnn")
    L = next(f.dim for f in data.schema.fields if f.name == HIST_ALL)
    plain = PlainTwoTower(data.schema, mcfg.embedding_dim, (*mcfg.expert_hidden, mcfg.expert_out, *mcfg.forward_hidden),
                          mcfg.output_dim, exclude=mcfg.exclude_fields, item_norm=mcfg.item_tower_norm).to(device)
    plain.train()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=tcfg.lr)
    feats = PlainFeatures(data, L, device)
    batches = list(iterate_batches(data.splits["train"], args.batch_size, shuffle=True, seed=0, drop_last=True))
    for name in ("adi-plus", "dnn-plus"):  # each with its preset's own training options
        model = TwoTowerModel(data.schema, data.num_domains, build_config(name, data.num_domains))
        model.train()
        config = TrainConfig(**train_defaults(name), progress=False, device=str(device))
        trainers[name] = Trainer(model, data, config, report_split="test")
    plus_batches = {name: list(itertools.islice(trainers[name]._epoch_batches(0), args.steps * args.rounds))
                    for name in ("adi-plus", "dnn-plus")}
    # variant -> (one step on a batch, its batches)
    variants = {
        "plain PyTorch two-tower": (lambda b: plain_step(plain, feats, plain_opt, b, data.num_items, args.negatives,
                                                         tcfg.temperature, device), batches),
        "dnn": (lambda b: adirec_step(trainers["dnn"], b, 0.0), batches),
        "adi-se": (lambda b: adirec_step(trainers["adi-se"], b, 0.0), batches),
        f"dnn + self-training p={p_self}": (lambda b: adirec_step(trainers["dnn"], b, p_self), batches),
        f"adi-se + self-training p={p_self}": (lambda b: adirec_step(trainers["adi-se"], b, p_self), batches),
        "dnn-plus": (lambda b: adirec_step(trainers["dnn-plus"], b, 0.0), plus_batches["dnn-plus"]),
        "adi-plus": (lambda b: adirec_step(trainers["adi-plus"], b, 0.0), plus_batches["adi-plus"]),
    }
    for fn, source in variants.values():  # warm-up
        fn(source[0])
    times: dict[str, list[float]] = {k: [] for k in variants}
    samples: dict[str, list[int]] = {k: [] for k in variants}
    k = 0
    for _ in range(args.rounds):
        for name, (fn, source) in variants.items():
            n = 0
            t0 = time.perf_counter()
            for _ in range(args.steps):
                b = source[k % len(source)]
                fn(b)
                n += len(b)
                k += 1
            times[name].append((time.perf_counter() - t0) / args.steps)
            samples[name].append(n)
    ref_rate = statistics.median(n / (t * args.steps) for n, t in zip(samples["plain PyTorch two-tower"],
                                                                     times["plain PyTorch two-tower"], strict=True))
    rows = []
    for name, ts in times.items():
        rate = statistics.median(n / (t * args.steps) for n, t in zip(samples[name], ts, strict=True))
        rows.append({"variant": name, "seconds_per_step": statistics.median(ts), "samples_per_step":
                     statistics.median(samples[name]) / args.steps, "samples_per_second": rate,
                     "relative_to_plain": rate / ref_rate, "rounds": ts})
    params = {n: t.model.num_parameters() for n, t in trainers.items()}
    params["plain PyTorch two-tower"] = sum(p.numel() for p in plain.parameters())

    # where the time goes: cProfile (Python functions) and torch.profiler (operators)
    trainer = trainers["adi-se"]
    prof = cProfile.Profile()
    prof.enable()
    for b in batches[:args.profile_steps]:
        adirec_step(trainer, b, p_self)
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(35)
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as tp:
        for b in batches[:args.profile_steps]:
            adirec_step(trainer, b, p_self)
    ops = tp.key_averages().table(sort_by="self_device_time_total" if device.type == "cuda" else "self_cpu_time_total",
                                  row_limit=20)
    load1 = os.getloadavg()
    header = (f"adi-se, {args.profile_steps} steps of {args.batch_size} rows, self-training p={p_self}, "
              f"{args.threads} thread(s), synthetic:{args.preset}, device {device}\n")
    (out / "train_profile.txt").write_text(header + "\n== cProfile (cumulative) ==\n" + s.getvalue()
                                           + f"\n== torch.profiler (self {device.type.upper()}) ==\n" + ops + "\n")
    report = {
        "command": " ".join(["python", *sys.argv]), "preset": args.preset,
        "train_rows": len(data.splits["train"]), "items": data.num_items, "users": data.num_users,
        "batch_size": args.batch_size, "negatives": args.negatives, "threads": args.threads,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps_per_round": args.steps, "rounds": args.rounds, "params": params,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                    "cuda": torch.cuda.is_available(), "loadavg_before": load0, "loadavg_after": load1},
        "results": rows,
    }
    (out / "train_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"synthetic:{args.preset} ({len(data.splits['train'])} train rows), batch {args.batch_size}, "
          f"{args.negatives} negatives, {args.threads} thread(s), {report['device_name']}; "
          f"load average {load0[0]:.1f} -> {load1[0]:.1f}")
    print(f"{'variant':36}{'s/step':>10}{'samples/step':>14}{'samples/s':>12}{'vs plain':>10}")
    for r in rows:
        print(f"{r['variant']:36}{r['seconds_per_step']:>10.3f}{r['samples_per_step']:>14.0f}"
              f"{r['samples_per_second']:>12.0f}{r['relative_to_plain']:>10.2f}")
    print(f"parameters: {params}")
    print(f"profile: {out / 'train_profile.txt'}")


if __name__ == "__main__":
    main()
