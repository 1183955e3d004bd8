"""Optional dependencies: which ``pip install 'adirec[EXTRA]'`` brings each one.

The core install trains and evaluates; serving (FAISS, FastAPI, uvicorn, Prometheus), the
benchmark's figures (matplotlib), tuning (Optuna) and TensorBoard curves are extras. A feature
that needs one calls :func:`require` before it starts, and the command line turns a missing
module into the same message (:func:`missing_extra_message`).

This module imports nothing from adirec: every layer may use it.
"""
from __future__ import annotations

import importlib

#: extra -> the modules it provides (import names)
EXTRAS: dict[str, tuple[str, ...]] = {
    "serve": ("faiss", "fastapi", "uvicorn", "prometheus_client"),
    "bench": ("matplotlib",),
    "tune": ("optuna",),
    "tensorboard": ("tensorboard",),
}
#: import name -> extra
EXTRA_OF = {module: extra for extra, modules in EXTRAS.items() for module in modules}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def install_hint(extra: str) -> str:
    return f"pip install 'adirec[{extra}]'"


def missing_extra_message(error: ImportError, what: str = "this") -> str | None:
    """The message for an ImportError of a module some extra provides (None for any other)."""
    name = (error.name or "").split(".")[0]
    extra = EXTRA_OF.get(name)
    if extra is None:
        return None
    return f"{what} needs the optional dependency {name!r}, which is not installed: {install_hint(extra)}"


def require(extra: str, what: str) -> None:
    """Import every module of ``extra``; raise :class:`MissingExtra` naming ``what`` needs it and the
    install command when one is missing."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {sorted(EXTRAS)}")
    for module in EXTRAS[extra]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingExtra(f"{what} needs the optional dependency {module!r}, which is not installed: "
                               f"{install_hint(extra)}", name=module) from e
