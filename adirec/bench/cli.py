"""``adirec bench``: run the paper's experiments on a data set (see :mod:`adirec.bench`)."""
from __future__ import annotations


def register(subparsers) -> None:
    """Add the ``bench`` command to the ``adirec`` sub-command parsers."""
    from adirec.arguments import add_data_args, add_train_args
    from adirec.bench.runner import BenchConfig
    from adirec.options import add_options, parse_set
    p = subparsers.add_parser(
        "bench", help="run the paper's experiments (comparison, fusion, ablation, SE, experts, references)",
        description="Train and evaluate every run of the chosen suites into OUT (resumable: a rerun "
                    "skips finished runs) and write OUT/results.json, OUT/results.md and PNG figures. "
                    "Recipes: --suite references (the non-neural references only: the strongest one on "
                    "a data set in minutes); --suite plus (adi-plus and dnn-plus, when registered).")
    add_options(p.add_argument_group("bench"), BenchConfig, dest_prefix="bench_")
    add_data_args(p)
    p.add_argument("--set", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                   help="model config field for every neural run, e.g. --set embedding_dim=16 "
                        "--set expert_hidden=64 (repeatable)")
    add_train_args(p, skip=("seed",))
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from adirec.bench.runner import Bench, BenchConfig
    from adirec.arguments import data_spec, given_train
    from adirec.options import given_options
    given = given_options(args, BenchConfig, dest_prefix="bench_")
    for name, flag in (("suites", "--suite NAME"), ("out", "--out DIR")):
        if name not in given:
            raise ValueError(f"{flag} is required")
    spec = data_spec(args)
    train = given_train(args)
    threads, progress = train.pop("num_threads", None), train.pop("progress", True)
    config = BenchConfig(data=spec, size=dict(args.set), train=train, threads=threads, progress=progress, **given)
    results = Bench(config).run()
    for f in results["failed"]:
        print(f"failed: {f['suite']}/{f['key']} seed {f['seed']}: {f['error']}")
    return 1 if results["failed"] else 0
