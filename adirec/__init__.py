"""adirec: multi-domain candidate retrieval with the Adaptive Domain Interest network (ADI) and
its baselines.

The Python API (:mod:`adirec.api`)::

    import adirec

    data = adirec.load_data("synthetic:tiny")
    run = adirec.train(data, "adi-se", out="runs/first", epochs=2)
    print(run.evaluate(ks=[10, 50])["metrics"]["recall@10"])
    recommender = run.recommender()      # or adirec.Recommender.from_path(BUNDLE)

``import adirec`` is light: the names below load on first use, and nothing imports FAISS or
FastAPI until serving is used.

``adirec.train`` is both the training subpackage (``adirec.train.config``, ``adirec.train.loop``)
and, called, :func:`adirec.api.train`: the subpackage's module is made callable here, because
importing any of its modules makes ``adirec.train`` name the subpackage.
"""
from __future__ import annotations

import types

__version__ = "0.1.0"

#: public name -> the module that defines it
_LAZY = {
    "load_data": "adirec.api",
    "evaluate": "adirec.api",
    "export": "adirec.api",
    "open_run": "adirec.api",
    "Run": "adirec.api",
    "DataSpec": "adirec.data.spec",
    "MultiDomainData": "adirec.data.dataset",
    "TwoTowerConfig": "adirec.models.config",
    "TrainConfig": "adirec.train.config",
    "SelfTrainingConfig": "adirec.train.config",
    "Recommender": "adirec.serve.service",
    "Filters": "adirec.serve.service",
}
#: names that need an optional extra, checked before their module is imported
_NEEDS_EXTRA = {"Recommender": "serve", "Filters": "serve"}

# a star import takes what the core install provides
__all__ = ["__version__", "train", *(name for name in _LAZY if name not in _NEEDS_EXTRA)]


class _CallableTrainPackage(types.ModuleType):
    """The ``adirec.train`` subpackage, callable as :func:`adirec.api.train`."""

    def __call__(self, *args, **kwargs):
        from adirec.api import train
        return train(*args, **kwargs)


from adirec import train  # noqa: E402  (the subpackage; its __init__ imports nothing)

train.__class__ = _CallableTrainPackage


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'adirec' has no attribute {name!r}")
    if name in _NEEDS_EXTRA:
        from adirec.extras import require
        require(_NEEDS_EXTRA[name], f"adirec.{name}")
    import importlib
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
