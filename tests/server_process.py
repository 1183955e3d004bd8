"""Start ``adirec serve`` as a separate process, wait until it answers, stop it.

Shared by the serving tests and the serving benchmarks (which put ``tests/`` on ``sys.path``);
the package itself keeps no test helpers.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx

_LISTENING = re.compile(r"listening on (http://\S+)")


class ServerProcess:
    """A running ``adirec serve``: ``proc`` (the Popen), ``url`` (its base URL, with the port the
    server chose) and ``output`` (every line it printed so far; a thread keeps reading, so the
    server never blocks on a full pipe)."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.url, self.output = proc, None, []
        self._found = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            match = _LISTENING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._found.set()
        self._found.set()  # the server exited

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def returncode(self):
        return self.proc.returncode

    def text(self) -> str:
        return "".join(self.output)


def start_server(bundle: str, *extra: str, timeout: float = 90.0, env: dict | None = None) -> ServerProcess:
    """``adirec serve BUNDLE --port 0 EXTRA...`` on loopback, returned once it has printed its
    URL and ``/healthz`` answers (any status: a server that requires a token answers 401).
    Raises RuntimeError (with the server's output) if it exits or times out."""
    proc = subprocess.Popen([sys.executable, "-m", "adirec", "serve", str(bundle), "--port", "0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    server = ServerProcess(proc)
    deadline = time.time() + timeout
    server._found.wait(timeout)
    while True:
        if server.url is not None:
            try:
                httpx.get(f"{server.url}/healthz", timeout=2)
                return server
            except httpx.TransportError:
                pass
        if proc.poll() is not None:
            server._reader.join(5)
            raise RuntimeError("server exited:\n" + server.text())
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"server did not come up in {timeout:g} s:\n" + server.text())
        time.sleep(0.1)


def stop_server(server: ServerProcess, timeout: float = 30.0) -> None:
    """Ask the server to shut down (SIGINT, as Ctrl-C); kill it if it has not exited in ``timeout`` s."""
    server.proc.send_signal(signal.SIGINT)
    try:
        server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    server._reader.join(5)
