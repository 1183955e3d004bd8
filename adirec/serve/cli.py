"""``adirec export | recommend | serve | index add``: the serving subcommands, added by :func:`register`."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Add the ``export``, ``recommend``, ``serve`` and ``index`` subcommands to ``adirec``'s parser."""
    p = subparsers.add_parser("export", help="turn a run directory into a serving bundle")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, metavar="BUNDLE", help="bundle directory to create")
    # index settings default to IndexConfig's (None = not given), so --help imports no FAISS
    p.add_argument("--exact-max-items", type=int, help="corpora up to this size get an exact index (default: 100000)")
    p.add_argument("--ann", choices=["ivf", "hnsw"], help="approximate index above that size (default: ivf)")
    p.add_argument("--ivf-nlist", type=int, help="IVF cells (default: 0 = about 4*sqrt(n))")
    p.add_argument("--ivf-nprobe", type=int, help="IVF cells searched per query (default: 256)")
    p.add_argument("--hnsw-m", type=int, help="HNSW neighbours per node (default: 32)")
    p.add_argument("--hnsw-ef-construction", type=int, help="HNSW build candidate list (default: 64)")
    p.add_argument("--hnsw-ef-search", type=int, help="HNSW search candidate list (default: 256)")
    p.add_argument("--data", metavar="SRC", help="the run's data source at another place (default: the one the "
                   "run recorded); it must hold the same data")
    p.add_argument("--allow-incomplete", action="store_true", help="export an unfinished run's best checkpoint "
                   "instead of refusing")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle at --out (only a "
                   "directory whose manifest says it is a bundle; anything else is refused)")
    p.add_argument("--threads", type=int, help="torch threads for the item tower (default: one per CPU not "
                   "already busy)")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("recommend", help="top-K items of users in a domain, from a bundle")
    p.add_argument("bundle")
    p.add_argument("--domain", required=True, help="the domain to recommend in")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one user: the id as in the training data (in a bundle with domain-scoped "
                     "keys, e.g. XMRec, the user's own id in --domain, or the stored '<domain>:<id>')")
    who.add_argument("--users", metavar="FILE", help="file of user ids, one per line (batch mode)")
    p.add_argument("--k", type=int, default=100, help="items to return per user")
    p.add_argument("--include-seen", action="store_true", help="keep the user's training positives")
    p.add_argument("--history", help="comma-separated item keys (oldest first) for --user")
    p.add_argument("--out", metavar="FILE", help="batch output: .jsonl or .parquet (default: JSONL on stdout)")
    p.add_argument("--batch-size", type=int, default=512, help="users scored at once in batch mode")
    p.add_argument("--exclude-items", metavar="KEYS", help="comma-separated item keys never to return")
    p.add_argument("--allow-items", metavar="KEYS", help="comma-separated item keys: return only these")
    p.add_argument("--where", action="append", default=[], metavar="FIELD=V1,V2",
                   help="item attribute filter: FIELD's encoded value is one of V1,V2 (repeatable; all must hold)")
    p.add_argument("--item-features", action="store_true", help="add each item's stored (encoded) features")
    p.add_argument("--threads", type=int, help="torch threads (default: one per CPU not already busy)")
    p.set_defaults(func=cmd_recommend)

    p = subparsers.add_parser("serve", help="serve a bundle over HTTP (FastAPI + uvicorn)")
    p.add_argument("bundle")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port, printed at start-up)")
    p.add_argument("--enable-reload", action="store_true", help="expose POST /v1/admin/reload (needs a token)")
    p.add_argument("--token-file", metavar="FILE", help="file holding the API bearer token (default: the "
                   "ADIREC_API_TOKEN environment variable; at least 16 characters)")
    p.add_argument("--require-token", action="store_true",
                   help="every API endpoint needs the token, not only the admin ones")
    p.add_argument("--reload-root", metavar="DIR", help="reload loads bundles under DIR only "
                   "(default: the directory holding BUNDLE)")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for")
    p.add_argument("--max-batch", type=int, default=1000, help="most users in one batch request")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (413 above)")
    p.add_argument("--threads", type=int, default=1, help="torch / FAISS threads per request (default 1)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("index", help="change a bundle's item indexes")
    sub = p.add_subparsers(dest="index_command", required=True)
    p = sub.add_parser("add", help="add new items to a domain's index from their features, without retraining",
                       description="Runs the item tower on new items and adds them to the domain's index; "
                       "rewrites the bundle atomically (a server picks it up on reload). FILE is Parquet or "
                       "CSV with a column 'item' (the new keys) and columns named as the bundle's item fields "
                       "(GET /v1/metadata item_features), encoded as the bundle stores them: categorical and "
                       "sequence fields as vocabulary indices (0 = unknown; a sequence as a list, or in CSV as "
                       "space-separated integers), dense fields standardised; a per-domain field gives the "
                       "value in --domain. A missing column means unknown (0) for ids and 0.0 (the training "
                       "mean) for dense values. New items use the model's unknown-id row for item_id.")
    p.add_argument("bundle")
    p.add_argument("--domain", required=True, help="the domain whose index gets the items")
    p.add_argument("--items", required=True, metavar="FILE", help=".parquet or .csv")
    p.add_argument("--threads", type=int, help="torch threads for the item tower (default: one per CPU not "
                   "already busy)")
    p.set_defaults(func=cmd_index_add)


def cmd_export(args) -> int:
    from adirec.utils import use_threads
    use_threads(args.threads)
    from adirec.serve.bundle import IndexConfig, export_bundle
    given = {k: getattr(args, k) for k in ("exact_max_items", "ann", "ivf_nlist", "ivf_nprobe", "hnsw_m",
                                           "hnsw_ef_construction", "hnsw_ef_search")}
    cfg = IndexConfig(**{k: v for k, v in given.items() if v is not None})
    out = export_bundle(args.run_dir, args.out, index_config=cfg, overwrite=args.overwrite, data_source=args.data,
                        allow_incomplete=args.allow_incomplete)
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    print(json.dumps({"bundle": str(out), "model_version": manifest["model_version"],
                      "domains": {d: {"items": v["items"], "index": v["index"]["kind"]}
                                  for d, v in manifest["domain_info"].items()}}, indent=2))
    return 0


def parse_filters(args):
    """The ``--exclude-items``, ``--allow-items`` and ``--where`` options as service Filters (None
    when none is given)."""
    from adirec.serve.service import Filters
    if not (args.exclude_items or args.allow_items is not None or args.where):
        return None
    attributes = {}
    for clause in args.where:
        field, sep, values = clause.partition("=")
        try:
            parsed = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            parsed = []
        if not sep or not field.strip() or not parsed:
            raise ValueError(f"--where {clause!r}: expected FIELD=V1,V2 with encoded (integer) values")
        attributes[field.strip()] = parsed
    split = lambda text: [x.strip() for x in text.split(",") if x.strip()]  # noqa: E731
    return Filters(split(args.exclude_items or ""), None if args.allow_items is None else split(args.allow_items),
                   attributes)


def cmd_recommend(args) -> int:
    from adirec.utils import use_threads
    use_threads(args.threads)
    from adirec.serve.service import Recommender
    rec = Recommender.from_path(args.bundle, max_k=max(args.k, 1))
    filters = parse_filters(args)
    if args.user is not None:
        features = {"history": [h.strip() for h in args.history.split(",") if h.strip()]} if args.history else None
        r = rec.recommend(args.user, args.domain, args.k, not args.include_seen, features, filters, args.item_features)
        print(json.dumps(r.to_dict()))
        return 0
    if args.history:
        raise ValueError("--history applies to --user only")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    users = [line.strip() for line in Path(args.users).read_text().splitlines() if line.strip()]
    if not users:
        raise ValueError(f"{args.users}: no user ids")
    rec.max_batch = args.batch_size
    results = []
    for start in range(0, len(users), args.batch_size):
        results += rec.recommend_batch(users[start:start + args.batch_size], args.domain, args.k,
                                       not args.include_seen, filters, args.item_features)
    write_results(results, args.out)
    if args.out:
        known = sum(r.user_known for r in results)
        print(f"{len(results)} users ({known} known, {len(results) - known} unknown: popular items) "
              f"-> {args.out}", file=sys.stderr)
    return 0


def write_results(results, out: str | None) -> None:
    """JSONL (one object per user) or Parquet (list columns), written atomically."""
    from adirec.utils import atomic_write_bytes
    if out is None:
        for r in results:
            sys.stdout.write(json.dumps(r.to_dict()) + "\n")
        return
    if out.endswith(".jsonl"):
        atomic_write_bytes(out, "".join(json.dumps(r.to_dict()) + "\n" for r in results).encode())
    elif out.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pa.table({
            "user_id": pa.array([str(r.user_id) for r in results], pa.string()),
            "domain": pa.array([r.domain for r in results], pa.string()),
            "items": pa.array([[str(i) for i in r.items] for r in results], pa.list_(pa.string())),
            "scores": pa.array([r.scores for r in results], pa.list_(pa.float32())),
            "source": pa.array([r.source for r in results], pa.string()),
            "model_version": pa.array([r.model_version for r in results], pa.string()),
        })
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(out, sink.getvalue().to_pybytes())
    else:
        raise ValueError(f"--out must end in .jsonl or .parquet, got {out!r}")


def cmd_serve(args) -> int:
    import os
    from adirec.serve.app import ServeConfig, read_token, serve
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    token = read_token(args.token_file, os.environ)
    config = ServeConfig(max_k=args.max_k, max_batch=args.max_batch, max_body_bytes=args.max_body_bytes,
                         enable_reload=args.enable_reload, api_token=token, require_token=args.require_token,
                         reload_root=args.reload_root)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.require_token:
        print(f"adirec serve: listening on {args.host}, beyond this machine, and anyone who reaches it may "
              f"query the model without a token (--require-token makes every endpoint need one)", file=sys.stderr)
    serve(args.bundle, host=args.host, port=args.port, config=config, threads=args.threads,
          log_level=args.log_level, access_log=args.access_log)
    return 0


def cmd_index_add(args) -> int:
    from adirec.serve.items import add_items
    from adirec.utils import use_threads
    use_threads(args.threads)
    print(json.dumps(add_items(args.bundle, args.domain, args.items), indent=2))
    return 0
