"""HitRate@N, MRR@N and catalogue coverage@N on hand-made rankings, and through the protocols."""
import numpy as np
import pytest
import torch

from adirec.data.sources import load_source
from adirec.eval.metrics import NOT_RANKED, coverage, ranking_metrics
from adirec.eval.protocols import EvalResult, SeenItems, _Collector, evaluate

HITS = np.array([[False, True, False, False],    # first relevant item at rank 2
                 [True, False, False, True],     # at rank 1 (and 4)
                 [False, False, False, False],   # none
                 [False, False, True, False]])   # at rank 3
RELEVANT = np.array([1, 2, 3, 1])


def test_hitrate_and_mrr_on_hand_made_rankings():
    m = ranking_metrics(HITS, RELEVANT, [1, 2, 4])
    assert m["hitrate@1"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert m["hitrate@2"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert m["hitrate@4"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert m["mrr@1"].tolist() == [0.0, 1.0, 0.0, 0.0]
    assert m["mrr@2"].tolist() == [0.5, 1.0, 0.0, 0.0]
    assert m["mrr@4"].tolist() == pytest.approx([0.5, 1.0, 0.0, 1 / 3])
    # one relevant item per query: HitRate@N is Recall@N
    one = ranking_metrics(HITS[[0, 3]], np.array([1, 1]), [2, 4])
    assert one["hitrate@4"].tolist() == one["recall@4"].tolist() == [1.0, 1.0]
    assert list(m) == ["recall@1", "ndcg@1", "hitrate@1", "mrr@1", "recall@2", "ndcg@2", "hitrate@2", "mrr@2",
                       "recall@4", "ndcg@4", "hitrate@4", "mrr@4"]


def test_coverage_counts_the_corpus_items_in_anybodys_top_n():
    best = np.array([0, 3, NOT_RANKED, 1, 9])
    assert coverage(best, [1, 2, 4, 10]) == {"coverage@1": 0.2, "coverage@2": 0.4, "coverage@4": 0.6,
                                             "coverage@10": 0.8}
    with pytest.raises(ValueError, match="empty corpus"):
        coverage(np.array([], dtype=np.int32), [1])


def test_collector_records_best_ranks_of_corpus_items_only():
    class Data:  # what the collector reads of a data set
        corpus = [np.array([7, 3, 5, 9]), np.array([2])]
        num_items = 9

    c = _Collector(Data, [1, 2])
    # item 4 is outside domain 0's corpus, 0 is the unknown item: neither counts
    c.add(0, np.array([1, 2]), np.array([[3, 7], [9, 4]]), np.array([0]), np.array([7]), np.array([1, 1]))
    c.add(0, np.array([3]), np.array([[0, 3]]), np.array([0]), np.array([3]), np.array([1]))
    r = c.result()
    assert r.best_rank[0].tolist() == [1, 0, NOT_RANKED, 0]  # in corpus order: 7, 3, 5, 9
    assert r.best_rank[1].tolist() == [NOT_RANKED]
    m = r.metrics(["d0", "d1"])
    assert m["coverage@1"] == {"d0": 0.5, "mean": 0.5}  # d1 has no queries: left out
    assert m["coverage@2"] == {"d0": 0.75, "mean": 0.75}
    assert m["mrr@2"]["d0"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)


def test_results_of_several_processes_concatenate():
    a = EvalResult({"recall@1": np.array([1.0])}, np.array([0]), np.array([5]), [np.array([0, NOT_RANKED, 4])], (1,))
    b = EvalResult({"recall@1": np.array([0.0])}, np.array([0]), np.array([6]), [np.array([2, 0, NOT_RANKED])], (1,))
    both = EvalResult.concatenate([a, b])
    assert both.per_query["recall@1"].tolist() == [1.0, 0.0] and both.query_user.tolist() == [5, 6]
    assert both.best_rank[0].tolist() == [0, 0, 4]
    assert both.metrics(["d"])["coverage@1"]["d"] == pytest.approx(2 / 3)


class ByItemId:
    """Every user scores items by their id: everybody's ranking is the same."""

    def score(self, users, domain, items):
        return torch.tensor(np.tile(np.asarray(items, dtype=np.float32), (len(users), 1)))


def test_full_protocol_coverage_of_one_shared_ranking():
    data = load_source("synthetic:tiny")
    result = evaluate(ByItemId(), data, split="test", protocol="full", ks=[1, 5])
    m = result.metrics(data.domains)
    for d, name in enumerate(data.domains):
        # everybody's top 5 are the corpus's 5 largest ids: 5 items of the corpus are covered
        assert m["coverage@5"][name] == pytest.approx(5 / len(data.corpus[d]))
        assert m["coverage@1"][name] == pytest.approx(1 / len(data.corpus[d]))
    # removing each user's training positives spreads the top 1 over more items
    masked = evaluate(ByItemId(), data, split="test", protocol="full", ks=[1], seen=SeenItems(data))
    assert all(masked.metrics(data.domains)["coverage@1"][n] > m["coverage@1"][n] for n in data.domains)
