"""How time and peak memory grow with the number of interactions, streaming from Parquet, and
what id hashing and sparse embedding gradients buy at 1M items.

    nice -n 10 python benchmarks/scale_bench.py [--sizes 1e5,3e5,1e6,3e6,1e7] [--xl]

For every size a synthetic world with fixed users and catalogue (20,000 users, the ``xl``
preset's 1,000,000-item catalogue) and ``size / 20,000`` interactions per user is written to
Parquet block by block (``convert``). The vocabularies hold the items that occur in training,
so the model's item table grows with the data up to the ~120k items these users can reach. Then, each in a fresh process so that its peak RSS is its own:

* ``read``: one full pass of the streaming reader over the training split (shuffle buffer of
  262,144 rows, batches of 1024): rows/s and peak RSS;
* ``stream-train``: training from the stream (``ParquetLayout.training_view``, the ``dnn``
  preset, ``--steps`` optimizer steps of 1024 rows): samples/s and peak RSS. To hold the model
  itself fixed across sizes its ids are hashed into ``--train-buckets`` rows (fewer than the
  smallest vocabulary), so what changes is the data alone;
* ``memory-train``: the same, with the whole data set loaded in memory (``parquet:DIR`` source
  + FeatureStore + iterate_batches), for contrast;
* ``stream-train-vocab``: ``stream-train`` with the plain ``dnn`` (one row per id), whose
  tables grow with the vocabulary.

``xl``: the ``xl`` preset itself (500,000 users, 10M interactions, 1M items) is converted
(generated straight to Parquet), read and trained on from the stream (``--no-xl`` skips it).

``ids`` (on ``xl``, about a million items in the vocabulary): the ``dnn`` with plain tables +
Adam, sparse gradients + SparseAdam, ids hashed into ``--buckets`` rows, and both; memory of the
embedding tables, the optimizer state and one step's gradients, and the time of a step.

Writes ``scale_bench.json`` and ``scale.png`` to ``--out``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

USERS = 20_000
BATCH = 1024


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_now_mib() -> dict:
    """This process's resident memory now, by kind (Linux ``/proc/self/status``): ``anon`` is its
    own, ``file`` the pages of mapped files (the stored histories), which the OS can drop."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return {}
    kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status.read_text().splitlines())
           if k in ("RssAnon", "RssFile")}
    return {"rss_anon_mib": kib.get("RssAnon", 0) / 1024, "rss_file_mib": kib.get("RssFile", 0) / 1024}


def _world(size: int):
    from adirec.data.sources.synthetic import PRESETS
    return dataclasses.replace(PRESETS["xl"], num_users=USERS, interactions_per_user=size / USERS)


# ----------------------------------------------------------------------------- children
def child_convert(args) -> dict:
    from adirec.data.convert import convert
    from adirec.data.parquet import ParquetLayout
    t0 = time.time()
    source = "synthetic:xl" if args.size == 0 else _world(args.size)
    convert(source, args.layout, overwrite=True)
    layout = ParquetLayout(args.layout)
    return {"seconds": time.time() - t0, "peak_rss_mib": _peak_mib(), "splits": layout.info["splits"],
            "users": layout.num_users, "items": layout.num_items,
            "bytes": sum(e["bytes"] for e in layout.manifest["files"].values())}


def child_read(args) -> dict:
    from adirec.data.parquet import ParquetLayout
    from adirec.data.streaming import iterate_parquet
    layout = ParquetLayout(args.layout)
    t0, rows = time.time(), 0
    for b in iterate_parquet(layout.split_path("train"), BATCH, shuffle=True, seed=0):
        rows += len(b)
    sec = time.time() - t0
    return {"rows": rows, "seconds": sec, "rows_per_second": rows / sec, "peak_rss_mib": _peak_mib()}


def _train_steps(trainer, batches, steps: int) -> tuple[float, int]:
    it = iter(batches)
    for _ in range(2):  # warm-up
        b = next(it)
        loss, _ = trainer.loss(b, 0.0)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
    t0, n = time.time(), 0
    for _ in range(steps):
        b = next(it)
        loss, _ = trainer.loss(b, 0.0)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        n += len(b)
    return time.time() - t0, n


def _model(schema, num_domains, **overrides):
    from adirec.models.adi import TwoTowerModel
    from adirec.models.registry import build_config
    return TwoTowerModel(schema, num_domains, build_config("dnn", **overrides))


