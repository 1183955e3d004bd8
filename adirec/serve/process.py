"""Start ``adirec serve`` as a separate process, wait until it answers, stop it (tests, benchmarks)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx


def start_server(bundle: str, port: int, *extra: str, timeout: float = 90.0) -> subprocess.Popen:
    """``adirec serve BUNDLE --port PORT EXTRA...`` on loopback, returned once ``/healthz``
    answers 200. Raises RuntimeError (with the server's output) if it exits or times out."""
    proc = subprocess.Popen([sys.executable, "-m", "adirec", "serve", str(bundle), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited:\n" + proc.stdout.read().decode())
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not come up in {timeout:g} s")
        time.sleep(0.2)


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Ask the server to shut down (SIGINT, as Ctrl-C); kill it if it has not exited in ``timeout`` s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
