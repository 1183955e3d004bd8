"""The paper's experiments as one reproducible benchmark: ``adirec bench``.

:mod:`adirec.bench.suites` lists the runs of each suite, :mod:`adirec.bench.runner` trains and
evaluates them into one directory (resumable) and :mod:`adirec.bench.report` writes
``results.json``, ``results.md`` and the figures.
"""
from adirec.bench.runner import Bench, BenchConfig
from adirec.bench.suites import SUITES, RunSpec, suite_runs

__all__ = ["Bench", "BenchConfig", "RunSpec", "SUITES", "suite_runs"]
