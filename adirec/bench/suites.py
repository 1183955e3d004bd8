"""The experiments of the ADI paper as lists of runs.

A suite is a list of :class:`RunSpec`: which method (a model preset of
:mod:`adirec.models.registry` or a reference of :mod:`adirec.models.references`), with which
changes to its preset, under which row label. Neural presets are looked up by name when the
bench runs, so a preset added to the registry later joins its suite without changes here; one
that is not registered is skipped with a note.

* ``paper`` (Tables 2 and 3): every comparison method and the references. Neural methods are
  sized to ADI-SE's parameter budget (``match_budget``); ADI-SE (MAX) appears twice, at that
  budget and at its natural size (three shared experts of ADI-SE's width). Baselines train
  without self-training, as their papers do (the presets say so); ``DNN +ST`` is the one
  baseline trained with it, to show what self-training alone does without ADI's network.
  ``dnn`` reads the per-domain features and ranks each domain's corpus; ``dnn-blind`` knows
  nothing of domains.
* ``fusion`` (Table 6): ADI-SE with SUM, Network-Mul and CONCAT fusion.
* ``ablation`` (Table 7): ADI-SE, without self-training, without ST and the DIAL, without ST,
  DIAL and DSBN.
* ``se`` (Table 8, Figure 4): 1, 3 and 4 SE blocks (``registry.SE_LAYOUTS``).
* ``experts`` (Figure 3): 1 to 5 shared experts for MMoE, PLE and ADI, each point sized to the
  parameter budget of ADI-SE with one shared expert.
* ``references``: the non-neural references only (minutes, no training): the quickest way to
  the strongest reference on a data set.
* ``plus``: ``adi-plus`` and ``dnn-plus`` at their presets' own sizes and training defaults,
  beside the references (skipped with a note while those presets are not registered).
* ``plus-ablation``: the path from ``adi-plus`` to ``dnn-plus`` one component at a time (without
  the DIAL, then DSBN, then the domain forward networks; the last step replaces the experts by
  ``dnn-plus``'s one MLP), to show which part of the domain machinery gains or loses; and
  ``adi-plus`` with its expert widths scaled to ``dnn-plus``'s dense parameter count.

Every suite is evaluated with the same protocol, split and cut-offs (the bench's).
"""
from __future__ import annotations

from dataclasses import dataclass

SUITES = ("paper", "fusion", "ablation", "se", "experts", "references", "plus", "plus-ablation")

#: the method every budget is measured on
BUDGET_REFERENCE = "adi-se"
EXPERT_COUNTS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class RunSpec:
    """One row of a suite's table (trained once per seed; a reference once).

    Attributes:
        suite: the suite it belongs to.
        key: directory name under ``runs/<suite>/`` and a handle for ``--methods``.
        label: row label in results.md, as the paper names it.
        model: registry preset (``kind="neural"``) or reference name (``kind="reference"``).
        kind: ``"neural"`` or ``"reference"``.
        overrides: TwoTowerConfig fields changed from the preset (on top of the bench's size).
        self_training: train with cross-domain self-training (Algorithm 1); None = the preset's
            default (on for ADI, off for the comparison methods). A baseline given True is
            labelled ``+ST``.
        match_budget: scale the backbone widths to the dense parameter count of ``budget_of``.
        budget_of: the preset whose dense parameter count (at the bench's size) is the budget:
            ADI-SE's for the paper's fair comparison.
        group, x: a series and its x value in a figure (the experts sweep: method, K).
    """

    suite: str
    key: str
    label: str
    model: str
    kind: str = "neural"
    overrides: tuple[tuple[str, object], ...] = ()
    self_training: bool | None = None
    match_budget: bool = False
    budget_of: str = BUDGET_REFERENCE
    group: str | None = None
    x: int | None = None

    def override_dict(self) -> dict:
        return dict(self.overrides)


PAPER_NEURAL = (  # (preset, label) in the order of the paper's tables
    ("dnn-single", "DNN-Single"), ("dnn", "DNN"), ("dnn-blind", "DNN (domain-blind)"),
    ("shared-bottom", "Shared-Bottom"), ("cross-stitch", "Cross-Stitch"), ("mmoe", "MMoE"), ("ple", "PLE"),
    ("star", "STAR"), ("adi-lt", "ADI-LT"), ("adi-va", "ADI-VA"), ("adi-se", "ADI-SE"),
)
REFERENCES = (  # (reference, label); see adirec.models.references
    ("popularity", "Popularity"), ("domain-popularity", "Domain popularity"),
    ("itemknn", "Item-kNN"), ("itemknn-pooled", "Item-kNN (pooled)"),
    ("ease", "EASE"), ("ease-pooled", "EASE (pooled)"),
    ("ease-recency", "EASE, recency-weighted"), ("ease-pooled-recency", "EASE (pooled), recency-weighted"),
    ("seq-linear", "Next-item linear (pooled)"),
)
PLUS_NEURAL = (("adi-plus", "ADI+"), ("dnn-plus", "DNN+"))
#: a preset's row label (how a table names the preset a budget was measured on)
LABELS = dict(PAPER_NEURAL + PLUS_NEURAL)
EXPERT_METHODS = (("mmoe", "MMoE"), ("ple", "PLE"), ("adi-se", "ADI"))

