"""``adirec bench``: run the paper's experiments on a data set (see :mod:`adirec.bench`)."""
from __future__ import annotations

import argparse
import json


def _size_value(text: str):
    """A --set value: JSON (8, true, "sum", [256, 128]) or, failing that, a plain string;
    comma-separated integers become a tuple (expert_hidden=256,128)."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError:
        parts = text.split(",")
        if len(parts) > 1 and all(p.strip().lstrip("-").isdigit() for p in parts):
            return tuple(int(p) for p in parts)
        return text
    return tuple(v) if isinstance(v, list) else v


def _size_item(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (a model config field), got {text!r}")
    return key.strip(), _size_value(value.strip())


def _ease_lambda(text: str):
    if text == "auto":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number > 0, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"EASE lambda must be > 0, got {text!r}")
    return v


def register(subparsers) -> None:
    """Add the ``bench`` command to the ``adirec`` sub-command parsers."""
    from adirec.bench.suites import SUITES
    from adirec.cli import _csv, _csv_ints, add_data_args, add_optimisation_args
    p = subparsers.add_parser(
        "bench", help="run the paper's experiments (comparison, fusion, ablation, SE, experts)",
        description="Train and evaluate every run of the chosen suites into OUT (resumable: a rerun "
                    "skips finished runs) and write OUT/results.json, OUT/results.md and PNG figures.")
    p.add_argument("--suite", required=True, metavar="NAME",
                   help=f"{', '.join(SUITES)}, a comma-separated list, or all")
    add_data_args(p)
    p.add_argument("--seeds", type=int, default=1, help="training seeds per neural run (default 1)")
    p.add_argument("--first-seed", type=int, default=0,
                   help="first training seed: runs seeds S..S+N-1 (default 0); bench processes with "
                        "different seeds may share one --out")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--methods", type=_csv, help="only these runs, by key (mmoe-k2), suite/key (paper/adi-se) or model "
                        "name (mmoe: every run of that preset), comma-separated")
    p.add_argument("--k", type=_csv_ints, help="cut-offs (default 10 with candidate lists, else 20,50,100)")
    p.add_argument("--set", type=_size_item, action="append", default=[], metavar="KEY=VALUE",
                   help="model config field for every neural run, e.g. --set embedding_dim=16 "
                        "--set expert_hidden=64 (repeatable)")
    add_optimisation_args(p)
    p.add_argument("--ease-lambda", type=_ease_lambda, default="auto",
                   help="EASE's lambda, or auto: chosen on a hold-out from training (default)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress bars")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from adirec.bench.runner import Bench, BenchConfig
    from adirec.bench.suites import parse_suites
    from adirec.cli import data_spec
    spec = data_spec(args)
    train = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "num_negatives", "temperature", "patience",
                                           "device") if getattr(args, k) is not None}
    config = BenchConfig(data=spec, out=args.out, suites=parse_suites(args.suite), seeds=args.seeds,
                         first_seed=args.first_seed, methods=args.methods, size=dict(args.set), train=train,
                         ease_lambda=args.ease_lambda, ks=args.k, threads=args.threads, progress=not args.no_progress)
    results = Bench(config).run()
    for f in results["failed"]:
        print(f"failed: {f['suite']}/{f['key']} seed {f['seed']}: {f['error']}")
    return 1 if results["failed"] else 0
