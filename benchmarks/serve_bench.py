"""Serving benchmark: a synthetic 3-domain x 1,000,000-item bundle served over loopback HTTP.

What it builds (no training, so it fits a small machine):

* data: ``--users`` users and, per domain, every one of ``--items`` items interacted with once by
  a random user (so each domain's corpus is the whole catalogue), through the normal
  ``build_dataset`` path (vocabularies, histories, popularity);
* model: ADI-SE (default ``TwoTowerConfig``) with random weights: the user tower runs on every
  request exactly as it would for a trained model;
* item vectors: NOT the random item tower's (whose outputs all point almost the same way), but
  clustered unit vectors, like trained item embeddings grouped by category: ``--clusters``
  random centres, each item = normalise(centre + N(0, 1/dim) noise), passed to ``write_bundle``;
* bundle: the real export path (``write_bundle``), default ``IndexConfig`` (IVF above 100,000
  items), then ``load_bundle`` with full checksum verification.

What it measures:

1. recall@100 of each domain's ANN index against exact inner-product search (``IndexFlatIP``
   on the same vectors), for two query sets: synthetic user vectors drawn like the items (a mix
   of 3 centres plus noise), and the random user tower's vectors of real users (what the HTTP
   requests below ask for);
2. in-process latency of ``Recommender.recommend`` (user tower + index search + seen-item
   filtering + key decoding), one request at a time;
3. HTTP latency p50/p99, throughput and errors of ``POST /v1/recommend`` under ``wrk`` (a real
   load generator, Lua script cycling over pre-built bodies) at 1, 8 and 32 connections against
   ``adirec serve`` on 127.0.0.1, and the HTTP/in-process latency ratio.

Every request loop is bounded (``--duration`` seconds per wrk run, ``--inprocess`` requests) and
only talks to 127.0.0.1. Run it once, e.g. ``nice -n 10 python benchmarks/serve_bench.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from adirec.data.build import RawInteractions, build_dataset
from adirec.models.config import TwoTowerConfig
from adirec.models.adi import TwoTowerModel
from adirec.serve.bundle import load_bundle, write_bundle
from adirec.serve.service import Recommender

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from server_process import start_server, stop_server  # noqa: E402  (shared with the serving tests)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_data(num_users: int, num_items: int, num_domains: int, seed: int):
    """Every item once per domain, given to a random user at a random time."""
    rng = np.random.default_rng(seed)
    n = num_items * num_domains
    items = np.concatenate([rng.permutation(num_items) for _ in range(num_domains)])
    domains = np.repeat(np.arange(num_domains), num_items)
    users = rng.integers(0, num_users, n)
    times = rng.integers(1_600_000_000, 1_700_000_000, n)
    train = RawInteractions(users, items, domains, timestamp=times)
    return build_dataset("serve-bench", [f"d{d + 1}" for d in range(num_domains)], train, history_len=50)


def clustered_vectors(n: int, centres: np.ndarray, rng, mix: int = 1, noise: float = 1.0) -> np.ndarray:
    """Unit vectors around ``mix`` random centres each (noise ~ N(0, noise^2 / dim) per axis)."""
    dim = centres.shape[1]
    pick = rng.integers(0, len(centres), (n, mix))
    base = centres[pick].sum(axis=1)
    return unit(base + rng.standard_normal((n, dim)).astype(np.float32) * (noise / np.sqrt(dim)))


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.mean(hits) / k)


def percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text: str) -> dict:
    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")
    reqs = re.search(r"(\d+) requests in ([\d.]+)(s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {"p50_ms": ms("50%"), "p90_ms": ms("90%"), "p99_ms": ms("99%"),
            "requests": int(reqs.group(1)) if reqs else 0, "requests_per_s": float(rps.group(1)) if rps else 0.0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0}


def wrk_script(bodies: list[str]) -> str:
    table = ",\n".join(json.dumps(b) for b in bodies)  # JSON string literals are valid Lua strings here
    return f"""-- POST pre-built /v1/recommend bodies, cycling
