"""Where a benchmark number came from: the code (git commit, whether the tree had uncommitted
changes), the versions of the libraries that compute it, and the machine.

``environment()`` is recorded once in ``results.json`` (the process that wrote the tables) and,
in short form (``run_provenance``), in every run's record, so that a table mixing runs from
several commits or machines says so.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _version(module: str, dist: str | None = None) -> str | None:
    try:
        return metadata.version(dist or module)
    except metadata.PackageNotFoundError:
        pass
    try:  # a module importable without package metadata (faiss built from source)
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", None)


def _git(*args: str, cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_state() -> dict | None:
    """``{"commit", "dirty"}`` of the checkout the adirec package is imported from, or None when
    it is not a git checkout (an installed wheel). ``dirty``: a tracked file of the package, or
    ``pyproject.toml`` (the pinned dependencies), differs from the commit: the code that computes
    the numbers, not the notes or tests beside it."""
    here = Path(__file__).resolve().parents[1]  # the adirec package
    commit = _git("rev-parse", "HEAD", cwd=here)
    if commit is None:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", "../pyproject.toml", cwd=here)
    return {"commit": commit.strip(), "dirty": bool(status and status.strip())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def machine() -> dict:
    """CPU model, logical cores (and those this process may use), GPUs torch sees, OS."""
    import torch
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    gpus = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available() else [])
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "gpus": gpus,
            "os": platform.platform()}


def versions() -> dict:
    return {"adirec": _version("adirec"), "python": platform.python_version(), "torch": _version("torch"),
            "numpy": _version("numpy"), "pyarrow": _version("pyarrow"),
            "faiss": _version("faiss", "faiss-cpu") or _version("faiss", "faiss-gpu") or _version("faiss")}


def environment() -> dict:
    """Everything above, for ``results.json``."""
    return {"git": git_state(), "versions": versions(), "machine": machine(), "argv": list(sys.argv)}


def run_provenance(device: str | None, threads: int | None) -> dict:
    """The short form kept with each run: commit, adirec and torch versions, machine, device."""
    git = git_state() or {}
    m = machine()
    return {"commit": git.get("commit"), "dirty": git.get("dirty"), "adirec": _version("adirec"),
            "torch": _version("torch"), "cpu": m["cpu"], "cores": m["cores"], "device": device or "cpu",
            "threads": threads}


def describe(env: dict) -> str:
    """One line: ``adirec 0.1.0 at 1a2b3c4d5e6f (uncommitted changes); Python ..., torch ...; CPU ...``."""
    v, m, git = env.get("versions", {}), env.get("machine", {}), env.get("git")
    code = f"adirec {v.get('adirec')}"
    code += (f" at commit {git['commit'][:12]}" + (" with uncommitted changes to the code" if git.get("dirty") else "")
             if git else " (not a git checkout)")
    libs = ", ".join(f"{name} {v.get(name)}" for name in ("python", "torch", "numpy", "pyarrow", "faiss"))
    gpus = ", ".join(m.get("gpus") or []) or "no GPU"
    return (f"{code}; {libs}; {m.get('cpu')}, {m.get('cores')} logical cores "
            f"({m.get('usable_cores')} usable), {gpus}; {m.get('os')}")
