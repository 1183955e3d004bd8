"""Serving under hostile traffic: a clean run and a run with 10% hostile requests, both with `wrk`.

Bundle: 3 domains x 100,000 items, 100,000 users, ADI-SE with random weights and clustered item
vectors, built as ``serve_bench.py`` builds it (exact ``IndexFlatIP`` per domain at this size).
One ``adirec serve`` process (one torch/FAISS thread per request) on 127.0.0.1.

1. clean: 32 connections of normal requests (``POST /v1/recommend``, known users, random
   domains, k=100) for ``--duration`` seconds;
2. mixed: 28 connections of the same normal requests and, at the same time, 4 connections of
   hostile requests, each connection waiting between requests so that the hostile requests are
   about ``--hostile-share`` of all requests (the wait is set from the clean run's throughput
   and the hostile requests' own p50 in a 3 s run of them alone; the share reached is measured
   and reported). Hostile requests cycle over: a 300 kB user id,
   a 1.5 MB body, JSON nested 100,000 levels deep, wrong types, a dense feature of 1e308, a
   history of 1,000 keys of 900 characters.

Both wrk processes count responses by status in Lua. Measured: the p50/p99 of the normal
requests in each run (wrk's own latency distribution), 5xx counts (must be 0), and the server's
RSS (sampled every 0.1 s from /proc, and its high-water mark) against its idle RSS after start-up
and warm-up. Run once: ``nice -n 10 python benchmarks/serve_hostile_bench.py --json FILE``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serve_bench import build_data, clustered_vectors, parse_wrk, unit  # noqa: E402
from server_process import start_server, stop_server  # noqa: E402

from adirec.models.adi import TwoTowerModel  # noqa: E402
from adirec.models.config import TwoTowerConfig  # noqa: E402
from adirec.serve.bundle import write_bundle  # noqa: E402

_COUNT_STATUSES = """
counts = {}  -- global: done() reads it from each thread with thread:get
response = function(status, headers, body)
  local key = tostring(status)
  counts[key] = (counts[key] or 0) + 1
end
local threads = {}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for key, n in pairs(t:get("counts")) do total[key] = (total[key] or 0) + n end
  end
  local parts = {}
  for key, n in pairs(total) do table.insert(parts, string.format('"%s": %d', key, n)) end
  io.write("STATUSES {" .. table.concat(parts, ", ") .. "}\\n")
