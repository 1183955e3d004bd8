"""Wall time of ``adirec demo`` at the default thread count and at fixed ones, on an idle
machine and beside one busy process (a pure-Python loop that keeps one CPU at 100%).

The default (``default_threads()``: one thread per CPU that is not already busy) should be
within 1.5x of the best fixed count in both conditions. Writes ``--out`` (JSON) and prints a
table; each configuration runs in its own process, one after another, so that nothing but the
busy loop competes with it.

    python benchmarks/threads_bench.py --out benchmarks/results/threads.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUSY = "while True: pass"


def run_demo(threads: int | None, epochs: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "adirec", "demo", "--no-progress", "--epochs", str(epochs), "--out", out]
        if threads is not None:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def settle(seconds: float) -> None:
    """Let the one-minute load average follow the new condition before the default reads it."""
    time.sleep(seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--epochs", type=int, default=2, help="demo epochs per model (default 2)")
    p.add_argument("--settle", type=float, default=60.0, help="seconds to wait after a condition changes")
    args = p.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fixed = sorted({1, cpus} | ({2} if cpus >= 2 else set()))
    results = {}
    for condition in ("idle", "one busy process"):
        busy = subprocess.Popen([sys.executable, "-c", BUSY]) if condition != "idle" else None
        try:
            settle(args.settle)
            rows = {}
            for threads in [None, *fixed]:
                load = os.getloadavg()[0]
                seconds = run_demo(threads, args.epochs)
                key = "default" if threads is None else str(threads)
                rows[key] = {"seconds": round(seconds, 1), "load_before": round(load, 2)}
                print(f"{condition:18} threads {key:8} {seconds:7.1f}s (load {load:.2f})", flush=True)
            best = min(r["seconds"] for k, r in rows.items() if k != "default")
            results[condition] = {"runs": rows, "best_fixed": best,
                                  "default_over_best": round(rows["default"]["seconds"] / best, 3)}
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        if busy is not None:
            settle(0)
    out = {"benchmark": "adirec demo wall time by torch threads", "epochs": args.epochs, "cpus": cpus,
           "machine": platform.processor() or platform.machine(), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    for condition, r in results.items():
        print(f"{condition}: default / best fixed = {r['default_over_best']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
