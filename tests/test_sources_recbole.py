"""The RecBole source: optional domain rule, --domains before the split, feature typing, and the
MovieLens-1M protocols of ../shared/README.md (slow)."""
from __future__ import annotations

import numpy as np
import pytest

from adirec.data.sources import load_source
from conftest import shared_data

GENRES = {"m1": "Action Drama", "m2": "Comedy", "m3": "Drama", "m4": "Action", "m5": "Comedy Romance",
          "m6": "Horror"}


def write_files(root, inter_rows, *, users=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "ml.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                   + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in inter_rows))
    (root / "ml.item").write_text("item_id:token\tgenre:token_seq\n" + "".join(f"{k}\t{g}\n" for k, g in GENRES.items()))
    if users:
        (root / "ml.user").write_text("user_id:token\tage:float\n" + "".join(f"{u}\t{a}\n" for u, a in users.items()))
    return f"recbole:{root}/ml"


def split_keys(data, split):
    it = data.splits[split]
    return sorted(zip(data.user_keys[it.user].tolist(), data.item_keys[it.item].tolist(),
                      [data.domains[d] for d in it.domain]))


# u1 rates m1 m2 m3 m4 m6 (m6, Horror, last); u2 rates m5 m4 m2 m1; u3 rates m3 m1 (low rating on m1);
# u4 rates m6 alone (so that it is a training item)
ROWS = [("u1", "m1", 5, 1), ("u1", "m2", 4, 2), ("u1", "m3", 5, 3), ("u1", "m4", 4, 4), ("u1", "m6", 5, 5),
        ("u2", "m5", 5, 1), ("u2", "m4", 4, 2), ("u2", "m2", 5, 3), ("u2", "m1", 4, 4),
        ("u3", "m3", 5, 1), ("u3", "m1", 2, 2), ("u4", "m6", 5, 1)]


def test_without_a_domain_rule_there_is_one_domain(tmp_path):
    src = write_files(tmp_path, ROWS)
    data = load_source(src, positive="rating>=1")
    assert data.domains == ["all"] and data.meta["domain_rule"].startswith("no --domain-by")
    assert split_keys(data, "test") == [("u1", "m6", "all"), ("u2", "m1", "all")]
    assert split_keys(data, "valid") == [("u1", "m4", "all"), ("u2", "m2", "all")]
    assert sum(len(s) for s in data.splits.values()) == 12
    with pytest.raises(ValueError, match=r"unknown domains \['Action'\] \(--domains\); known domains: \['all'\]"):
        load_source(src, domains=["Action"])


def test_genre_domains_drop_other_interactions_before_the_split(tmp_path):
    src = write_files(tmp_path, ROWS)
    data = load_source(src, domain_by="item.genre", domains=["Drama", "Action"])
    assert data.domains == ["Drama", "Action"]  # the order given
    # u1's Horror row (m6) is dropped first, so m4 is u1's test row; m2 and m5 (Comedy) are gone
    assert split_keys(data, "test") == [("u1", "m4", "Action")]
    assert data.meta["rows"]["outside_domains"] == 5 and data.meta["rows"]["not_positive"] == 1
    everything = {k for s in data.splits for k in split_keys(data, s)}
    assert {i for _, i, _ in everything} == {"m1", "m3", "m4"}
    # each domain ranks its own training items
    assert [sorted(data.item_keys[c].tolist()) for c in data.corpus] == [["m3"], ["m1", "m4"]]
    all_genres = load_source(src, domain_by="item.genre")
    assert all_genres.domains == ["Action", "Comedy", "Drama", "Horror"]  # sorted names


def test_age_buckets_and_the_feature_types_file(tmp_path):
    src = write_files(tmp_path, ROWS, users={"u1": 20, "u2": 40, "u3": 31, "u4": 20})
    data = load_source(src, domain_by="user.age:30", positive="rating>=1")
    assert data.domains == ["age<30", "age>=30"]
    assert all(np.array_equal(c, np.unique(data.splits["train"].item)) for c in data.corpus)
    assert data.schema["age"].kind == "categorical"  # three whole numbers: codes
    types = tmp_path / "types.json"
    types.write_text('{"age": "dense", "genre": "skip"}')
    typed = load_source(src, domain_by="user.age:30", positive="rating>=1", feature_types=str(types))
    assert typed.schema["age"].kind == "dense" and "genre" not in typed.item_table
    assert typed.meta["features"]["item"]["genre"] == "skipped (feature-types file)"


def test_a_bad_number_names_the_line_and_column(tmp_path):
    src = write_files(tmp_path, [*ROWS, ("u3", "m4", "five", 3)])
    with pytest.raises(ValueError, match=r"ml.inter line 14: column 'rating' holds 'five', which is not a number"):
        load_source(src)


# ------------------------------------------------------------------ MovieLens-1M (../shared)
@pytest.mark.slow
def test_movielens_genre3_matches_the_published_protocol():
    root = shared_data("movielens-1m")
    data = load_source(f"recbole:{root}/ml-1m", domain_by="item.genre", domains=["Action", "Comedy", "Drama"])
    assert data.domains == ["Action", "Comedy", "Drama"]
    tr = data.splits["train"]
    items = [len(np.unique(tr.item[tr.domain == d])) for d in range(3)]
    assert items == [484, 939, 1015]  # ../shared/README.md, genre3
    assert [len(c) for c in data.corpus] == items  # each domain ranks its own training items
    everything = np.concatenate([s.user[s.domain == d] for s in data.splits.values() for d in range(3)])
    active = [len(np.unique(np.concatenate([s.user[s.domain == d] for s in data.splits.values()])))
              for d in range(3)]
    assert all(5823 <= n <= 6036 for n in active), active
    assert len(np.unique(everything)) == 6036
    test = data.splits["test"]
    assert len(test) == len(np.unique(test.user))  # one test row per user
    assert data.meta["rows"]["outside_domains"] == 146344


@pytest.mark.slow
def test_movielens_every_rating_positive_one_domain_leave_one_out():
    root = shared_data("movielens-1m")
    data = load_source(f"recbole:{root}/ml-1m", positive="rating>=1")
    assert data.domains == ["all"]
    assert sum(len(s) for s in data.splits.values()) == 1_000_209
    assert len(data.splits["test"]) == len(data.splits["valid"]) == 6040 == data.num_users
