"""Atomic file writes and weight (de)serialisation shared by training, evaluation and export."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


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


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Load safetensors weights into ``model``; names a missing or mismatched tensor clearly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    tensors = load_file(str(path))
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