end
"""


def normal_script(bodies: list[str]) -> str:
    table = ",\n".join(json.dumps(b) for b in bodies)
    return f"""local bodies = {{
{table}
}}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  return wrk.format(nil, "/v1/recommend", nil, bodies[(i % #bodies) + 1])
end
""" + _COUNT_STATUSES


def hostile_script(user: str, delay_ms: float) -> str:
    """Lua building the hostile bodies in wrk itself (string.rep), cycling over them."""
    return f"""local bodies = {{
  '{{"user_id": "' .. string.rep("x", 300000) .. '", "domain": "d1"}}',
  '{{"user_id": "{user}", "domain": "d1", "pad": "' .. string.rep("p", 1500000) .. '"}}',
  '{{"user_id": {user!r}, "domain": "d1", "features": ' .. string.rep("[", 100000) .. string.rep("]", 100000) .. '}}',
  '{{"user_id": {{"a": [1]}}, "domain": 5, "k": "many", "exclude_seen": "yes"}}',
  '{{"user_id": "new", "domain": "d2", "features": {{"user_domain_activity": 1e308}}}}',
  '{{"user_id": "new", "domain": "d3", "features": {{"history": [' ..
      string.rep('"' .. string.rep("h", 900) .. '",', 999) .. '"last"]}}}}',
}}
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i + 1
  return wrk.format(nil, "/v1/recommend", nil, bodies[(i % #bodies) + 1])
end
delay = function() return {int(delay_ms)} end
""" + _COUNT_STATUSES


def statuses(text: str) -> dict[str, int]:
    for line in text.splitlines():
        if line.startswith("STATUSES "):
            return json.loads(line[len("STATUSES "):])
    return {}


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """Peak RSS of a process, sampled every ``every`` seconds while running."""

    def __init__(self, pid: int, every: float = 0.1):
        self.pid, self.every, self.peak, self._stop = pid, every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_wrk(script: Path, base: str, connections: int, duration: int, threads: int = 2) -> subprocess.Popen:
    return subprocess.Popen(["wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{duration}s",
                             "--latency", "--timeout", "10s", "-s", str(script), base],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, duration: int) -> dict:
    out, _ = proc.communicate(timeout=duration + 120)
    row = parse_wrk(out)
    row["statuses"] = statuses(out)
    row["5xx"] = sum(n for s, n in row["statuses"].items() if s.startswith("5"))
    row["raw"] = out
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000, help="items per domain")
    ap.add_argument("--domains", type=int, default=3)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=20, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--hostile-connections", type=int, default=4)
    ap.add_argument("--hostile-share", type=float, default=0.10)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk not found (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="adirec-hostile-bench-"))
    results: dict = {"config": vars(args), "machine": {"cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}}
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    try:
        data = build_data(args.users, args.items, args.domains, args.seed)
        model = TwoTowerModel(data.schema, data.num_domains, TwoTowerConfig()).eval()
        centres = unit(rng.standard_normal((args.clusters, model.config.output_dim)))
        vectors = [clustered_vectors(len(c), centres, rng) for c in data.corpus]
        write_bundle(work / "bundle", model, data, model_name="adi-se", item_vectors=vectors,
                     extra={"weights": "random (benchmark)", "item_vectors_kind": "clustered synthetic"})
        results["build_seconds"] = time.perf_counter() - t0
        users = data.user_keys[rng.integers(1, data.num_users + 1, 1000)].tolist()
        doms = [data.domains[j] for j in rng.integers(0, args.domains, 1000)]
        bodies = [json.dumps({"user_id": u, "domain": dn, "k": args.k}) for u, dn in zip(users, doms)]
        normal = work / "normal.lua"
        normal.write_text(normal_script(bodies))
        server = start_server(work / "bundle", timeout=600)
        try:
            subprocess.run(["wrk", "-t1", "-c8", "-d3s", "-s", str(normal), server.url],
                           capture_output=True, timeout=60)  # warm-up
            time.sleep(1)
            idle = rss_mib(server.pid)
            results["idle_rss_mib"] = idle
            print(f"bundle built in {results['build_seconds']:.0f} s; server idle RSS {idle:.0f} MiB", flush=True)

            with RssSampler(server.pid) as sampler:
                clean = finish(run_wrk(normal, server.url, args.connections, args.duration), args.duration)
            clean["peak_rss_mib"] = sampler.peak
            results["clean"] = clean
            print(f"clean, {args.connections} connections: p50 {clean['p50_ms']:.1f} ms, p99 {clean['p99_ms']:.1f} ms, "
                  f"{clean['requests_per_s']:.0f} req/s, statuses {clean['statuses']}, peak RSS "
                  f"{sampler.peak:.0f} MiB", flush=True)

            # each hostile connection waits so that hostile requests are `share` of all: the wait is
            # the interval at the target rate less a hostile request's own time (a 3 s run alone)
            hostile = work / "hostile.lua"
            hostile.write_text(hostile_script(users[0], 0))
            alone = finish(run_wrk(hostile, server.url, args.hostile_connections, 3), 3)
            share = args.hostile_share
            hostile_rate = share / (1 - share) * clean["requests_per_s"]  # per second, all hostile connections
            delay_ms = max(0.0, 1000 * args.hostile_connections / max(hostile_rate, 1e-3) - alone["p50_ms"])
            results["hostile_alone"] = alone
            hostile.write_text(hostile_script(users[0], delay_ms))
            with RssSampler(server.pid) as sampler:
                a = run_wrk(normal, server.url, args.connections - args.hostile_connections, args.duration)
                b = run_wrk(hostile, server.url, args.hostile_connections, args.duration)
                mixed_normal, mixed_hostile = finish(a, args.duration), finish(b, args.duration)
            n_normal = sum(mixed_normal["statuses"].values())
            n_hostile = sum(mixed_hostile["statuses"].values())
            results["mixed"] = {"normal": mixed_normal, "hostile": mixed_hostile, "hostile_delay_ms": delay_ms,
                                "hostile_share": n_hostile / max(n_normal + n_hostile, 1),
                                "peak_rss_mib": sampler.peak}
            results["rss_high_water_mib"] = rss_mib(server.pid, "VmHWM")
            print(f"mixed, {args.connections - args.hostile_connections} normal + {args.hostile_connections} hostile "
                  f"connections: normal p50 {mixed_normal['p50_ms']:.1f} ms, p99 {mixed_normal['p99_ms']:.1f} ms, "
                  f"{mixed_normal['requests_per_s']:.0f} req/s, statuses {mixed_normal['statuses']}; hostile "
                  f"statuses {mixed_hostile['statuses']}, socket errors {mixed_hostile['socket_errors']} "
                  f"({results['mixed']['hostile_share']:.1%} of requests); peak RSS {sampler.peak:.0f} MiB, "
                  f"high-water {results['rss_high_water_mib']:.0f} MiB", flush=True)
        finally:
            stop_server(server)
        five = clean["5xx"] + mixed_normal["5xx"] + mixed_hostile["5xx"]
        peak = max(clean["peak_rss_mib"], results["mixed"]["peak_rss_mib"], results["rss_high_water_mib"])
        results["checks"] = {"no_5xx": five == 0, "rss_within_2x_idle": peak <= 2 * idle,
                             "peak_over_idle": peak / idle,
                             "normal_p99_mixed_over_clean": mixed_normal["p99_ms"] / clean["p99_ms"]}
        print(f"5xx: {five}; peak RSS / idle: {peak / idle:.2f}; normal p99 mixed / clean: "
              f"{results['checks']['normal_p99_mixed_over_clean']:.2f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - t0
    results["machine"]["loadavg_end"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["checks"]["no_5xx"] and results["checks"]["rss_within_2x_idle"] else 1


if __name__ == "__main__":
    sys.exit(main())
