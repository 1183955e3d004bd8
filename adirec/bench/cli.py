"""``adirec bench``: run the paper's experiments on a data set (see :mod:`adirec.bench`)."""
from __future__ import annotations

import argparse


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
    from adirec.arguments import add_data_args, add_train_args, csv_ints, csv_list
    from adirec.options import parse_set
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
    p.add_argument("--out", required=True, metavar="DIR", help="benchmark directory: runs, results.json, "
                   "results.md and figures")
    p.add_argument("--methods", type=csv_list, help="only these runs, by key (mmoe-k2), suite/key (paper/adi-se) or model "
                        "name (mmoe: every run of that preset), comma-separated")
    p.add_argument("--k", type=csv_ints, help="cut-offs (default 10 with candidate lists, else 20,50,100)")
    p.add_argument("--set", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                   help="model config field for every neural run, e.g. --set embedding_dim=16 "
                        "--set expert_hidden=64 (repeatable)")
    p.add_argument("--ease-lambda", type=_ease_lambda, default="auto",
                   help="EASE's lambda, or auto: chosen on a hold-out from training (default)")
    add_train_args(p, skip=("seed",))
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from adirec.bench.runner import Bench, BenchConfig
    from adirec.bench.suites import parse_suites
    from adirec.arguments import data_spec, given_train
    spec = data_spec(args)
    train = given_train(args)
    threads, progress = train.pop("num_threads", None), train.pop("progress", True)
    config = BenchConfig(data=spec, out=args.out, suites=parse_suites(args.suite), seeds=args.seeds,
                         first_seed=args.first_seed, methods=args.methods, size=dict(args.set), train=train,
                         ease_lambda=args.ease_lambda, ks=args.k, threads=threads, progress=progress)
    results = Bench(config).run()
    for f in results["failed"]:
        print(f"failed: {f['suite']}/{f['key']} seed {f['seed']}: {f['error']}")
    return 1 if results["failed"] else 0