local bodies = {{
{table}
}}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  return wrk.format(nil, "/v1/recommend", nil, bodies[(i % #bodies) + 1])
end
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000, help="items per domain")
    ap.add_argument("--domains", type=int, default=3)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=1000, help="queries per domain for recall")
    ap.add_argument("--inprocess", type=int, default=1000, help="in-process requests timed")
    ap.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    ap.add_argument("--connections", default="1,8,32")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", help="where the bundle goes (default: a temporary directory, removed)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="adirec-serve-bench-"))
    bundle_dir = work / "bundle"
    results: dict = {"config": vars(args), "machine": {"cpus": os.cpu_count(), "nice": os.nice(0),
                                                       "loadavg_start": os.getloadavg()}}
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    # ------------------------------------------------------------ build the bundle
    data = build_data(args.users, args.items, args.domains, args.seed)
    results["data_seconds"] = time.perf_counter() - t0
    model = TwoTowerModel(data.schema, data.num_domains, TwoTowerConfig()).eval()
    dim = model.config.output_dim
    centres = unit(rng.standard_normal((args.clusters, dim)))
    vectors = [clustered_vectors(len(c), centres, rng) for c in data.corpus]
    t = time.perf_counter()
    write_bundle(bundle_dir, model, data, model_name="adi-se", item_vectors=vectors, overwrite=True,
                 extra={"weights": "random (benchmark)", "item_vectors_kind": "clustered synthetic"})
    results["export_seconds"] = time.perf_counter() - t
    results["bundle_bytes"] = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file())
    t = time.perf_counter()
    bundle = load_bundle(bundle_dir)  # verifies every checksum
    results["load_seconds"] = time.perf_counter() - t
    results["index"] = {d.name: d.index_info for d in bundle.domains}
    print(f"bundle: {args.domains} x {args.items} items, {args.users} users, "
          f"{results['bundle_bytes'] / 2**30:.2f} GiB; data {results['data_seconds']:.0f}s, "
          f"export {results['export_seconds']:.0f}s, load+verify {results['load_seconds']:.1f}s; "
          f"index {next(iter(results['index'].values()))}", flush=True)

    # ------------------------------------------------------------------- recall@100
    rec = Recommender(bundle)
    known = rng.integers(1, data.num_users + 1, args.queries)
    recall = {}
    for d, dom in enumerate(bundle.domains):
        exact = faiss.IndexFlatIP(dim)
        exact.add(dom.embeddings)
        synth = clustered_vectors(args.queries, centres, rng, mix=3, noise=1.5)
        tower = rec._embed(bundle.store.user_features(known, np.full(len(known), d)), dom)
        row = {}
        for name, q in (("synthetic_users", synth), ("user_tower", tower)):
            _, want = exact.search(q, 100)
            _, got = dom.index.search(q, 100)
            row[name] = recall_at(got, want)
        recall[dom.name] = row
        print(f"recall@100 {dom.name}: synthetic users {row['synthetic_users']:.4f}, "
              f"user tower {row['user_tower']:.4f}", flush=True)
    results["recall_at_100"] = recall

    # -------------------------------------------------------- in-process latency
    torch.set_num_threads(1)  # as the server runs
    faiss.omp_set_num_threads(1)
    users = data.user_keys[rng.integers(1, data.num_users + 1, args.inprocess)].tolist()
    doms = [bundle.domains[j].name for j in rng.integers(0, args.domains, args.inprocess)]
    for u, dn in zip(users[:20], doms[:20]):  # warm-up
        rec.recommend(u, dn, args.k)
    lat = []
    for u, dn in zip(users, doms):
        s = time.perf_counter()
        rec.recommend(u, dn, args.k)
        lat.append(time.perf_counter() - s)
    results["in_process"] = {"p50_ms": percentile_ms(lat, 50), "p99_ms": percentile_ms(lat, 99),
                             "mean_ms": float(np.mean(lat) * 1e3), "requests": len(lat)}
    print(f"in-process recommend(k={args.k}): p50 {results['in_process']['p50_ms']:.2f} ms, "
          f"p99 {results['in_process']['p99_ms']:.2f} ms", flush=True)
    del rec, bundle  # the server process loads its own copy

    # ------------------------------------------------------------------ HTTP (wrk)
    bodies = [json.dumps({"user_id": u, "domain": dn, "k": args.k}) for u, dn in zip(users, doms)]
    script = work / "recommend.lua"
    script.write_text(wrk_script(bodies))
    server = start_server(bundle_dir, timeout=600)
    base = server.url
    http = {}
    try:
        import httpx
        check = httpx.post(f"{base}/v1/recommend", content=bodies[0], headers={"content-type": "application/json"})
        assert check.status_code == 200 and len(check.json()["items"]) == args.k, check.text
        subprocess.run(["wrk", "-t1", "-c8", "-d3s", "-s", str(script), base], capture_output=True, timeout=60)  # warm-up
        for c in [int(x) for x in args.connections.split(",")]:
            threads = min(c, 2)
            out = subprocess.run(["wrk", f"-t{threads}", f"-c{c}", f"-d{args.duration}s", "--latency",
                                  "--timeout", "10s", "-s", str(script), base],
                                 capture_output=True, text=True, timeout=args.duration + 60)
            row = parse_wrk(out.stdout)
            row["raw"] = out.stdout
            http[c] = row
            print(f"HTTP {c:>2} connection(s): p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, "
                  f"{row['requests_per_s']:.0f} req/s, {row['requests']} requests, "
                  f"non-2xx {row['non_2xx']}, socket errors {row['socket_errors']}", flush=True)
    finally:
        stop_server(server)
    results["http"] = http
    one = http.get(1)
    if one:
        results["overhead_ratio_p50"] = one["p50_ms"] / results["in_process"]["p50_ms"]
        results["overhead_ratio_p99"] = one["p99_ms"] / results["in_process"]["p99_ms"]
        print(f"HTTP / in-process at 1 client: p50 x{results['overhead_ratio_p50']:.2f}, "
              f"p99 x{results['overhead_ratio_p99']:.2f}")
    results["total_seconds"] = time.perf_counter() - t0
    results["machine"]["loadavg_end"] = os.getloadavg()
    print(f"load average at start {results['machine']['loadavg_start'][0]:.1f}, "
          f"at end {results['machine']['loadavg_end'][0]:.1f} ({os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
