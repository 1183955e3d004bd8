"""``adirec demo``: what it prints, and that its world shows what ADI is for."""
import numpy as np
import pytest

from adirec.cli import main


def test_demo_prints_the_table_and_what_it_shows(tmp_path, capsys):
    assert main(["demo", "--preset", "tiny", "--epochs", "1", "--threads", "1", "--no-progress",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for model in ("adi-se", "dnn-blind", "dnn"):
        assert f"{model} recall@50" in out
    assert "What the table shows: ranking each domain's items for the same users, ADI-SE finds" in out
    runs = list(tmp_path.glob("*/*/config.json"))
    assert sorted(p.parent.name for p in runs) == ["adi-se", "dnn", "dnn-blind"]


def test_demo_reading_gives_a_reason_only_for_an_order_it_measured():
    from adirec.cli import demo_reading
    ahead = demo_reading({"adi-se": 0.30, "dnn-blind": 0.20, "dnn": 0.25})
    assert "30.0%" in ahead and "20.0%" in ahead and "because" in ahead and "reaches 25.0%" in ahead
    behind = demo_reading({"adi-se": 0.19, "dnn-blind": 0.20})
    assert "because" not in behind and "is not ahead" in behind and "dnn," not in behind


@pytest.mark.slow  # about 3 minutes on two busy cores: 3 seeds x 2 models x 2 epochs
def test_adi_beats_the_domain_blind_dnn_on_the_demo_world(tmp_path):
    from adirec.cli import demo_runs
    from adirec.data.spec import DataSpec
    from adirec.cli import DEMO_HISTORY
    data = DataSpec(source="synthetic:demo", history_len=DEMO_HISTORY).load()
    scores = {"adi-se": [], "dnn-blind": []}
    for seed in range(3):
        reports = demo_runs(tmp_path / f"seed{seed}", seed=seed, epochs=2, threads=1,
                            models=tuple(scores), data=data)
        for name in scores:
            scores[name].append(reports[name]["metrics"]["recall@50"]["mean"])
    adi, blind = np.array(scores["adi-se"]), np.array(scores["dnn-blind"])
    print("demo world, mean Recall@50 over 3 seeds:", {k: [round(v, 4) for v in s] for k, s in scores.items()})
    spread = max(adi.std(ddof=1), blind.std(ddof=1))
    assert adi.mean() - blind.mean() > 2 * spread, scores
    assert np.all(adi > blind), scores