#: the run whose DIAL weights are drawn for a suite (Figure 5)
HEATMAP_KEY = {"paper": "adi-se", "fusion": "concat", "ablation": "adi-se", "se": "1-se", "experts": "adi-se-k1",
               "plus": "adi-plus"}


def _references(suite: str) -> list[RunSpec]:
    return [RunSpec(suite, name, label, name, kind="reference") for name, label in REFERENCES]


def suite_runs(suite: str) -> list[RunSpec]:
    """The runs of ``suite``, in table order."""
    if suite == "paper":
        runs = [RunSpec(suite, name, label, name, match_budget=True) for name, label in PAPER_NEURAL]
        runs += [RunSpec(suite, "adi-se-max", "ADI-SE (MAX), fair budget", "adi-se-max", match_budget=True),
                 RunSpec(suite, "adi-se-max-natural", "ADI-SE (MAX), natural size", "adi-se-max"),
                 RunSpec(suite, "dnn+st", "DNN +ST", "dnn", self_training=True, match_budget=True)]
        return runs + _references(suite)
    if suite == "references":
        return _references(suite)
    if suite == "plus":
        return [RunSpec(suite, name, label, name) for name, label in PLUS_NEURAL] + _references(suite)
    if suite == "plus-ablation":
        steps = (("no-dial", "w/o DIAL", (("dial", "none"),)),
                 ("no-dial-dsbn", "w/o DIAL & DSBN", (("dial", "none"), ("dsbn", False))),
                 ("no-dial-dsbn-forward", "w/o DIAL & DSBN & domain forward",
                  (("dial", "none"), ("domain_forward", False), ("dsbn", False))))
        return ([RunSpec(suite, "adi-plus", "ADI+", "adi-plus")]
                + [RunSpec(suite, key, label, "adi-plus", overrides=changes) for key, label, changes in steps]
                + [RunSpec(suite, "dnn-plus", "DNN+ (one MLP, no experts)", "dnn-plus"),
                   RunSpec(suite, "adi-plus-small", "ADI+ at DNN+'s size", "adi-plus", match_budget=True,
                           budget_of="dnn-plus")])
    if suite == "fusion":
        return [RunSpec(suite, key, label, "adi-se", overrides=(("fusion", key),))
                for key, label in (("sum", "SUM"), ("netmul", "Network-Mul"), ("concat", "CONCAT"))]
    if suite == "ablation":
        return [
            RunSpec(suite, "adi-se", "ADI-SE", "adi-se"),
            RunSpec(suite, "no-st", "w/o self-training", "adi-se", self_training=False),
            RunSpec(suite, "no-st-dial", "w/o ST & DIAL", "adi-se", overrides=(("dial", "none"),),
                    self_training=False),
            RunSpec(suite, "no-st-dial-dsbn", "w/o ST & DIAL & DSBN", "adi-se",
                    overrides=(("dial", "none"), ("dsbn", False)), self_training=False),
        ]
    if suite == "se":
        from adirec.models import registry
        return [RunSpec(suite, label.lower(), label, "adi-se", overrides=tuple(sorted(changes.items())))
                for label, changes in registry.SE_LAYOUTS.items()]
    if suite == "experts":
        return [RunSpec(suite, f"{name}-k{k}", f"{label} (K={k})", name, overrides=(("shared_experts", k),),
                        match_budget=True, group=label, x=k)
                for name, label in EXPERT_METHODS for k in EXPERT_COUNTS]
    raise ValueError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")


def parse_suites(text: str) -> list[str]:
    """``"paper"``, ``"fusion,se"`` or ``"all"`` -> suite names (validated)."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    if names == ["all"]:
        return list(SUITES)
    unknown = [s for s in names if s not in SUITES]
    if unknown or not names:
        raise ValueError(f"unknown suite(s) {unknown or text!r}; known: {', '.join(SUITES)} or all")
    return names


def select(runs: list[RunSpec], methods: list[str] | None) -> list[RunSpec]:
    """Runs named in ``methods`` by key (``mmoe-k2``), ``suite/key`` (``paper/adi-se``), model
    name (``mmoe``: every run of that preset) or kind (``references``: every reference run,
    ``neural``: every trained one); all runs when None."""
    if not methods:
        return runs
    wanted = set(methods)
    kinds = {"reference": "references", "neural": "neural"}
    return [r for r in runs if wanted & {r.key, f"{r.suite}/{r.key}", r.model, kinds[r.kind]}]