def child_train(args) -> dict:
    import torch
    from adirec.data.parquet import ParquetLayout
    from adirec.train.config import TrainConfig
    from adirec.train.loop import Trainer
    torch.manual_seed(0)
    layout = ParquetLayout(args.layout)
    cfg = TrainConfig(batch_size=BATCH, progress=False, device="cpu")  # peak RSS is host memory
    t0 = time.time()
    if args.mode.startswith("stream-train"):
        view = layout.training_view()
        setup = time.time() - t0
        model = _model(view.data.schema, view.data.num_domains, hash_buckets=args.buckets)
        trainer = Trainer(model, view.data, cfg, batches=view.batches, store=view.store, item_counts=view.item_counts)
        batches = view.batches(batch_size=BATCH, seed=0)
    else:
        from adirec.data.batches import iterate_batches
        data = layout.load()
        model = _model(data.schema, data.num_domains, hash_buckets=args.buckets)
        trainer = Trainer(model, data, cfg)  # builds the FeatureStore from the whole training split
        setup = time.time() - t0
        batches = iterate_batches(data.splits["train"], BATCH, shuffle=True, seed=0)
    sec, n = _train_steps(trainer, batches, args.steps)
    return {"setup_seconds": setup, "steps": args.steps, "seconds": sec, "samples_per_second": n / sec,
            "hash_buckets": args.buckets, "params": model.num_parameters(), "peak_rss_mib": _peak_mib(),
            **_rss_now_mib()}


def child_ids(args) -> dict:
    import torch
    from adirec.data.parquet import ParquetLayout
    from adirec.train.config import TrainConfig
    from adirec.train.loop import Trainer
    torch.manual_seed(0)
    view = ParquetLayout(args.layout).training_view()
    hashed, sparse = args.variant in ("hashed", "hashed+sparse"), args.variant in ("sparse", "hashed+sparse")
    model = _model(view.data.schema, view.data.num_domains, hash_buckets=args.buckets if hashed else 0,
                   sparse_embeddings=sparse)
    trainer = Trainer(model, view.data, TrainConfig(batch_size=BATCH, progress=False, device="cpu"), batches=view.batches,
                      store=view.store, item_counts=view.item_counts)
    batches = list(b for _, b in zip(range(args.steps + 2), view.batches(batch_size=BATCH, seed=0)))
    times = []
    for i, b in enumerate(batches):
        t0 = time.time()
        loss, _ = trainer.loss(b, 0.0)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if i == len(batches) - 1:  # one step's gradients, before the optimizer consumes them
            grad_bytes = 0
            for p in model.parameters():
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse:
                    g = g.coalesce()
                    grad_bytes += g.values().numel() * 4 + g.indices().numel() * 8
                else:
                    grad_bytes += g.numel() * 4
        trainer.optimizer.step()
        if i >= 2:
            times.append(time.time() - t0)
    opts = getattr(trainer.optimizer, "optimizers", [trainer.optimizer])
    state = sum(t.numel() * t.element_size() for o in opts for s in o.state.values()
                for t in s.values() if torch.is_tensor(t))
    tables = sum(t.weight.numel() * 4 for t in model.embeddings.tables.values())
    mib = 2 ** 20
    return {"variant": args.variant, "buckets": args.buckets if hashed else None,
            "item_table_rows": model.embeddings.tables["item_id"].num_embeddings,
            "embedding_tables_mib": tables / mib, "optimizer_state_mib": state / mib,
            "gradients_mib": grad_bytes / mib, "seconds_per_step": statistics.median(times),
            "params": model.num_parameters(), "peak_rss_mib": _peak_mib()}


