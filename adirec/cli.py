"""Command line: ``adirec demo | train | evaluate | data inspect`` (see ``adirec -h``)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from adirec.models.registry import MODELS
from adirec.serve.cli import register as register_serve
from adirec.bench.cli import register as register_bench


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def add_data_args(p: argparse.ArgumentParser) -> None:
    """The data source and its options: every :func:`~adirec.options.option` field of DataSpec."""
    from adirec.data.spec import DataSpec
    from adirec.options import add_options
    add_options(p.add_argument_group("data"), DataSpec, dest_prefix="data_")


def data_spec(args):
    """The DataSpec of the parsed ``args``; ``--data`` is required."""
    from adirec.data.spec import DataSpec
    from adirec.options import given_options
    given = given_options(args, DataSpec, dest_prefix="data_")
    if "source" not in given:
        raise ValueError("--data SRC is required (xmrec:DIR | recbole:DIR/PREFIX | table:PATH | parquet:DIR | "
                         "synthetic[:PRESET])")
    return DataSpec(**given)


def add_optimisation_args(p: argparse.ArgumentParser) -> None:
    """Training options shared by ``train`` and ``bench`` (None = the TrainConfig default)."""
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--negatives", type=int, dest="num_negatives")
    p.add_argument("--temperature", type=float)
    p.add_argument("--patience", type=int)
    p.add_argument("--device", help="auto (default: this process's GPU when CUDA is available, "
                   "else the CPU), cpu, cuda or cuda:N")


def add_model_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="adi-se", help=f"one of {', '.join(sorted(MODELS))}")
    p.add_argument("--fusion", choices=["concat", "sum", "netmul"])
    p.add_argument("--dial", choices=["se", "va", "lt", "none"])
    p.add_argument("--gate", choices=["softmax", "linear"])
    p.add_argument("--dsbn", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--shared-experts", type=int)
    p.add_argument("--embedding-dim", type=int)
    p.add_argument("--hash-buckets", type=int, help="hash the ids of every vocabulary larger than H into "
                   "H rows (default 0: one row per id)")
    p.add_argument("--sparse-embeddings", action=argparse.BooleanOptionalAction, default=None,
                   help="sparse gradients for the embedding tables, trained by SparseAdam")
    p.add_argument("--self-training", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--st-start-epoch", type=int, help="first epoch (0-based) with pseudo-labels")
    p.add_argument("--st-p0", type=float, help="pseudo-label fraction at the start epoch")
    p.add_argument("--st-delta-p", type=float, help="growth of the fraction per epoch")
    p.add_argument("--st-max-p", type=float, help="ceiling of the fraction")
    p.add_argument("--st-weight", type=float, help="loss weight of a pseudo-labelled sample")
    add_optimisation_args(p)
    p.add_argument("--early-stopping-metric", help="validation metric to watch, e.g. recall@50 "
                   "(default: recall@10 on candidate lists, recall@50 on full rankings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, dest="num_threads", help="torch threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true")


def model_overrides(args) -> dict:
    return {k: v for k, v in {
        "fusion": args.fusion, "dial": args.dial, "gate": args.gate, "dsbn": args.dsbn,
        "shared_experts": args.shared_experts, "embedding_dim": args.embedding_dim,
        "hash_buckets": args.hash_buckets, "sparse_embeddings": args.sparse_embeddings,
    }.items() if v is not None}


def train_config(args, **defaults):
    from adirec.train.config import SelfTrainingConfig, TrainConfig
    kw = dict(defaults)
    for k in ("epochs", "batch_size", "lr", "num_negatives", "temperature", "patience", "num_threads",
              "early_stopping_metric", "device"):
        if getattr(args, k) is not None:
            kw[k] = getattr(args, k)
    st = {k: getattr(args, f"st_{k}") for k in ("start_epoch", "p0", "delta_p", "max_p", "weight")
          if getattr(args, f"st_{k}") is not None}
    if args.self_training is not None:
        st["enabled"] = args.self_training
    if st:
        kw["self_training"] = SelfTrainingConfig(**st)
    return TrainConfig(seed=args.seed, progress=not args.no_progress, **kw)


def cmd_train(args) -> int:
    from adirec.train.distributed import train_run  # one process, or every rank under torchrun
    summary = train_run(data_spec(args), args.model, args.out, model_overrides=model_overrides(args),
                        train_config=train_config(args))
    if summary is not None:  # None on the ranks other than 0 of a torchrun job
        print(json.dumps({k: v for k, v in summary.items()}, indent=2))
    return 0


def cmd_evaluate(args) -> int:
    from adirec.runs import evaluate_run
    from adirec.utils import atomic_write_json
    report = evaluate_run(args.run_dir, protocol=args.protocol, split=args.split, ks=args.k, device=args.device)
    print(format_metrics({report["model"]: report["metrics"]}, title=f"{report['data']} "
                         f"({report['protocol']}, split {report['split']})"))
    if args.json:
        atomic_write_json(args.json, report)
    return 0


def format_metrics(reports: dict[str, dict], title: str = "") -> str:
    """A plain-text table: one row per (metric, model), one column per domain and the mean."""
    lines = [title] if title else []
    first = next(iter(reports.values()))
    domains = [d for d in next(iter(first.values())) if d != "mean"] + ["mean"]
    width = max(12, *(len(d) + 2 for d in domains))
    name_w = max(18, *(len(m) + len(k) + 3 for m in reports for k in first))
    lines.append(f"{'':{name_w}}" + "".join(f"{d:>{width}}" for d in domains))
    for metric in first:
        for model, metrics in reports.items():
            row = metrics[metric]
            lines.append(f"{model + ' ' + metric:{name_w}}" +
                         "".join(f"{row.get(d, float('nan')):>{width}.4f}" for d in domains))
    return "\n".join(lines)


def cmd_demo(args) -> int:
    from adirec.data.spec import DataSpec
    from adirec.runs import evaluate_run, train_run
    from adirec.train.config import TrainConfig
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    spec = DataSpec(source=f"synthetic:{args.preset}", seed=args.seed)
    t0 = time.time()
    data = spec.load()
    print(f"data {data.name}: {data.num_users} users, {data.num_items} items, "
          f"{len(data.splits['train'])} training interactions in domains {data.domains} "
          f"({time.time() - t0:.1f}s)")
    reports = {}
    for name in ("adi-se", "dnn"):
        print(f"training {name} ...")
        cfg = TrainConfig(epochs=args.epochs, seed=args.seed, progress=not args.no_progress)
        train_run(spec, name, out / name, train_config=cfg, data=data)
        reports[name] = evaluate_run(out / name, ks=[20, 50], data=data)
    print()
    r = next(iter(reports.values()))
    print(format_metrics({k: {m: v for m, v in rep["metrics"].items() if m.startswith("recall")}
                          for k, rep in reports.items()},
                         title=f"Recall on {data.name} ({r['protocol']} ranking, split {r['split']})"))
    print(f"\nruns saved under {out}  (total {time.time() - t0:.0f}s)")
    return 0


def cmd_data_inspect(args) -> int:
    from adirec.data.spec import DataSpec
    from adirec.options import given_options
    data = DataSpec(source=args.src, seed=args.seed, **given_options(args, DataSpec, dest_prefix="data_")).load()
    s = data.summary()
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['name']}: {len(data.domains)} domains, {data.num_users} users, {data.num_items} items")
    cols = ["train", "valid", "test", "users", "items"]
    print(f"{'domain':16}" + "".join(f"{c:>10}" for c in cols) + f"{'share':>8}")
    total = sum(r["train"] for r in s["domains"].values())
    for name, r in s["domains"].items():
        print(f"{name:16}" + "".join(f"{r[c]:>10}" for c in cols) + f"{r['train'] / total:>8.1%}")
    o = s["overlap"]
    print(f"users in >= 2 domains: {o['users_in_2plus_domains']} of {o['users_total']}; "
          f"items in >= 2 domains: {o['items_in_2plus_domains']} of {o['items_total']}")
    for pair, v in o["pairs"].items():
        print(f"  overlap {pair:24} users {v['users']:>8}  items {v['items']:>8}")
    print("fields: " + ", ".join(f"{f.name}({f.side},{f.kind}{',per-domain' if f.per_domain else ''})"
                                 for f in data.schema.fields))
    for line in s.get("loading", []):
        print(line)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adirec", description="Multi-domain candidate retrieval (ADI).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train adi-se and dnn on synthetic data and compare them")
    p.add_argument("--preset", default="small", help="synthetic preset (small: 50k interactions)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model and write a run directory")
    add_data_args(p)
    add_model_train_args(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run directory")
    p.add_argument("run_dir")
    p.add_argument("--protocol", choices=["sampled", "full"])
    p.add_argument("--split", choices=["valid", "test"])
    p.add_argument("--k", type=_csv_ints, default=[10, 50], help="cut-offs, e.g. 10,50")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.set_defaults(func=cmd_evaluate)

    data = sub.add_parser("data", help="data set tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("inspect", help="rows, users, items per domain and their overlap")
    p.add_argument("src")
    from adirec.data.spec import DataSpec
    from adirec.options import add_options
    add_options(p.add_argument_group("data"), DataSpec, dest_prefix="data_", skip=("source", "seed"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_data_inspect)
    from adirec.data.parquet import register as register_convert
    register_convert(data)  # adirec data convert SRC --to DIR
    register_bench(sub)
    register_serve(sub)  # adirec export | recommend | serve
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"adirec: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
