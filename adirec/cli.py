"""The ``adirec`` command: ``demo``, ``train``, ``evaluate``, ``data inspect | convert``, ``bench``,
``export``, ``recommend``, ``serve``, ``index add`` (see ``adirec -h``). Every option's help line
shows its default; a command that needs a missing optional dependency says which extra to install.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from adirec import __version__
from adirec.arguments import add_data_args, add_model_args, add_train_args, csv_ints
from adirec.arguments import train_plan as _train_plan
from adirec.bench.cli import register as register_bench
from adirec.data.parquet import DEFAULT_ROW_GROUP_ROWS
from adirec.data.spec import DataSpec
from adirec.extras import missing_extra_message
from adirec.options import add_options, given_options, parse_set
from adirec.serve.cli import register as register_serve
from adirec.tune import register as register_tune


def cmd_train(args) -> int:
    from adirec.runs import read_run_config, train_run  # one process, or every rank under torchrun
    from adirec.train.config import TrainConfig
    if args.resume:
        allowed = {"train_num_threads", "train_device", "train_progress", "train_epochs"}
        given = [k for k, v in vars(args).items() if v not in (None, [], False) and k not in allowed
                 and k not in ("resume", "func", "command")]
        if given:
            raise ValueError(f"--resume continues a run with the settings it recorded; only --threads, --device, "
                             f"--no-progress and a higher --epochs may be given with it, not {sorted(given)}")
        cfg = read_run_config(args.resume)
        from adirec.data.spec import DataSpec
        train = dict(cfg["train_config"])
        for k in ("num_threads", "device", "progress", "epochs"):
            if getattr(args, f"train_{k}") is not None:
                train[k] = getattr(args, f"train_{k}")
        summary = train_run(DataSpec(**cfg["data"]), cfg["model"], args.resume, train_config=TrainConfig(**train),
                            resume=True)
    else:
        spec, name, overrides, tcfg = _train_plan(args)
        if args.dry_run:
            print(json.dumps(dry_run(spec, name, overrides, tcfg), indent=2))
            return 0
        if not args.out:
            raise ValueError("--out RUN_DIR is required")
        summary = train_run(spec, name, args.out, model_overrides=overrides, train_config=tcfg)
    if summary is not None:  # None on the ranks other than 0 of a torchrun job
        print(json.dumps(summary, indent=2))
    return 0


def dry_run(spec, name: str, overrides: dict, tcfg) -> dict:
    """What ``adirec train`` would train: the effective model and training configs (the data is
    loaded, since some defaults depend on it, e.g. the number of domains), nothing written."""
    from dataclasses import asdict
    from adirec.models.registry import build_config, build_model
    from adirec.runs import resolve_spec
    spec = resolve_spec(spec)
    data = spec.load()
    mcfg = build_config(name, data.num_domains, **overrides)
    model = build_model(name, data.schema, data.num_domains, mcfg)
    from adirec.runs import built_config
    return {"model": name, "data": asdict(spec), "domains": data.domains,
            "model_config": asdict(built_config(model, mcfg)),
            "train_config": asdict(tcfg), "parameters": model.num_parameters()}


def cmd_ensemble(args) -> int:
    from adirec.runs import ensemble_runs
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ValueError(f"--weights must be comma-separated numbers, got {args.weights!r}") from None
    out = ensemble_runs(args.runs, args.out, weights=weights)
    print(f"ensemble of {len(args.runs)} runs written to {out}; evaluate or export it like any run")
    return 0


def cmd_evaluate(args) -> int:
    from adirec.runs import evaluate_run
    from adirec.utils import atomic_write_json, use_threads
    use_threads(args.threads)
    report = evaluate_run(args.run_dir, protocol=args.protocol, split=args.split, ks=args.k, device=args.device,
                          data_source=args.data, allow_incomplete=args.allow_incomplete, history=args.history)
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


#: what ``adirec demo`` trains: ADI-SE, the same network that knows nothing of domains, and the
#: DNN that reads the per-domain features; at a size and length that take about a minute on two
#: cores. Every model gets the same inputs, size fields and training settings (its preset's
#: self-training switch aside: self-training is part of ADI)
DEMO_MODELS = ("adi-se", "dnn-blind", "dnn")
DEMO_SIZE = dict(embedding_dim=32, expert_hidden=(128,), expert_out=64, forward_hidden=(64,), output_dim=32)
DEMO_TRAIN = dict(batch_size=1024, num_negatives=256)
DEMO_HISTORY = 20


def demo_runs(out: Path, *, preset: str = "demo", seed: int = 0, epochs: int = 2, threads: int | None = None,
              models: tuple[str, ...] = DEMO_MODELS, progress: bool = False, data=None, log=print) -> dict:
    """Train and evaluate the demo's models on ``synthetic:PRESET`` into ``out/<model>``:
    ``{model: evaluate_run report}`` (full ranking, Recall@20/50)."""
    from adirec.data.spec import DataSpec
    from adirec.models.registry import train_defaults
    from adirec.runs import evaluate_run, train_run
    from adirec.train.config import TrainConfig
    spec = DataSpec(source=f"synthetic:{preset}", history_len=DEMO_HISTORY)
    data = data if data is not None else spec.load()
    reports = {}
    for name in models:
        t0 = time.time()
        cfg = TrainConfig(epochs=epochs, seed=seed, progress=progress, num_threads=threads,
                          **{**train_defaults(name), **DEMO_TRAIN})
        train_run(spec, name, out / name, model_overrides=DEMO_SIZE, train_config=cfg, data=data)
        reports[name] = evaluate_run(out / name, ks=[20, 50], data=data)
        log(f"trained {name} in {time.time() - t0:.0f}s: mean Recall@50 "
            f"{reports[name]['metrics']['recall@50']['mean']:.4f}")
    return reports


def cmd_demo(args) -> int:
    from adirec.data.spec import DataSpec
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    t0 = time.time()
    data = DataSpec(source=f"synthetic:{args.preset}", history_len=DEMO_HISTORY).load()
    print(f"data {data.name}: {data.num_users} users, {data.num_items} items, "
          f"{len(data.splits['train'])} training interactions in domains {data.domains}; the same users "
          f"like different item groups in different domains ({time.time() - t0:.1f}s)")
    reports = demo_runs(out, preset=args.preset, seed=args.seed, epochs=args.epochs, threads=args.threads,
                        progress=not args.no_progress, data=data)
    print()
    r = next(iter(reports.values()))
    print(format_metrics({k: {m: v for m, v in rep["metrics"].items() if m.startswith("recall")}
                          for k, rep in reports.items()},
                         title=f"Recall on {data.name} ({r['protocol']} ranking, split {r['split']})"))
    mean = {k: rep["metrics"]["recall@50"]["mean"] for k, rep in reports.items()}
    print()
    if "adi-se" in mean and "dnn-blind" in mean:
        print(demo_reading(mean))
    print(f"\nruns saved under {out}  (total {time.time() - t0:.0f}s)")
    return 0


def demo_reading(mean: dict[str, float]) -> str:
    """The demo's one-sentence reading of its Recall@50 table (``mean``: method -> mean over
    domains), which says why only when the measured order supports it."""
    adi, blind = mean["adi-se"], mean["dnn-blind"]
    text = (f"What the table shows: ranking each domain's items for the same users, ADI-SE finds {adi:.1%} "
            f"of the held-out items in its top 50 against {blind:.1%} for the same-sized network that does "
            f"not know the domain (dnn-blind)")
    if adi > blind:
        text += (", because these users like different item groups in different domains and only a model "
                 "that knows the domain can tell them apart")
    else:
        text += (": in this run ADI-SE is not ahead, although these users like different item groups in "
                 "different domains (over seeds 0-2 it is expected ahead; try another --seed)")
    if "dnn" in mean:
        text += (f"; dnn, which sees the per-domain features but has no domain-specific network, reaches "
                 f"{mean['dnn']:.1%}")
    return text + "."


def cmd_data_inspect(args) -> int:
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


def cmd_data_convert(args) -> int:
    import resource
    from adirec.data.convert import convert
    from adirec.data.parquet import ParquetLayout
    t0 = time.time()
    out = convert(args.src, args.to, row_group_rows=args.row_group_rows, overwrite=args.overwrite,
                  seed=args.seed, **given_options(args, DataSpec, dest_prefix="data_"))
    layout = ParquetLayout(out)
    size = sum(e["bytes"] for e in layout.manifest["files"].values())
    rows = ", ".join(f"{s} {n}" for s, n in layout.info["splits"].items())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wrote {out}: {layout.name}, {layout.num_users} users, {layout.num_items} items, "
          f"interactions {rows}; {size / 2**20:.1f} MiB in {time.time() - t0:.1f}s, peak RSS {peak:.0f} MiB")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adirec", description="Multi-domain candidate retrieval (ADI).")
    parser.add_argument("--version", action="version", version=f"adirec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train adi-se and a domain-blind dnn on synthetic data and compare them",
                       description="Train ADI-SE, a DNN that does not know the domain (dnn-blind) and a DNN that "
                                   "reads the per-domain features (dnn) on a synthetic world where the same users "
                                   "like different item groups in different domains, and print per-domain recall.")
    p.add_argument("--preset", default="demo", help="synthetic preset (default: demo, 60k interactions)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs per model (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    p.add_argument("--threads", type=int, help="torch threads (default: one per CPU not already busy)")
    p.add_argument("--out", default="runs/demo", help="where the runs are saved (default: runs/demo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a model preset on a data source into a run directory. Settings "
                                   "apply in this order: TrainConfig defaults, the preset's, --config, flags, --set.")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory to create")
    p.add_argument("--config", metavar="FILE", help="replay a run: its config.json (data, preset, model and "
                   "training settings); flags and --set still apply")
    p.add_argument("--set", type=parse_set, action="append", default=[], metavar="KEY=VALUE",
                   help="any TrainConfig / TwoTowerConfig / DataSpec field, dotted for nesting "
                        "(--set self_training.p0=0.05 --set expert_hidden=256,128); repeatable")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last completed "
                   "epoch, with the settings it recorded; with a higher --epochs, continue a run that "
                   "reached its epoch cap still improving")
    p.add_argument("--dry-run", action="store_true", help="print the effective configuration and exit")
    add_data_args(p)
    add_model_args(p)
    add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("ensemble", help="combine finished runs on the same data into one run (one index)",
                       description="Write a run directory whose score is the weighted sum of the runs' scores: "
                                   "user vectors [w1 u1, ..., wK uK] and item vectors [v1, ..., vK], still one "
                                   "inner product. Evaluate, export and serve it like any run.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs trained on the same data")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the ensemble's run directory to create")
    p.add_argument("--weights", metavar="W1,W2,...", help="one weight per run (default: all 1)")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("evaluate", help="evaluate a run directory")
    p.add_argument("run_dir")
    p.add_argument("--protocol", choices=["sampled", "full"], help="rank candidate lists (sampled) or the "
                   "whole domain corpus (full); default: sampled where the data has candidate lists, else full")
    p.add_argument("--split", choices=["valid", "test"], help="default: the split the run reports (test when "
                   "the data has one, else valid)")
    p.add_argument("--k", type=csv_ints, default=[10, 50], help="cut-offs N of Recall@N, NDCG@N, HitRate@N, "
                   "MRR@N and coverage@N")
    p.add_argument("--json", metavar="FILE", help="write the report as JSON")
    p.add_argument("--device", default="auto", help="auto (a GPU when PyTorch sees one, else the CPU), cpu, "
                   "cuda or cuda:N")
    p.add_argument("--data", metavar="SRC", help="the run's data source at another place (default: the one "
                   "the run recorded); it must hold the same data")
    p.add_argument("--allow-incomplete", action="store_true", help="evaluate an unfinished run's best "
                   "checkpoint instead of refusing")
    p.add_argument("--threads", type=int, help="torch threads (default: one per CPU not already busy)")
    p.add_argument("--history", choices=["train", "train+valid"], default="train",
                   help="what users' histories hold when the test split is ranked: the training positives "
                        "(default), or also the validation positives before them (leave-one-out as published "
                        "sequential recommenders are evaluated); the seen items removed follow")
    p.set_defaults(func=cmd_evaluate)

    data = sub.add_parser("data", help="data set tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("inspect", help="rows, users, items per domain and their overlap")
    p.add_argument("src", help="the data source: xmrec:DIR | recbole:DIR/PREFIX | table:PATH | parquet:DIR | "
                   "synthetic[:PRESET]")
    add_options(p.add_argument_group("data"), DataSpec, dest_prefix="data_", skip=("source", "seed"))
    p.add_argument("--seed", type=int, default=0, help="seed of a synthetic data set")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_data_inspect)

    p = data.add_parser(
        "convert", help="write a data set as a Parquet layout (streaming, parquet:DIR)",
        description="Write SRC (xmrec:DIR, recbole:DIR/PREFIX, table:PATH, synthetic[:PRESET], parquet:DIR) as a "
                    "Parquet layout. Synthetic data are generated straight to Parquet, block by block.")
    p.add_argument("src", help="the data source, as for data inspect")
    p.add_argument("--to", required=True, metavar="DIR", help="layout directory to write")
    add_options(p.add_argument_group("data"), DataSpec, dest_prefix="data_", skip=("source", "seed"))
    p.add_argument("--seed", type=int, default=0, help="seed of a synthetic data set")
    p.add_argument("--row-group-rows", type=int, default=DEFAULT_ROW_GROUP_ROWS,
                   help="rows per row group of the interaction files")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DIR if it is a Parquet layout (any other directory is refused)")
    p.set_defaults(func=cmd_data_convert)
    register_bench(sub)
    register_tune(sub)  # adirec tune
    register_serve(sub)  # adirec export | recommend | serve
    show_defaults(parser)
    return parser


def show_defaults(parser: argparse.ArgumentParser) -> None:
    """Append ``(default: X)`` to the help of every option of ``parser`` and its subcommands that
    has a default its help does not mention yet (flags that are off unless given have none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                show_defaults(subparser)
            continue
        if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        default = action.default
        if default is None or default is False or default == [] or default is argparse.SUPPRESS:
            continue
        text = action.help or ""
        if "default" in text.lower():
            continue
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        shown = shown.replace("%", "%%")
        action.help = f"{text} (default: {shown})" if text else f"default: {shown}"


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops a command the way Ctrl-C does: cleanly, resumably


def main(argv: list[str] | None = None) -> int:
    from adirec.runs import TrainingInterrupted
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return args.func(args)
    except TrainingInterrupted as e:
        print(f"adirec: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("adirec: interrupted", file=sys.stderr)
        return 130
    except FloatingPointError as e:  # training diverged; the run directory records it
        print(f"adirec: error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"adirec: error: {msg}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency that is not installed: say which extra brings it
        message = missing_extra_message(e, f"adirec {args.command}")
        if message is None:
            raise
        print(f"adirec: error: {message}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
