"""Atomic file writes and weight (de)serialisation shared by training, evaluation and export."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Model weights as safetensors (no pickle), written atomically. Shared tensors are stored once."""
    path = Path(path)
    tensors, seen = {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape, t.dtype) if t.numel() else None
        if key is not None and key in seen:
            continue  # a table shared by both towers appears under several names
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().cpu().contiguous().clone()  # files hold host tensors
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Named host tensors as one safetensors file, written atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        # clones: safetensors refuses tensors that share memory (tables shared by both towers)
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; a missing, truncated or corrupted file raises a
    one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # safetensors raises its own error types for damaged headers and bodies
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path}: not a readable safetensors file, it is truncated or corrupted ({first})") from None
    return tensors, meta


def read_json(path: str | Path) -> dict:
    """A JSON file as a dict; a damaged file raises a one-line error naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the file is truncated or corrupted") from None


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model``; names a missing or mismatched tensor clearly and
    refuses weights that hold NaN or infinity."""
    path = Path(path)
    tensors, _ = load_tensors(path)
    bad = [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{path}: weights hold NaN or infinity (tensors {bad[:3]}); the run diverged, "
                         f"retrain it with a lower learning rate")
    state = model.state_dict()
    # tables shared by both towers were saved once: fill every alias from the stored copy
    by_ptr: dict = {}
    for name, t in state.items():
        by_ptr.setdefault((t.data_ptr(), t.shape, t.dtype) if t.numel() else name, []).append(name)
    filled = {}
    for names in by_ptr.values():
        stored = next((n for n in names if n in tensors), None)
        if stored is None:
            raise ValueError(f"{path}: missing tensor {names[0]!r}")
        for n in names:
            filled[n] = tensors[stored]
    extra = sorted(set(tensors) - set(filled))
    if extra:
        raise ValueError(f"{path}: unexpected tensors {extra[:5]}")
    for n, t in filled.items():
        if t.shape != state[n].shape:
            raise ValueError(f"{path}: tensor {n!r} has shape {tuple(t.shape)}, model expects {tuple(state[n].shape)}")
    model.load_state_dict(filled)


def write_keys(path: str | Path, keys) -> None:
    """Raw keys of ids 1..n as a one-column Parquet file (``key``; index 0, the unknown id, is not
    stored), written atomically. Integer keys stay integers, anything else is text."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    real = list(keys[1:])
    if all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in real):
        arr = pa.array(np.asarray(real, dtype=np.int64))
    else:
        arr = pa.array([str(k) for k in real], type=pa.string())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"key": arr}), sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_keys(path: str | Path) -> list:
    """The keys written by :func:`write_keys` (ids 1..n), as Python values."""
    import pyarrow.parquet as pq
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing vocabulary file {path}")
    try:
        return pq.read_table(path).column("key").to_pylist()
    except Exception as e:  # pyarrow's errors for damaged files
        raise ValueError(f"{path}: not a readable vocabulary file ({str(e).splitlines()[0]})") from None


def publish_directory(tmp: Path, out: Path) -> None:
    """Move the finished directory ``tmp`` to ``out`` in one rename; an existing ``out`` is
    moved aside first and deleted only after the new one is in place."""
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the machine's count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_cpus(sample_seconds: float = 0.2) -> float:
    """How many of the CPUs this process may run on are kept busy by other processes now: the
    non-idle share of each such CPU's time over ``sample_seconds``, summed (``/proc/stat``, read
    twice while this process sleeps, so its own earlier work does not count). Where
    ``/proc/stat`` is missing, the one-minute load average (which lags by a minute and counts this
    process's recent work)."""
    try:
        mine = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        mine = None

    def read() -> dict[int, tuple[int, int]] | None:
        """{cpu: (total jiffies, idle + iowait jiffies)} of the CPUs in this process's affinity."""
        try:
            with open("/proc/stat") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        out = {}
        for line in lines:
            parts = line.split()
            if len(parts) < 6 or not (parts[0].startswith("cpu") and parts[0][3:].isdigit()):
                continue
            try:  # user nice system idle iowait irq softirq steal (guest is counted in user)
                cpu, values = int(parts[0][3:]), [int(v) for v in parts[1:9]]
            except ValueError:  # a format this reader does not know: fall back to the load average
                return None
            if mine is None or cpu in mine:
                out[cpu] = (sum(values), values[3] + values[4])
        return out or None

    first = read()
    if first is not None:
        time.sleep(sample_seconds)
        second = read() or {}
        busy = 0.0
        for cpu, (total, idle) in first.items():
            if cpu in second and second[cpu][0] > total:
                dt, di = second[cpu][0] - total, second[cpu][1] - idle
                busy += max(0.0, (dt - di) / dt)
        return busy
    try:
        return os.getloadavg()[0]
    except OSError:  # not available on this platform
        return 0.0


def default_threads(cpus: int | None = None, busy: float | None = None) -> int:
    """The number of torch threads a computation uses when none is given (``--threads``).

    Rule (measured: benchmarks/README.md, "Threads"): one thread per CPU that is not already busy,
    at least one: ``max(1, cpus - round(busy))``, with ``busy`` from :func:`busy_cpus`. On an idle
    machine every CPU works; beside a busy process, a thread that would have to share a CPU with
    it is not started, because torch's threads wait for each other at every operation and the
    slowest one, sharing its CPU, sets the pace of all.
    """
    cpus = available_cpus() if cpus is None else cpus
    busy = busy_cpus() if busy is None else busy
    return max(1, min(cpus, cpus - int(round(busy))))


def use_threads(threads: int | None) -> int:
    """Set torch's threads to ``threads``, or to :func:`default_threads` when None; returns the count."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"--threads must be an integer >= 1, got {threads!r}")
    n = threads or default_threads()
    torch.set_num_threads(n)
    return n
