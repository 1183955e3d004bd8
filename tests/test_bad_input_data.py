"""Bad or surprising input data: each test is named for the silent change it prevents. Every
case either works as documented (README, Data sources) or stops with an error that names the
file, row and column."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest

from adirec.data.build import DOMAIN_LIMIT, DataWarning, build_dataset, derived_count_tables
from adirec.data.convert import convert
from adirec.data.parquet import load_parquet
from adirec.data.sources import load_source
from adirec.data.sources.table import load_table


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_same_encoding(a, b):
    """Everything a model depends on: ids, rows in order, feature tables, corpus, candidates."""
    assert a.domains == b.domains
    assert a.schema.to_dict() == b.schema.to_dict()
    assert a.user_keys.tolist() == b.user_keys.tolist() and a.item_keys.tolist() == b.item_keys.tolist()
    for s in ("train", "valid", "test"):
        for c in ("user", "item", "domain", "weight", "timestamp"):
            assert np.array_equal(getattr(a.splits[s], c), getattr(b.splits[s], c)), (s, c)
    for t in ("user_table", "item_table", "user_domain_table", "item_domain_table"):
        ta, tb = getattr(a, t), getattr(b, t)
        assert sorted(ta) == sorted(tb), t
        for k in ta:
            assert np.array_equal(ta[k], tb[k]), (t, k)
    assert all(np.array_equal(x, y) for x, y in zip(a.corpus, b.corpus))
    assert sorted(a.candidates) == sorted(b.candidates)
    for s in a.candidates:
        for c in ("user", "domain", "items"):
            assert np.array_equal(getattr(a.candidates[s], c), getattr(b.candidates[s], c))


# ------------------------------------------------------------------ 1. row order
def _shuffled(lines, seed):
    body = lines[1:]
    random.Random(seed).shuffle(body)
    return [lines[0], *body]


def test_shuffled_table_file_gives_identical_ids_rows_and_feature_tables(tmp_path):
    rng = random.Random(0)
    events = ["user,item,scenario,ts"] + [
        f"u{rng.randrange(12)},i{rng.randrange(20)},{rng.choice(['home', 'search'])},{rng.randrange(1000)}"
        for _ in range(200)]
    items = ["item,category,tags"] + [f"i{j},c{j % 5},t{j % 3} t{j % 4}" for j in range(20)]
    users = ["user,segment"] + [f"u{j},s{(j * 7) % 4}" for j in range(12)]
    kw = dict(user_col="user", item_col="item", domain_col="scenario", time_col="ts")
    a = load_table(write(tmp_path / "a" / "e.csv", events), item_features=write(tmp_path / "a" / "i.csv", items),
                   user_features=write(tmp_path / "a" / "u.csv", users), **kw)
    b = load_table(write(tmp_path / "b" / "e.csv", _shuffled(events, 1)),
                   item_features=write(tmp_path / "b" / "i.csv", _shuffled(items, 2)),
                   user_features=write(tmp_path / "b" / "u.csv", _shuffled(users, 3)), **kw)
    assert_same_encoding(a, b)
    # sorted, not first-appearance, vocabularies
    assert a.user_keys[1:].tolist() == sorted(a.user_keys[1:].tolist())
    assert a.schema.vocab_sizes["category"] == 6


def test_shuffled_recbole_files_give_identical_encoded_data(tmp_path):
    rng = random.Random(1)
    inter = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"] + [
        f"u{rng.randrange(10)}\tm{rng.randrange(15)}\t{rng.randint(1, 5)}\t{rng.randrange(500)}" for _ in range(150)]
    item = ["item_id:token\tgenre:token_seq"] + [f"m{j}\t{['Action', 'Comedy', 'Drama'][j % 3]} X{j % 2}"
                                                 for j in range(15)]
    user = ["user_id:token\tage:float\tgender:token"] + [f"u{j}\t{18 + 5 * j}\t{'MF'[j % 2]}" for j in range(10)]
    for name, lines in (("inter", inter), ("item", item), ("user", user)):
        write(tmp_path / "a" / f"ml.{name}", lines)
        write(tmp_path / "b" / f"ml.{name}", _shuffled(lines, len(name)))
    kw = dict(domain_by="item.genre", positive="rating>=2")
    assert_same_encoding(load_source(f"recbole:{tmp_path}/a/ml", **kw), load_source(f"recbole:{tmp_path}/b/ml", **kw))


# ------------------------------------------------------------------ 2. duplicates
def test_exact_duplicate_rows_collapse_with_a_warning_and_repeats_at_other_times_are_kept(tmp_path):
    path = write(tmp_path / "e.csv", ["user,item,ts,w",
                                      "u1,a,1,1", "u1,a,1,3", "u1,a,5,1", "u1,b,2,1", "u1,c,3,1",
                                      "u2,a,1,1", "u2,b,2,1", "u2,c,3,1"])
    with pytest.warns(DataWarning, match="1 duplicate interaction rows were merged .*largest weight kept.*"
                                         "repeats at other times are kept"):
        data = load_table(path, user_col="user", item_col="item", time_col="ts", weight_col="w")
    assert data.meta["rows"]["duplicates_collapsed"] == 1
    assert sum(len(s) for s in data.splits.values()) == 7
    u1 = data.user_keys.tolist().index("u1")
    a = data.item_keys.tolist().index("a")
    rows = [(int(s.timestamp[j]), float(s.weight[j])) for s in data.splits.values()
            for j in np.flatnonzero((s.user == u1) & (s.item == a))]
    assert sorted(rows) == [(1, 3.0), (5, 1.0)]  # the repeat at t=5 is repeated consumption
    assert any("duplicates merged 1" in line for line in data.summary()["loading"])


# ------------------------------------------------------------------ 3. users missing from the user table
def test_domain_by_user_attribute_stops_when_users_are_missing_from_the_user_table(tmp_path):
    write(tmp_path / "ml.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
          + [f"u{u}\tm{k}\t5\t{k}" for u in range(1, 5) for k in range(4)])
    write(tmp_path / "ml.user", ["user_id:token\tage:float", "u1\t20", "u2\t40"])
    with pytest.raises(ValueError, match=r"2 of 4 users of .*ml.inter \(e\.g\. 'u3', 'u4'\) have no row in "
                                         r".*ml.user, so --domain-by user.age:30 cannot place their 8 interactions"):
        load_source(f"recbole:{tmp_path}/ml", domain_by="user.age:30")


# ------------------------------------------------------------------ 4. no timestamps
def test_recbole_file_without_timestamps_is_not_split_by_item_order(tmp_path):
    write(tmp_path / "ml.inter", ["user_id:token\titem_id:token\trating:float",
                                  "u1\tz\t5", "u1\ty\t5", "u1\tw\t5", "u1\tx\t5",
                                  "u2\tx\t5", "u2\tw\t5", "u2\tz\t5", "u2\ty\t5"])
    with pytest.raises(ValueError, match="needs the time of each interaction, and there is no time column.*"
                                         "--row-order"):
        load_source(f"recbole:{tmp_path}/ml")
    data = load_source(f"recbole:{tmp_path}/ml", row_order=True)
    test = data.splits["test"]
    assert sorted(data.item_keys[test.item].tolist()) == ["x", "y"]  # each user's last row, not max item id
    assert data.meta["order"].startswith("the file's row order")


# ------------------------------------------------------------------ 5. XMRec folders
def _xmrec(root, markets=("s1", "s2"), *, run=True):
    for m in markets:
        write(root / m / "train_5core.tsv", ["userId\titemId\trating"]
              + [f"{m}u{u}\tP{(u + k) % 6}\t1.0" for u in range(4) for k in range(3)])
        write(root / m / "valid_qrel.tsv", ["userId\titemId\trating"] + [f"{m}u{u}\tP{(u + 4) % 6}\t1" for u in range(4)])
        if run:
            write(root / m / "valid_run.tsv", [f"{m}u{u}\tP{(u + 4) % 6},P{(u + 5) % 6}" for u in range(4)])


def test_xmrec_market_folder_without_its_train_file_is_an_error_not_skipped(tmp_path):
    _xmrec(tmp_path)
    (tmp_path / "s3").mkdir()
    with pytest.raises(ValueError, match=r"market folder\(s\) \['s3'\] have no train_5core.tsv.*--domains"):
        load_source(f"xmrec:{tmp_path}")
    assert load_source(f"xmrec:{tmp_path}", domains=["s2", "s1"]).domains == ["s2", "s1"]
    with pytest.raises(ValueError, match="s3 has no train_5core.tsv"):
        load_source(f"xmrec:{tmp_path}", domains=["s1", "s3"])


def test_xmrec_market_missing_its_run_file_does_not_switch_the_protocol(tmp_path):
    _xmrec(tmp_path)
    (tmp_path / "s2" / "valid_run.tsv").unlink()
    with pytest.raises(ValueError, match=r"s2/valid_run.tsv missing: the other markets have valid_run.tsv"):
        load_source(f"xmrec:{tmp_path}")
    data = load_source(f"xmrec:{tmp_path}", domains=["s1"])
    assert "valid" in data.candidates and data.meta["protocol"].startswith("sampled")
    _xmrec(tmp_path / "norun", run=False)  # no market has one: the full protocol, said in meta
    assert load_source(f"xmrec:{tmp_path / 'norun'}").meta["protocol"].startswith("full")


# ------------------------------------------------------------------ 6. many domains
def test_hundreds_of_domains_warn_and_more_than_the_limit_are_refused(tmp_path):
    def table(n):
        return write(tmp_path / f"d{n}.csv", ["user,item,dom,ts"] + [f"u{d},i{d},d{d},{k}" for d in range(n)
                                                                       for k in range(1)])
    with pytest.warns(DataWarning, match="--domain-col dom gives 150 domains"):
        load_table(table(150), user_col="user", item_col="item", domain_col="dom", time_col="ts")
    with pytest.raises(ValueError, match=f"gives {DOMAIN_LIMIT + 1} domains, more than the limit of {DOMAIN_LIMIT}"):
        load_table(table(DOMAIN_LIMIT + 1), user_col="user", item_col="item", domain_col="dom", time_col="ts")


# ------------------------------------------------------------------ 7. derived counts
def test_unknown_candidate_gets_the_count_zero_value_not_the_mean(tiny_raw):
    data = build_dataset("tiny", ["A", "B"], tiny_raw["train"], history_len=3)
    pop = data.item_domain_table["item_domain_popularity"][..., 0]  # (D, I + 1)
    e = data.item_keys.tolist().index("e")  # e has no row in domain A
    assert pop[0, 0] == pop[0, e]  # unknown = a count of 0
    seen = np.bincount(data.splits["train"].item[data.splits["train"].domain == 0], minlength=pop.shape[1]) > 0
    assert pop[0, 0] < pop[0, seen].min()
    act = data.user_domain_table["user_domain_activity"][..., 0]
    assert act[0, 0] < act[0, 1:][act[0, 1:] != act[0, 0]].min()


def test_derived_count_tables_recompute_from_a_given_training_split(tiny_raw):
    data = build_dataset("tiny", ["A", "B"], tiny_raw["train"], history_len=3)
    full = derived_count_tables(data)
    for k in ("user_domain_activity", "item_domain_popularity"):
        table = data.user_domain_table.get(k, data.item_domain_table.get(k))
        assert np.array_equal(full[k], table)
    tr = data.splits["train"]
    part = tr.take(np.flatnonzero(tr.user != data.user_keys.tolist().index("u3")))
    less = derived_count_tables(data, part)["item_domain_popularity"][..., 0]
    counts = np.zeros((2, data.num_items + 1))
    np.add.at(counts, (part.domain, part.item), 1)
    logc = np.log1p(counts)
    mean, std = logc[counts > 0].mean(), logc[counts > 0].std()
    assert np.allclose(less, (logc - mean) / std, atol=1e-6)


# ------------------------------------------------------------------ 8. convert --overwrite
def test_convert_overwrite_replaces_only_a_parquet_layout(tmp_path, capsys):
    from adirec.cli import main
    run = tmp_path / "run"
    write(run / "run.json", ["{}"])
    (run / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"run is not a Parquet layout \(no adirec-parquet manifest.json; it "
                                              r"holds run.json, weights.safetensors\)"):
        convert("synthetic:tiny", run, overwrite=True)
    assert main(["data", "convert", "synthetic:tiny", "--to", str(run), "--overwrite"]) == 2
    assert "is not a Parquet layout" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["run.json", "weights.safetensors"]  # untouched
    layout = convert("synthetic:tiny", tmp_path / "layout")
    convert("synthetic:tiny", layout, overwrite=True, seed=1)
    assert load_parquet(layout).meta["seed"] == 1
    with pytest.raises(FileExistsError, match="is a file"):
        convert("synthetic:tiny", run / "run.json", overwrite=True)


# ------------------------------------------------------------------ options a source does not use
def test_an_option_the_source_does_not_use_is_an_error_not_ignored(tmp_path):
    with pytest.raises(ValueError, match="--positive does not apply to synthetic sources"):
        load_source("synthetic:tiny", positive="rating>=4")
    with pytest.raises(ValueError, match="--domains does not apply to parquet sources; they apply when converting"):
        load_source(f"parquet:{tmp_path}", domains=["d1"])
    _xmrec(tmp_path)
    with pytest.raises(ValueError, match="--positive, --split do not apply to xmrec sources"):
        load_source(f"xmrec:{tmp_path}", positive="rating>=4", split="last")


# ------------------------------------------------------------------ 14. table files
EVENTS = ["user,item,scenario,ts,w", "u1,a,home,1,1", "u1,b,home,2,1", "u1,c,search,3,2", "u1,d,home,4,1",
          "u2,a,search,1,1", "u2,c,search,2,1", "u2,e,search,3,1"]
MAP = dict(user_col="user", item_col="item", domain_col="scenario", time_col="ts", weight_col="w")


def test_missing_or_renamed_column_lists_the_columns_found(tmp_path):
    path = write(tmp_path / "e.csv", EVENTS)
    with pytest.raises(ValueError, match=r"e.csv: no column 'usr' \(--user-col\); columns found: "
                                         r"\['user', 'item', 'scenario', 'ts', 'w'\]"):
        load_table(path, **(MAP | {"user_col": "usr"}))
    with pytest.raises(ValueError, match=r"needs --user-col and --item-col; columns found"):
        load_source(f"table:{path}")


def test_empty_and_header_only_files_are_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: empty file"):
        load_table(tmp_path / "empty.csv", **MAP)
    with pytest.raises(ValueError, match="header.csv: no rows"):
        load_table(write(tmp_path / "header.csv", EVENTS[:1]), **MAP)
    folder = tmp_path / "parts"
    write(folder / "a.csv", EVENTS)
    write(folder / "b.csv", EVENTS[:1])
    with pytest.raises(ValueError, match="b.csv: no rows"):
        load_table(folder, **MAP)


@pytest.mark.parametrize("line, message", [
    ("u2,f,search,yesterday,1", "e.csv line 9: column 'ts' holds 'yesterday', which is neither an epoch number nor "
                                "an ISO 8601 time"),
    ("u2,f,search,4,abc", "e.csv line 9: column 'w' holds 'abc', which is not a number"),
    ("u2,f,search,4,NaN", "e.csv line 9: column 'w' is empty or NaN; every row needs a number"),
    ("u2,f,search,4,inf", "e.csv line 9: column 'w' \\(weight\\) holds inf; weights are finite numbers >= 0"),
    ("u2,f,search,2024-01-01,1", "e.csv line 2: column 'ts' holds the epoch number '1' among ISO 8601 times"),
    ("u2,f,search,4,-1", "e.csv line 9: column 'w' \\(weight\\) holds -1.0"),
    (",f,search,4,1", "e.csv line 9: column 'user' is empty; every row needs an id"),
    ("u2,f,search,,1", "e.csv line 9: column 'ts' \\(time\\) is empty"),
])
def test_unparseable_time_weight_nan_and_empty_ids_name_file_line_and_column(tmp_path, line, message):
    with pytest.raises(ValueError, match=message):
        load_table(write(tmp_path / "e.csv", [*EVENTS, line]), **MAP)


def test_domain_left_without_interactions_is_an_error(tmp_path):
    path = write(tmp_path / "e.csv", [*EVENTS, "u3,a,promo,1,0"])
    with pytest.raises(ValueError, match=r"domains \['promo'\] have no interactions .*--domains home,search"):
        load_table(path, **MAP)


def test_bom_and_crlf_files_read_like_plain_ones(tmp_path):
    plain = load_table(write(tmp_path / "plain.csv", EVENTS), **MAP)
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(EVENTS).encode() + b"\r\n")
    assert_same_encoding(plain, load_table(tmp_path / "bom.csv", **MAP))
    write(tmp_path / "a" / "ml.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
                                        "u1\ta\t5\t1", "u1\tb\t5\t2", "u1\tc\t5\t3"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ml.inter").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "a" / "ml.inter").read_bytes()
                                              .replace(b"\n", b"\r\n"))
    assert_same_encoding(load_source(f"recbole:{tmp_path}/a/ml"), load_source(f"recbole:{tmp_path}/b/ml"))


def test_feature_table_with_a_repeated_key_names_both_rows(tmp_path):
    items = write(tmp_path / "items.csv", ["item,category", "a,x", "b,y", "a,z"])
    with pytest.raises(ValueError, match=r"items.csv line 4: 'item' 'a' already has a row \(.*items.csv line 2\)"):
        load_table(write(tmp_path / "e.csv", EVENTS), item_features=items, **MAP)


def test_split_column_with_an_unknown_value_names_the_row(tmp_path):
    path = write(tmp_path / "e.csv", ["user,item,part", "u1,a,train", "u1,b,validation"])
    with pytest.raises(ValueError, match="e.csv line 3: split column 'part' holds 'validation'; expected train, "
                                         "valid or test"):
        load_table(path, user_col="user", item_col="item", split="column:part")


def test_meta_records_the_loading_steps_for_inspect(tmp_path, capsys):
    from adirec.cli import main
    path = write(tmp_path / "e.csv", [*EVENTS, "u2,e,search,3,1"])
    assert main(["data", "inspect", f"table:{path}", "--user-col", "user", "--item-col", "item",
                 "--domain-col", "scenario", "--time-col", "ts", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert "rows: read 8, duplicates merged 1" in summary["loading"][0]
    assert any(line.startswith("split: leave-last-out per user") for line in summary["loading"])
