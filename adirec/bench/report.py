"""Bench outputs: ``results.json`` (every run), ``results.md`` (the paper's tables) and PNG figures
(the experts sweep of Figure 3, the DIAL weights per domain and field of Figure 5).

Everything is rebuilt from the ``bench.json`` files under ``OUT/runs``, so the outputs always
describe every finished run in the directory, whichever invocation produced it.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np

from adirec.bench.suites import HEATMAP_KEY, SUITES, suite_runs
from adirec.utils import atomic_write_bytes, atomic_write_json

TITLES = {
    "paper": "Comparison methods (Tables 2 and 3)",
    "fusion": "Fusion: SUM vs Network-Mul vs CONCAT (Table 6)",
    "ablation": "Ablation (Table 7)",
    "se": "SE block placements (Table 8, Figure 4)",
    "experts": "Shared experts at equal parameter budget (Figure 3)",
}


def collect_records(out: str | Path) -> list[dict]:
    """Every finished run's record under ``out/runs``, in table order."""
    runs = Path(out) / "runs"
    records = [json.loads(p.read_text()) for p in sorted(runs.glob("*/*/*/bench.json"))] if runs.is_dir() else []
    order = {}
    for si, suite in enumerate(SUITES):
        try:
            keys = [r.key for r in suite_runs(suite)]
        except Exception:  # a suite whose presets cannot be listed still sorts, by key
            keys = []
        for ki, key in enumerate(keys):
            order[(suite, key)] = (si, ki)
    big = (len(SUITES), 10 ** 6)
    return sorted(records, key=lambda r: (*order.get((r["suite"], r["key"]), big), r["suite"], r["key"],
                                          -1 if r.get("seed") is None else r["seed"]))


