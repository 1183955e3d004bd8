"""The ``table:`` source: column mapping, split rules, feature tables, candidate lists, in-memory
tables, folders, conversion to Parquet, and the README's example."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from adirec.data.build import DataWarning
from adirec.data.convert import convert
from adirec.data.parquet import load_parquet
from adirec.data.sources import load_source
from adirec.data.sources.table import load_table
from adirec.data.spec import DataSpec
from test_bad_input_data import assert_same_encoding

README = Path(__file__).resolve().parents[1] / "README.md"


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def keys_of(data, split):
    it = data.splits[split]
    return sorted(zip(data.user_keys[it.user].tolist(), data.item_keys[it.item].tolist(),
                      [data.domains[d] for d in it.domain]))


# u1: 5 rows over two scenarios, u2: 4 rows, u3, u0 and u5: 2 rows (they keep all in train; u0 and
# u5 make every held-out item known to training)
EVENTS = ["user,item,scenario,ts,clicks",
          "u0,e,home,2023-12-30,1", "u0,c,search,2023-12-31,1", "u5,d,search,2023-12-30,1", "u5,b,home,2023-12-31,1",
          "u1,a,home,2024-01-01,1", "u1,b,home,2024-01-02,0", "u1,c,search,2024-01-03,2", "u1,d,home,2024-01-04,1",
          "u1,e,search,2024-01-05,1",
          "u2,a,search,2024-01-01,1", "u2,c,search,2024-01-02,1", "u2,b,home,2024-01-03,3", "u2,e,home,2024-01-06,1",
          "u3,a,home,2024-01-02,1", "u3,d,search,2024-01-07,1"]
MAP = dict(user_col="user", item_col="item", domain_col="scenario", time_col="ts")


@pytest.fixture
def events(tmp_path):
    return write(tmp_path / "events.csv", EVENTS)


# ------------------------------------------------------------------ split rules
def test_leave_last_out_per_user_and_per_user_domain(events):
    data = load_table(events, **MAP)
    assert data.domains == ["home", "search"] and data.meta["split"]["rule"] == "last"
    assert keys_of(data, "test") == [("u1", "e", "search"), ("u2", "e", "home")]
    assert keys_of(data, "valid") == [("u1", "d", "home"), ("u2", "b", "home")]
    per = load_table(events, split="last-per-domain", **MAP)
    # u1 home: a b d -> test d, valid b; u1 search: c e (2 rows: train); u2 search: a c (train); u2 home: b e
    assert keys_of(per, "test") == [("u1", "d", "home")]
    assert keys_of(per, "valid") == [("u1", "b", "home")]


def test_time_cutoffs_iso_and_epoch(events, tmp_path):
    one = load_table(events, split="time:2024-01-05", **MAP)
    assert len(one.splits["valid"]) == 0
    assert keys_of(one, "test") == [("u1", "e", "search"), ("u2", "e", "home"), ("u3", "d", "search")]
    two = load_table(events, split="time:2024-01-04,2024-01-06", **MAP)
    assert keys_of(two, "valid") == [("u1", "d", "home"), ("u1", "e", "search")]
    assert keys_of(two, "test") == [("u2", "e", "home"), ("u3", "d", "search")]
    assert two.meta["split"] == {"rule": "time:2024-01-04,2024-01-06", "description": two.meta["split"]["description"],
                                 "train": 11, "valid": 2, "test": 2}
    epoch = write(tmp_path / "epoch.csv", ["user,item,t", "u1,a,100", "u1,b,200", "u1,c,300", "u2,c,150", "u2,b,250"])
    data = load_table(epoch, user_col="user", item_col="item", time_col="t", split="time:250")
    assert keys_of(data, "test") == [("u1", "c", "all"), ("u2", "b", "all")]
    millis = write(tmp_path / "ms.csv", ["user,item,t", "u1,a,1700000000000", "u1,b,1700000001000"])
    with pytest.raises(ValueError, match="finer than seconds, and the cutoff '2024-01-01' is a date"):
        load_table(millis, user_col="user", item_col="item", time_col="t", split="time:2024-01-01")
    with pytest.raises(ValueError, match="needs real times; --row-order gives row numbers"):
        load_table(epoch, user_col="user", item_col="item", row_order=True, split="time:250")
    with pytest.raises(ValueError, match="split cutoff 'soon' is neither an epoch number nor an ISO 8601 time"):
        load_table(epoch, user_col="user", item_col="item", time_col="t", split="time:soon")


def test_times_read_epoch_numbers_and_iso_text_with_or_without_zones():
    from adirec.data.sources.columns import times
    same = ["2024-01-01T10:00:00Z", "2024-01-01T12:00:00+02:00", "2024-01-01 10:00:00.7", "2024-01-01T10:00:00"]
    got, kind = times(pa.array(same), "ts", str)
    assert kind == "iso" and got.tolist() == [1704103200] * 4  # no zone = UTC; fractions dropped
    assert times(pa.array(["2024-01-01", "2024-01-02"]), "ts", str)[0].tolist() == [1704067200, 1704153600]
    assert times(pa.array(["1700000000", "1700000001.9"]), "ts", str)[0].tolist() == [1700000000, 1700000001]
    got, kind = times(pa.array([5, 3]), "ts", str)
    assert kind == "numbers" and got.tolist() == [5, 3]


def test_time_cutoff_drops_held_out_rows_of_users_without_training_rows(tmp_path):
    path = write(tmp_path / "e.csv", ["user,item,t", "u1,a,1", "u1,b,2", "u1,c,9", "u2,c,3", "u9,a,9"])
    with pytest.warns(DataWarning, match="1 held-out rows of 1 users without training rows were dropped"):
        data = load_table(path, user_col="user", item_col="item", time_col="t", split="time:5")
    assert keys_of(data, "test") == [("u1", "c", "all")]
    assert data.meta["rows"]["held_out_unknown_user_dropped"] == 1


def test_split_column_of_the_file(tmp_path):
    path = write(tmp_path / "e.csv", ["user,item,part", "u1,a,train", "u1,b,TRAIN", "u1,c,test", "u2,a,train",
                                      "u2,c,valid", "u3,c,train"])
    data = load_table(path, user_col="user", item_col="item", split="column:part")
    assert keys_of(data, "test") == [("u1", "c", "all")] and keys_of(data, "valid") == [("u2", "c", "all")]
    assert data.meta["order"].startswith("none")


# ------------------------------------------------------------------ weights, positives, domains
def test_weight_column_and_positive_rule(events, tmp_path):
    data = load_table(events, weight_col="clicks", **MAP)
    assert data.meta["rows"]["zero_weight"] == 1  # u1's b (0 clicks) is not an interaction
    everything = [w for s in data.splits.values() for w in s.weight.tolist()]
    assert sorted(everything) == [1.0] * 12 + [2.0, 3.0]
    pos = load_table(events, positive="clicks>=2", **(MAP | {"domain_col": None}))
    assert sum(len(s) for s in pos.splits.values()) == 2 and pos.domains == ["all"]
    assert pos.meta["rows"]["not_positive"] == 13


def test_domains_are_kept_in_the_order_given_and_dropped_before_the_split(events):
    data = load_table(events, domains=["search"], **MAP)
    assert data.domains == ["search"] and data.meta["rows"]["outside_domains"] == 8
    # u1's search rows alone: c (train), e; only two rows, so both stay in train
    assert keys_of(data, "test") == []
    both = load_table(events, domains=["search", "home"], **MAP)
    assert both.domains == ["search", "home"]
    with pytest.raises(ValueError, match=r"unknown domains \['promo'\] \(--domains\); known domains: \['home', 'search'\]"):
        load_table(events, domains=["promo"], **MAP)


def test_domain_from_a_user_attribute_ranks_every_item_in_every_domain(events, tmp_path):
    users = write(tmp_path / "users.csv", ["user,segment,age", "u0,gold,50", "u1,gold,20", "u2,silver,30",
                                           "u3,gold,40", "u5,silver,60"])
    data = load_table(events, user_features=users, domain_by="user.segment", **(MAP | {"domain_col": None}))
    assert data.domains == ["gold", "silver"]
    assert all(np.array_equal(c, np.unique(data.splits["train"].item)) for c in data.corpus)
    assert "segment" not in data.user_table and "age" in data.user_table  # the domain is not a feature
    with pytest.raises(ValueError, match="needs the user feature table"):
        load_table(events, domain_by="user.segment", **(MAP | {"domain_col": None}))
    with pytest.raises(ValueError, match="not both"):
        load_table(events, user_features=users, domain_by="user.segment", **MAP)


# ------------------------------------------------------------------ feature tables
def test_feature_columns_are_typed_by_their_values_or_a_feature_types_file(events, tmp_path):
    combos = ["x", "y", "z", "x y", "x z", "y z", "x y z"]
    items = write(tmp_path / "items.csv", ["item,title,category,genres,price,code"]
                  + [f"{k},Title {k},c{j % 2},{combos[j % 7]},{1.5 * j},{j % 3}"
                     for j, k in enumerate([*"abcde", *(f"f{n}" for n in range(35))])])
    data = load_table(events, item_features=items, **MAP)
    kinds = {f.name: f.kind for f in data.schema.side("item")}
    assert kinds["category"] == "categorical" and kinds["price"] == "dense" and kinds["code"] == "categorical"
    assert kinds["genres"] == "sequence" and "title" not in kinds  # one title per row: an identifier
    assert data.meta["features"]["item"]["title"].startswith("skipped")
    types = write(tmp_path / "types.json", ['{"price": "categorical", "code": "skip", "title": "categorical"}'])
    typed = load_table(events, item_features=items, feature_types=types, **MAP)
    kinds = {f.name: f.kind for f in typed.schema.side("item")}
    assert kinds["price"] == "categorical" and kinds["title"] == "categorical" and "code" not in kinds
    bad = write(tmp_path / "bad.json", ['{"price": "number"}'])
    with pytest.raises(ValueError, match=r"unknown kinds \{'price': 'number'\}"):
        load_table(events, item_features=items, feature_types=bad, **MAP)


def test_per_domain_features_are_aligned_and_missing_pairs_get_the_mean(events, tmp_path):
    path = write(tmp_path / "item_domain.csv", ["item,scenario,ctr", "a,home,0.1", "a,search,0.3", "c,search,0.5"])
    data = load_table(events, item_domain_features=path, **MAP)
    ctr = data.item_domain_table["ctr"][..., 0]  # (D, I + 1), standardised over the items' rows
    a, c, b = (data.item_keys.tolist().index(k) for k in "acb")
    mean_value = ctr[0, b]  # a missing pair holds the mean of the given values (0.3)
    assert ctr[0, a] < mean_value < ctr[1, c] and np.isclose(ctr[1, a], mean_value)
    assert "pairs missing, filled with the mean" in data.meta["features"]["item_domain"]["ctr"]
    items = write(tmp_path / "items.csv", ["item,category", "a,x", "b,y"])
    with pytest.raises(ValueError, match=r"item_domain.csv line 4: 'item' 'c' has no row in .*items.csv"):
        load_table(events, item_features=items, item_domain_features=path, **MAP)
    bad = write(tmp_path / "bad.csv", ["item,scenario,ctr", "a,promo,0.1"])
    with pytest.raises(ValueError, match=r"bad.csv line 2: unknown domain 'promo'"):
        load_table(events, item_domain_features=bad, **MAP)


# ------------------------------------------------------------------ candidate lists
def test_candidate_lists_give_the_sampled_protocol(events, tmp_path):
    from adirec.eval.protocols import evaluate
    cands = write(tmp_path / "cands.csv", ['user,scenario,items', 'u1,search,"e,a,b"', 'u2,home,"e,c"'])
    data = load_table(events, candidates=cands, **MAP)
    c = data.candidates["test"]
    assert data.item_keys[c.items[0, :3]].tolist() == ["e", "a", "b"] and c.items[1, 2] == -1

    class ByItemId:
        def score(self, users, domain, items):
            return torch.tensor(np.tile(items.astype(np.float32), (len(users), 1)))

    result = evaluate(ByItemId(), data, split="test", protocol="sampled", ks=[1])
    assert result.metrics(data.domains)["recall@1"]["mean"] == 1.0  # e has the largest id in both lists
    short = write(tmp_path / "short.csv", ['user,scenario,items', 'u1,search,"e,a"'])
    with pytest.raises(ValueError, match=r"1 test queries \(user, domain\) have no candidate list \(e.g. 'u2' in 'home'\)"):
        load_table(events, candidates=short, **MAP)
    miss = write(tmp_path / "miss.csv", ['user,scenario,items', 'u1,search,"a,b"', 'u2,home,"e,c"'])
    with pytest.warns(DataWarning, match="1 of 2 test interactions are not in their query's candidate list"):
        load_table(events, candidates=miss, **MAP)


# ------------------------------------------------------------------ other inputs
def test_in_memory_tables_and_folders_load_like_the_file(events, tmp_path):
    ref = load_table(events, **MAP)
    table = pacsv.read_csv(events)
    assert_same_encoding(ref, load_table(table, **MAP))
    folder = tmp_path / "parts"
    write(folder / "part-0.csv", EVENTS[:6])
    pq.write_table(pacsv.read_csv(write(tmp_path / "rest.csv", [EVENTS[0], *EVENTS[6:]])), folder / "part-1.parquet")
    (folder / "_SUCCESS").write_text("")
    assert_same_encoding(ref, load_table(folder, **MAP))
    write(folder / "notes.txt", ["not a table"])
    with pytest.raises(ValueError, match=r"holds files that are not tables: \['notes.txt'\]"):
        load_table(folder, **MAP)
    (folder / "notes.txt").unlink()
    write(folder / "part-2.csv", ["user,item", "u1,a"])
    with pytest.raises(ValueError, match=r"part-2.csv: columns \['user', 'item'\] differ from those of"):
        load_table(folder, **MAP)


def test_pandas_dataframe_loads_like_the_file(events):
    pd = pytest.importorskip("pandas")
    assert_same_encoding(load_table(events, **MAP), load_table(pd.read_csv(events, dtype={"user": str}), **MAP))


def test_data_spec_passes_every_field_and_convert_writes_the_layout(events, tmp_path):
    spec = DataSpec(source=f"table:{events}", domains=["home", "search"], split="last", weight_col="clicks", **MAP)
    data = spec.load()
    assert data.meta["columns"]["weight"] == "clicks"
    out = convert(spec.source, tmp_path / "layout", **spec.options())
    back = load_parquet(out)
    assert_same_encoding(data, back)
    assert back.meta == data.meta
    with pytest.raises(ValueError, match="--data-seed does not apply to table sources"):
        load_source(f"table:{events}", seed=3, **MAP)


# ------------------------------------------------------------------ the README example
def _readme_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Your own data"):]
    section = section[:section.index("\n### ", 1)] if "\n### " in section[1:] else section
    return re.findall(r"^(adirec data (?:inspect|convert) table:.*)$", section, flags=re.M)


def test_readme_example_loads_inspects_and_converts(tmp_path, monkeypatch, capsys):
    from adirec.cli import main
    commands = _readme_commands()
    assert [c.split()[2] for c in commands] == ["inspect", "convert"], commands
    rng = np.random.default_rng(0)
    lines = ["user,item,scenario,ts"]
    for u in range(40):
        for k in range(6):
            lines.append(f"u{u},i{rng.integers(30)},{['home', 'search'][int(rng.integers(2))]},"
                         f"2024-02-{1 + k:02d}T{u % 24:02d}:00:00Z")
    write(tmp_path / "events.csv", lines)
    write(tmp_path / "items.csv", ["item,category,price"] + [f"i{j},c{j % 4},{j * 0.5}" for j in range(30)])
    monkeypatch.chdir(tmp_path)
    args = shlex.split(commands[0])[1:]
    options = {"user_col": "user", "item_col": "item", "domain_col": "scenario", "time_col": "ts",
               "item_features": "items.csv"}
    data = load_source("table:events.csv", **options)  # the same mapping through the Python API
    assert data.domains == ["home", "search"] and data.num_users == 40
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2 domains, 40 users" in out and "split: leave-last-out per user" in out
    assert main(shlex.split(commands[1])[1:]) == 0
    to = Path(shlex.split(commands[1])[shlex.split(commands[1]).index("--to") + 1])
    assert_same_encoding(data, load_parquet(to))