# ----------------------------------------------------------------------------- driver
def run_child(*argv: str) -> dict:
    cmd = [sys.executable, __file__, "--child", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = [r["train_rows"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in (("read", "streaming read (full pass)", "-"),
                              ("stream-train", "training from the stream", "-"),
                              ("memory-train", "training, data in memory", "-"),
                              ("stream-train-vocab", "from the stream, a table row per id", "--")):
        a.plot(n, [r[key]["peak_rss_mib"] for r in rows], style, marker="o", label=label)
    a.set(xscale="log", xlabel="training interactions", ylabel="peak RSS (MiB)", title="Peak memory")
    a.set_ylim(bottom=0)
    a.legend()
    b.plot(n, [r["convert"]["seconds"] for r in rows], marker="o", label="generate + write Parquet")
    b.plot(n, [r["read"]["seconds"] for r in rows], marker="o", label="streaming read, full pass")
    b.set(xscale="log", yscale="log", xlabel="training interactions", ylabel="seconds", title="Time")
    b.legend()
    fig.suptitle(f"synthetic data: {USERS:,} users, 1M-item catalogue (2 shared CPU cores, 1 thread per process)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1e5,3e5,1e6,3e6,1e7")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--buckets", type=int, default=131_072, help="hash buckets of the ids measurement")
    ap.add_argument("--train-buckets", type=int, default=16_384, help="hash buckets of the fixed model")
    ap.add_argument("--xl", action=argparse.BooleanOptionalAction, default=True,
                    help="convert and stream the xl preset, and measure hashing / sparse gradients on it")
    ap.add_argument("--work", default="/tmp/adirec-scale", help="where the layouts are written")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        cp = argparse.ArgumentParser()
        cp.add_argument("mode")
        cp.add_argument("--layout")
        cp.add_argument("--size", type=int, default=0)
        cp.add_argument("--steps", type=int, default=30)
        cp.add_argument("--variant", default="dense")
        cp.add_argument("--buckets", type=int, default=131_072)
        c = cp.parse_args(args.child)
        import torch
        torch.set_num_threads(1)
        fn = {"convert": child_convert, "read": child_read, "stream-train": child_train,
              "stream-train-vocab": child_train, "memory-train": child_train, "ids": child_ids}[c.mode]
        print(json.dumps(fn(c)))
        return
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()
    rows = []
    for size in [int(float(s)) for s in args.sizes.split(",")]:
        layout = str(work / f"n{size}")
        row = {"size": size, "convert": run_child("convert", "--layout", layout, "--size", str(size))}
        row["train_rows"] = row["convert"]["splits"]["train"]
        row["read"] = run_child("read", "--layout", layout)
        row["vocab"] = {"users": row["convert"]["users"], "items": row["convert"]["items"]}
        for mode in ("stream-train", "memory-train"):
            row[mode] = run_child(mode, "--layout", layout, "--steps", str(args.steps),
                                  "--buckets", str(args.train_buckets))
        row["stream-train-vocab"] = run_child("stream-train-vocab", "--layout", layout, "--steps", str(args.steps),
                                              "--buckets", "0")
        rows.append(row)
        print(f"{size:>10}: train rows {row['train_rows']}, convert {row['convert']['seconds']:.0f}s "
              f"({row['convert']['peak_rss_mib']:.0f} MiB), read {row['read']['rows_per_second']:.0f} rows/s "
              f"({row['read']['peak_rss_mib']:.0f} MiB), stream-train {row['stream-train']['samples_per_second']:.0f}/s "
              f"({row['stream-train']['peak_rss_mib']:.0f} MiB), memory-train "
              f"{row['memory-train']['samples_per_second']:.0f}/s ({row['memory-train']['peak_rss_mib']:.0f} MiB), "
              f"stream-train-vocab ({row['vocab']['items']} items) {row['stream-train-vocab']['peak_rss_mib']:.0f} MiB",
              flush=True)
    xl, ids = None, []
    if args.xl:
        layout = str(work / "xl")
        xl = {"convert": run_child("convert", "--layout", layout, "--size", "0")}
        xl["read"] = run_child("read", "--layout", layout)
        xl["stream-train-vocab"] = run_child("stream-train-vocab", "--layout", layout, "--steps", str(args.steps),
                                             "--buckets", "0")
        print("xl", xl, flush=True)
        for variant in ("dense", "sparse", "hashed", "hashed+sparse"):
            ids.append(run_child("ids", "--layout", layout, "--variant", variant, "--steps", str(args.steps),
                                 "--buckets", str(args.buckets)))
            print(ids[-1], flush=True)
    load1 = os.getloadavg()
    if rows:
        plot(rows, out / "scale.png")
    report = {"command": " ".join(["python", *sys.argv]), "users": USERS, "items": 1_000_000,
              "batch_size": BATCH, "steps": args.steps, "threads": 1, "train_buckets": args.train_buckets,
              "loadavg_before": load0, "loadavg_after": load1, "sizes": rows, "ids": ids, "xl": xl}
    (out / "scale_bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out / 'scale_bench.json'} and {out / 'scale.png'}; load average {load0[0]:.1f} -> {load1[0]:.1f}")


if __name__ == "__main__":
    main()