def summarize(records: list[dict]) -> dict:
    """``{suite: {key: row}}``; a row holds the label, sizes, seeds and, per metric and domain,
    the mean and the sample standard deviation over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["suite"], r["key"]), []).append(r)
    out: dict = {}
    for (suite, key), rs in groups.items():
        metrics = {}
        for m in rs[0]["metrics"]:
            metrics[m] = {}
            for d in rs[0]["metrics"][m]:
                v = np.array([r["metrics"][m][d] for r in rs if d in r["metrics"].get(m, {})], dtype=np.float64)
                metrics[m][d] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
        first = rs[0]
        out.setdefault(suite, {})[key] = {
            "label": first["label"], "model": first["model"], "kind": first["kind"],
            "group": first.get("group"), "x": first.get("x"),
            "seeds": [r.get("seed") for r in rs], "params": first.get("params"),
            "params_dense": first.get("params_dense"),
            "budget_dense": (first.get("budget") or {}).get("target_dense"),
            "seconds": float(np.mean([r.get("seconds") or 0.0 for r in rs])),
            "metrics": metrics,
        }
    return out


def write_results(out: str | Path, meta: dict, *, skipped: list | None = None, failed: list | None = None) -> dict:
    """Write results.json, results.md and the figures; returns the results dict."""
    out = Path(out)
    records = collect_records(out)
    summary = summarize(records)
    figures = []
    if "experts" in summary and (png := experts_figure(summary["experts"], meta)) is not None:
        atomic_write_bytes(out / "experts.png", png)
        figures.append("experts.png")
    for suite in summary:
        png = dial_figure(records, suite)
        if png is not None:
            atomic_write_bytes(out / f"dial_{suite}.png", png)
            figures.append(f"dial_{suite}.png")
    results = {"bench": meta, "runs": records, "summary": summary, "figures": figures,
               "skipped": skipped or [], "failed": failed or []}
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", markdown(meta, summary, figures, skipped or [], failed or []).encode())
    return results


# ------------------------------------------------------------------ tables
def _count(n) -> str:
    if n is None:
        return "-"
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def _cell(stat: dict | None, n_seeds: int) -> str:
    if stat is None or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}" if n_seeds > 1 else f"{stat['mean']:.4f}"


def markdown(meta: dict, summary: dict, figures: list[str], skipped: list, failed: list) -> str:
    domains = meta["domains"]
    recalls = [f"recall@{k}" for k in meta["ks"]]
    lines = [f"# Benchmark on {meta['data_name']}", "",
             f"Protocol: {meta['protocol']} ranking, split `{meta['split']}`; Recall@N per domain and "
             f"the mean over domains. Neural methods: mean ± sample std over seeds (a single seed shows "
             f"the value); references are deterministic and run once. Params: all parameters / the dense "
             f"ones (without embedding tables; the budget of the fair comparison). Time: training + "
             f"evaluation seconds per run.", ""]
    for suite in SUITES:
        if suite not in summary:
            continue
        rows = summary[suite]
        lines += [f"## {suite}: {TITLES[suite]}", ""]
        budgets = {row["budget_dense"] for row in rows.values() if row.get("budget_dense")}
        if budgets:
            lines += [f"Budget: the dense parameters of ADI-SE at this size ({', '.join(map(_count, sorted(budgets)))}); "
                      f"\"vs budget\" is each method's dense count relative to it (fair comparison: within ±10%).", ""]
        for metric in recalls:
            name = metric.replace("recall", "Recall")
            lines += [f"### {name}", "",
                      "| Method | Params / dense | " + ("vs budget | " if budgets else "") + " | ".join(domains)
                      + " | Mean | Seeds | Time |",
                      "|---|---:|" + ("---:|" if budgets else "") + "---:|" * (len(domains) + 1) + "---:|---:|"]
            for key, row in rows.items():
                stats = row["metrics"].get(metric, {})
                n = len(row["seeds"])
                cells = [_cell(stats.get(d), n) for d in domains] + [_cell(stats.get("mean"), n)]
                if budgets:
                    ratio = (f"{row['params_dense'] / row['budget_dense'] - 1:+.1%}"
                             if row.get("budget_dense") and row.get("params_dense") else "-")
                    cells.insert(0, ratio)
                seeds = "ref" if row["kind"] == "reference" else str(n)
                lines.append(f"| {row['label']} | {_count(row['params'])} / {_count(row['params_dense'])} | "
                             + " | ".join(cells) + f" | {seeds} | {row['seconds']:.0f}s |")
            lines.append("")
        for fig in figures:
            if fig == f"dial_{suite}.png" or (suite == "experts" and fig == "experts.png"):
                lines += [f"![{fig}]({fig})", ""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s['suite']}/{s['key']}: {s['reason']}" for s in skipped] + [""]
    if failed:
        lines += ["## Failed", ""] + [f"- {f['suite']}/{f['key']} seed {f['seed']}: {f['error']}" for f in failed] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------ figures
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def experts_figure(rows: dict, meta: dict) -> bytes | None:
    """Line plot: mean main metric against the number of shared experts, one line per method."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    metric = meta["main_metric"]
    series: dict[str, list[tuple[int, float, float]]] = {}
    for row in rows.values():
        stat = row["metrics"].get(metric, {}).get("mean")
        if row.get("x") is None or stat is None:
            continue
        series.setdefault(row["group"], []).append((row["x"], stat["mean"], stat["std"]))
    if not series:
        return None
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for group, pts in series.items():
        pts.sort()
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=group)
    ax.set_xlabel("shared experts K (equal parameter budget)")
    ax.set_ylabel(f"mean {metric.replace('recall', 'Recall')}")
    ax.set_xticks(sorted({p[0] for pts in series.values() for p in pts}))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(meta["data_name"].split("/")[-1])
    return _png(fig)


def dial_figure(records: list[dict], suite: str) -> bytes | None:
    """Heat maps of the DIAL weights per domain (rows) and field (columns), user and item tower,
    averaged over seeds, of the suite's ADI-SE run (another run with weights if it has none)."""
    from matplotlib.figure import Figure
    with_weights = [r for r in records if r["suite"] == suite and r.get("dial_weights")]
    if not with_weights:
        return None
    key = HEATMAP_KEY.get(suite)
    if key not in {r["key"] for r in with_weights}:
        key = with_weights[0]["key"]
    rs = [r for r in with_weights if r["key"] == key]
    sides = [s for s in ("user", "item") if s in rs[0]["dial_weights"]]
    fig = Figure(figsize=(7.0, 3.2 * len(sides)), layout="constrained")
    for n, side in enumerate(sides, 1):
        info = rs[0]["dial_weights"][side]
        w = np.mean([np.asarray(r["dial_weights"][side]["weights"], dtype=np.float64) for r in rs], axis=0)  # (D, F)
        ax = fig.add_subplot(len(sides), 1, n)
        im = ax.imshow(w, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(info["fields"])))
        ax.set_xticklabels(info["fields"], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(info["domains"])))
        ax.set_yticklabels(info["domains"], fontsize=8)
        if w.size <= 120:
            for (i, j), v in np.ndenumerate(w):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < np.nanmean(w) else "black")
        ax.set_title(f"{rs[0]['label']}: DIAL field weights, {side} tower (mean over {len(rs)} seed(s))", fontsize=9)
        fig.colorbar(im, ax=ax)
    return _png(fig)
