"""Bench outputs: ``results.json`` (every run), ``results.md`` (the paper's tables) and PNG figures
(the experts sweep of Figure 3, the DIAL weights per domain and field of Figure 5).

Everything is rebuilt from the ``bench.json`` files under ``OUT/runs``, so the outputs always
describe every finished run in the directory, whichever invocation produced it.

``results.md`` opens with what a reader needs to trust a number: the data (source, sizes,
fingerprint), the protocol, split and metrics, the seeds, how EASE's settings were chosen, and
the provenance (commit, library versions, machine, devices). Every table ends with the
strongest reference of the directory (the non-neural method with the best mean), named, per
domain and mean, so that no neural row is read without the floor it has to clear.
:func:`publish` copies the artifacts (never runs or data) to a directory that can be committed.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import math
from pathlib import Path

import numpy as np

from adirec.bench.suites import BUDGET_REFERENCE, HEATMAP_KEY, LABELS, SUITES, suite_runs
from adirec.bench.provenance import describe
from adirec.utils import atomic_write_bytes, atomic_write_json, publish_directory

TITLES = {
    "paper": "Comparison methods (Tables 2 and 3)",
    "fusion": "Fusion: SUM vs Network-Mul vs CONCAT (Table 6)",
    "ablation": "Ablation (Table 7)",
    "se": "SE block placements (Table 8, Figure 4)",
    "experts": "Shared experts at equal parameter budget (Figure 3)",
    "references": "Non-neural references",
    "plus": "ADI+ and DNN+ (presets' own sizes)",
    "plus-ablation": "From ADI+ to DNN+, one component at a time",
}
#: files of OUT that :func:`publish` copies (besides the figures)
PUBLISHED = ("results.md", "results.json", "bench.json", "ease_lambda.json")


def metric_label(metric: str, meta: dict) -> str:
    """``recall@50`` -> ``Recall@50`` (``HR@10`` where the bench calls it so)."""
    name, _, k = metric.partition("@")
    names = meta.get("metric_names") or {}
    return f"{names.get(name, name.capitalize() if name != 'ndcg' else 'NDCG')}@{k}"


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
        metrics: dict[str, dict] = {}
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
            "budget_of": (first.get("budget") or {}).get("reference"),
            "seconds": float(np.mean([r.get("seconds") or 0.0 for r in rs])),
            "config": first.get("config") if first["kind"] == "reference" else None,
            "metrics": metrics,
        }
    return out


def write_results(out: str | Path, meta: dict, *, skipped: list | None = None, failed: list | None = None,
                  provenance: dict | None = None) -> dict:
    """Write results.json, results.md and the figures; returns the results dict. ``provenance``:
    :func:`adirec.bench.provenance.environment` of the process writing them."""
    out = Path(out)
    records = collect_records(out)
    summary = summarize(records)
    figures = []
    best = strongest_reference(summary, meta["main_metric"])
    if "experts" in summary and (png := experts_figure(summary["experts"], meta, best)) is not None:
        atomic_write_bytes(out / "experts.png", png)
        figures.append("experts.png")
    for suite in summary:
        png = dial_figure(records, suite)
        if png is not None:
            atomic_write_bytes(out / f"dial_{suite}.png", png)
            figures.append(f"dial_{suite}.png")
    results = {"bench": meta, "provenance": provenance, "runs": records, "summary": summary, "figures": figures,
               "skipped": skipped or [], "failed": failed or []}
    atomic_write_json(out / "results.json", results)
    text = markdown(meta, summary, figures, skipped or [], failed or [], records=records, provenance=provenance)
    atomic_write_bytes(out / "results.md", text.encode())
    return results


def publish(out: str | Path, dest: str | Path) -> list[str]:
    """Copy the bench's tables, JSON and figures from ``out`` to ``dest`` (replacing what a
    previous publish put there, in one rename); runs, models and data are never copied. Returns
    the file names."""
    out, dest = Path(out), Path(dest)
    names = [n for n in PUBLISHED if (out / n).is_file()] + sorted(p.name for p in out.glob("*.png"))
    if "results.md" not in names:
        raise FileNotFoundError(f"{out} holds no results.md: run the bench first")
    if dest.exists() and not (dest / "results.md").is_file():
        raise FileExistsError(f"--publish {dest} exists and is not a published bench (no results.md); "
                              f"name a new directory or a previous --publish target")
    dest.parent.mkdir(parents=True, exist_ok=True)
    import tempfile
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
    os.chmod(tmp, 0o755)  # mkdtemp's directory is private; a published one is for everyone to read
    try:
        for n in names:
            (tmp / n).write_bytes((out / n).read_bytes())
        publish_directory(tmp, dest)
    except BaseException:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return names


# ------------------------------------------------------------------ tables
def _count(n) -> str:
    if n is None:
        return "-"
    for unit, size in (("M", 1e6), ("K", 1e3)):
        # compare the value as printed: 999,600 is "1M", not "1e+03K"
        if float(f"{n / size:.3g}") >= 1:
            return f"{n / size:.3g}{unit}"
    return str(int(n))


def _cell(stat: dict | None, n_seeds: int) -> str:
    if stat is None or math.isnan(stat["mean"]):
        return "-"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}" if n_seeds > 1 else f"{stat['mean']:.4f}"


def strongest_reference(summary: dict, metric: str) -> dict | None:
    """The reference row with the best mean ``metric`` over every suite (a reference run in two
    suites is one row), or None when the directory has no reference run."""
    best = None
    for suite_rows in summary.values():
        for row in suite_rows.values():
            stat = row["metrics"].get(metric, {}).get("mean")
            if row["kind"] != "reference" or stat is None or math.isnan(stat["mean"]):
                continue
            if best is None or stat["mean"] > best["metrics"][metric]["mean"]["mean"]:
                best = row
    return best


def _reference_name(row: dict) -> str:
    cfg = row.get("config") or {}
    parts = [f"{'λ' if k == 'lam' else k} {v:g}" for k, v in cfg.items() if isinstance(v, (int, float))]
    return row["label"] + (f" ({', '.join(parts)})" if parts else "")


def _header(meta: dict, records: list[dict], provenance: dict | None) -> list[str]:
    data, summary = meta.get("data") or {}, meta.get("data_summary") or {}
    from adirec.data.spec import DataSpec
    defaults = {f.name: f.default for f in dataclasses.fields(DataSpec)}
    spec = ", ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}" for k, v in data.items()
                     if k != "source" and v != defaults.get(k))
    lines = [f"- **Data**: `{data.get('source', meta['data_name'])}`" + (f" ({spec})" if spec else "")]
    if summary:
        rows = summary.get("rows") or {}
        corpus = summary.get("corpus") or {}
        lines[-1] += (f": {summary.get('users'):,} users, {summary.get('items'):,} items; rows "
                      + " / ".join(f"{rows.get(s, 0):,} {s}" for s in ("train", "valid", "test"))
                      + "; items ranked per domain: " + ", ".join(f"{d} {n:,}" for d, n in corpus.items()))
    fp = (meta.get("data_fingerprint") or {}).get("sha256")
    if fp:
        lines[-1] += f"; data fingerprint `{fp[:16]}`"
    lines[-1] += "."
    lines.append(f"- **Split**: {summary.get('split_rule') or 'the train / valid / test rows the source defines'}.")
    metrics = ", ".join(metric_label(m, meta) for m in meta.get("table_metrics") or [f"recall@{k}" for k in meta["ks"]])
    seen = "training positives" if meta.get("history", "train") == "train" else "training and validation positives"
    how = ("each query's candidate list from the source's run file" if meta["protocol"] == "sampled"
           else f"every item of the domain's corpus, the user's {seen} removed")
    lines.append(f"- **Protocol**: {meta['protocol']} ranking ({how}), split `{meta['split']}`; {metrics} per "
                 f"domain and the unweighted mean over domains; main metric {metric_label(meta['main_metric'], meta)}. "
                 f"The same protocol for every row.")
    if meta.get("history", "train") != "train":
        lines.append("- **Histories** (`--history train+valid`): when the test split is ranked, a user's history "
                     "holds the validation positives too, the interaction just before the test one (leave-one-out, "
                     "as published sequential recommenders are evaluated); every model and reference is still "
                     "fitted on the training split alone.")
    if meta.get("metric_names", {}).get("recall") == "HR":
        lines.append("- Every query has one relevant item, so Recall@N is the hit rate HR@N.")
    seeds = sorted({r["seed"] for r in records if r.get("seed") is not None})
    lines.append(f"- **Seeds**: neural runs {', '.join(map(str, seeds)) or 'none'} (mean ± sample std over "
                 f"seeds; one seed shows the value); references are deterministic and run once. Early stopping "
                 f"and every choice of a setting use validation data or a hold-out from training, never the "
                 f"reported split.")
    choices = meta.get("ease_choices") or {}
    if choices:
        lines.append("- **Reference settings** (chosen on a hold-out from training, at the metric named): " + "; ".join(
            f"{key}: λ {c['lam']:g}" + (f", decay {c['decay']:g}" if "decay" in c else "")
            + f" ({metric_label(c['metric'], meta) if c.get('metric') else '?'})"
            for key, c in sorted(choices.items())) + ".")
    if provenance:
        lines.append(f"- **Tables written by**: {describe(provenance)}.")
    commits: dict[str, int] = {}
    devices: dict[str, int] = {}
    unknown = 0
    for r in records:
        p = r.get("provenance")
        if not p:
            unknown += 1
            continue
        c = (p.get("commit") or "no git checkout")[:12]
        c += " (with uncommitted changes to the code)" if p.get("dirty") else ""
        commits[c] = commits.get(c, 0) + 1
        d = f"{p.get('device') or 'cpu'} on {p.get('cpu')}"
        devices[d] = devices.get(d, 0) + 1
    if commits or unknown:
        parts = [f"{n} at {c}" for c, n in sorted(commits.items())]
        if unknown:
            parts.append(f"{unknown} recorded by an earlier version without provenance")
        lines.append(f"- **Runs**: {len(records)} records; code: " + ", ".join(parts)
                     + ("; devices: " + ", ".join(f"{n} {d}" for d, n in sorted(devices.items())) if devices else "")
                     + "." + (" The rows come from several code versions." if len(commits) + bool(unknown) > 1 else "")
                     + (f" {restored} of them restored from a published bench (--resume-from)."
                        if (restored := sum(1 for r in records if r.get("restored_from"))) else ""))
    return lines


def markdown(meta: dict, summary: dict, figures: list[str], skipped: list, failed: list, *,
             records: list[dict] | None = None, provenance: dict | None = None) -> str:
    domains = meta["domains"]
    metrics = meta.get("table_metrics") or [f"recall@{k}" for k in meta["ks"]]
    lines = [f"# Benchmark on {meta['data_name']}", ""] + _header(meta, records or [], provenance) + [
        "", "Params: all parameters / the dense ones (without embedding tables; the budget of the fair "
        "comparison). Time: training + evaluation seconds per run (mean over seeds; a reference's hold-out "
        "choice of its settings not included).", ""]
    for suite in SUITES:
        if suite not in summary:
            continue
        rows = summary[suite]
        lines += [f"## {suite}: {TITLES[suite]}", ""]
        budgets = {row["budget_dense"] for row in rows.values() if row.get("budget_dense")}
        if budgets:
            sizes = ", ".join(map(_count, sorted(budgets)))
            of = sorted({row.get("budget_of") or BUDGET_REFERENCE for row in rows.values() if row.get("budget_dense")})
            lines += [f"Budget: the dense parameters of {' and '.join(LABELS.get(m, m) for m in of)} at this size "
                      f"({sizes}); "
                      f"\"vs budget\" is each method's dense count relative to it (fair comparison: within ±10%; a "
                      f"row marked natural size is not matched).", ""]
        for metric in metrics:
            lines += [f"### {metric_label(metric, meta)}", "",
                      "| Method | Params / dense | " + ("vs budget | " if budgets else "") + " | ".join(domains)
                      + " | Mean | Seeds | Time |",
                      "|---|---:|" + ("---:|" if budgets else "") + "---:|" * (len(domains) + 1) + "---:|---:|"]
            for row in rows.values():
                stats = row["metrics"].get(metric, {})
                n = len(row["seeds"])
                cells = [_cell(stats.get(d), n) for d in domains] + [_cell(stats.get("mean"), n)]
                if budgets:
                    ratio = "-"
                    if row.get("budget_dense") and row.get("params_dense"):
                        ratio = f"{row['params_dense'] / row['budget_dense'] - 1:+.1%}"
                    elif row.get("params_dense") in budgets:  # the preset whose size is the budget
                        ratio = "+0.0% (the budget)"
                    elif row.get("params_dense") and len(budgets) == 1:  # a neural row at its own size
                        ratio = f"{row['params_dense'] / next(iter(budgets)) - 1:+.1%} (not matched)"
                    cells.insert(0, ratio)
                seeds = "ref" if row["kind"] == "reference" else str(n)
                lines.append(f"| {row['label']} | {_count(row['params'])} / {_count(row['params_dense'])} | "
                             + " | ".join(cells) + f" | {seeds} | {row['seconds']:.0f}s |")
            best = strongest_reference(summary, metric)
            lines.append("")
            if best is None:
                lines.append("Strongest reference: none in this directory (`--suite references` runs them in minutes).")
            else:
                stats = best["metrics"][metric]
                lines.append(f"Strongest reference ({metric_label(metric, meta)}): **{_reference_name(best)}**: "
                             + ", ".join(f"{d} {stats[d]['mean']:.4f}" for d in domains if d in stats)
                             + f", mean {stats['mean']['mean']:.4f}.")
            lines.append("")
        for fig in figures:
            if fig == f"dial_{suite}.png" or (suite == "experts" and fig == "experts.png"):
                lines += [f"![{fig}]({fig})", ""]
    if skipped:
        lines += ["## Skipped", ""] + [f"- {s['suite']}/{s['key']}: {s['reason']}" for s in skipped] + [""]
    if failed:
        lines += ["## Failed", ""]
        lines += [f"- {f['suite']}/{f['key']} seed {f['seed']}: {f['error']}" for f in failed] + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------ figures
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def experts_figure(rows: dict, meta: dict, reference: dict | None = None) -> bytes | None:
    """Line plot: mean main metric against the number of shared experts, one line per method;
    ``reference`` (a summary row) is drawn as a dashed line."""
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
    if reference is not None:
        ax.axhline(reference["metrics"][metric]["mean"]["mean"], color="grey", linestyle="--",
                   label=f"strongest reference: {reference['label']}")
    ax.set_xlabel("shared experts K (equal parameter budget)")
    ax.set_ylabel(f"mean {metric_label(metric, meta)}")
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
