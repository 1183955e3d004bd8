"""Non-neural reference rankers: the floor every multi-domain model has to clear.

* ``popularity``: an item's number of training interactions over all domains.
* ``domain-popularity``: the same count within the queried domain only.
* ``itemknn``: cosine item-item similarity on the binary user-item training matrix,
  ``S_ij = |U_i & U_j| / sqrt(|U_i| |U_j|)`` (self-similarity zeroed); a user's score of item j
  is ``sum_{i in H_u} S_ij`` over the user's training items ``H_u`` (Sarwar et al., WWW 2001).
* ``ease``: EASE (Steck, WWW 2019), the closed form of
  ``min_B ||X - XB||^2 + lam ||B||^2  s.t. diag(B) = 0``:
  ``P = (X^T X + lam I)^-1``, ``B = I - P diag(1 / diag(P))``; scores ``X_u B``.

Scope. ``itemknn`` and ``ease`` fit one matrix per domain on that domain's training positives
(duplicates collapse to one); it covers the items trained on in that domain and any other item
scores 0 there. ``itemknn-pooled`` and ``ease-pooled`` fit one matrix on the positives of every
domain and score every domain with it: better where domains split one population of users over
one catalogue (MovieLens by age), worse where the domains' tastes differ.

History. The user's history ``H_u`` is, by default, the user's training positives in the queried
domain (``history="domain"``): a per-domain matrix was learned from co-occurrences inside that
domain, so it has no evidence about how items of other domains relate to it.
``history="all"`` feeds every training positive of the user that the matrix knows, for data
where users move between domains that share items. Pooled models use ``history="all"``.

Ties. Scores tie often (a popularity count; an item-kNN score of 0 for every item that never
co-occurs with the user's history, more than half the candidates on sparse data), so the order
among ties decides a good part of a top-k. Every reference breaks ties the same documented way,
never by whatever order ``topk`` happens to return: by the item's training count in the queried
domain, then by the raw item id (the smaller id first). ``score`` therefore returns, per user,
the position of each requested item in that order (higher = better, exact in float32), and
``raw_score`` the scores themselves. The unknown item (id 0, a candidate never seen in training)
is always last among its ties.

Every reference is a scorer for :func:`adirec.eval.protocols.evaluate`: ``fit(data)`` then
``score(users, domain, items) -> (n_users, n_items)``.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from adirec.data.dataset import MultiDomainData

HISTORIES = ("domain", "all")
SCOPES = ("domain", "pooled")


def _positives(data: MultiDomainData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (user, item, domain) triples of the training positives."""
    tr = data.splits["train"]
    pos = tr.weight > 0
    u, i, d = tr.user[pos], tr.item[pos], tr.domain[pos]
    n_u, n_i = data.num_users + 1, data.num_items + 1
    key = np.unique((d * n_u + u) * n_i + i)
    return (key // n_i) % n_u, key % n_i, key // (n_i * n_u)


def _order_positions(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """(n,) float32 position of each entry when sorted ascending by (primary, secondary)."""
    ascending = np.lexsort((secondary, primary))
    pos = np.empty(len(primary), dtype=np.float32)
    pos[ascending] = np.arange(len(primary), dtype=np.float32)  # exact in float32 below 2^24
    return pos


class Reference:
    """Base of the references: domain counts, the tie order, and the ranking transform."""

    name = "reference"

    def fit(self, data: MultiDomainData) -> "Reference":
        u, i, d = _positives(data)
        n_i, D = data.num_items + 1, data.num_domains
        self.num_domains = D
        self.domain_counts = np.bincount(d * n_i + i, minlength=D * n_i).reshape(D, n_i)  # (D, I + 1)
        self.global_counts = np.bincount(i, minlength=n_i)  # (I + 1,)
        keys = np.asarray([str(k) for k in data.item_keys])
        key_rank = np.empty(n_i, dtype=np.int64)
        key_rank[np.argsort(keys, kind="stable")] = np.arange(n_i)
        counts = self.domain_counts.astype(np.int64).copy()
        counts[:, 0] = -1  # the unknown item is last among its ties
        # per domain, the tie order: higher = preferred (more counts, then smaller raw id)
        self._tie = np.stack([_order_positions(c, -key_rank) for c in counts])  # (D, I + 1)
        self._fit(u, i, d, data)
        return self

    def _fit(self, u: np.ndarray, i: np.ndarray, d: np.ndarray, data: MultiDomainData) -> None:
        raise NotImplementedError

    def raw_score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def _check(self, domain: int) -> None:
        if not hasattr(self, "_tie"):
            raise RuntimeError(f"{self.name}: call fit(data) before scoring")
        if not 0 <= domain < self.num_domains:
            raise ValueError(f"domain {domain} outside [0, {self.num_domains})")

    def score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        """(n_users, n_items) positions of the items in each user's ranking (ties broken)."""
        self._check(domain)
        items = np.asarray(items, dtype=np.int64)
        s = self.raw_score(users, domain, items)  # (n, m)
        tie = torch.from_numpy(self._tie[domain][items])  # (m,)
        perm = torch.argsort(tie)  # least preferred first
        idx = torch.sort(s[:, perm], dim=1, stable=True).indices  # ascending; equal scores keep perm order
        out = torch.empty(s.shape, dtype=torch.float32)
        out.scatter_(1, perm[idx], torch.arange(len(items), dtype=torch.float32).expand(len(s), -1).contiguous())
        return out

    def num_parameters(self) -> int:
        """Stored numbers the ranking depends on (counts or matrix entries)."""
        raise NotImplementedError


class Popularity(Reference):
    """Scores every item by its training count, over all domains or within the queried domain."""

    def __init__(self, per_domain: bool = False):
        self.per_domain = per_domain
        self.name = "domain-popularity" if per_domain else "popularity"

    def _fit(self, u, i, d, data) -> None:
        counts = self.domain_counts if self.per_domain else np.broadcast_to(self.global_counts, self.domain_counts.shape)
        counts = counts.astype(np.int64).copy()
        counts[:, 0] = -1
        # the whole ranking is one order per domain: count first, then the tie order
        self._order = torch.from_numpy(np.stack([_order_positions(c, t) for c, t in zip(counts, self._tie)]))

    def raw_score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        counts = self.domain_counts[domain] if self.per_domain else self.global_counts
        row = torch.from_numpy(counts[np.asarray(items, dtype=np.int64)].astype(np.float32))
        return row.unsqueeze(0).expand(len(users), -1)  # (n_users, n_items)

    def score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        self._check(domain)  # same result as the base class, without a sort per user
        row = self._order[domain][torch.as_tensor(np.asarray(items, dtype=np.int64))]
        return row.unsqueeze(0).expand(len(users), -1)  # (n_users, n_items)

    def num_parameters(self) -> int:
        return int(self.domain_counts.size if self.per_domain else self.global_counts.size)


class ItemItemModel(Reference):
    """Shared machinery of item-kNN and EASE: an item-item matrix ``W`` (I_m, I_m) per domain
    (or one pooled), over the items trained on there; scores ``x_u W`` with ``x_u`` the user's
    binary history row."""

    def __init__(self, scope: str = "domain", history: str | None = None):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        history = history or ("all" if scope == "pooled" else "domain")
        if history not in HISTORIES:
            raise ValueError(f"history must be one of {HISTORIES}, got {history!r}")
        self.scope, self.history = scope, history
        self.weights: list[torch.Tensor] = []  # per matrix (I_m, I_m) float32
        self.items: list[np.ndarray] = []  # per matrix: the item id of each row

    def weight_matrix(self, gram: torch.Tensor) -> torch.Tensor:
        """(I_m, I_m) item-item matrix from the float64 Gram matrix ``X^T X`` (which it may
        overwrite)."""
        raise NotImplementedError

    def _fit(self, u, i, d, data) -> None:
        n_u, n_i, D = data.num_users + 1, data.num_items + 1, data.num_domains
        groups = [d == m for m in range(D)] if self.scope == "domain" else [np.ones(len(u), dtype=bool)]
        self.matrix_of_domain = list(range(D)) if self.scope == "domain" else [0] * D
        self._col = np.full((len(groups), n_i), -1, dtype=np.int64)  # item id -> row of matrix m
        self.weights, self.items = [], []
        for m, rows_of in enumerate(groups):
            mu, mi = u[rows_of], i[rows_of]
            if self.scope == "pooled":  # a user-item pair seen in two domains is one entry of X
                key = np.unique(mu * n_i + mi)
                mu, mi = key // n_i, key % n_i
            items = np.unique(mi)
            self.items.append(items)
            self._col[m, items] = np.arange(len(items))
            _, rows = np.unique(mu, return_inverse=True)
            x = torch.sparse_coo_tensor(np.stack([rows, self._col[m, mi]]), torch.ones(len(rows), dtype=torch.float64),
                                        (int(rows.max()) + 1, len(items)), check_invariants=False).coalesce()
            with warnings.catch_warnings():  # torch calls its sparse product "beta"; it is exact
                warnings.simplefilter("ignore", UserWarning)
                gram = torch.sparse.mm(x.t().coalesce(), x).to_dense()  # (I_m, I_m) co-occurrence counts
            self.weights.append(self.weight_matrix(gram).to(torch.float32).contiguous())
            del gram
        # user histories as CSR over user ids: per domain, and over all domains
        self._hist = [self._csr(u[d == m], i[d == m], n_u) for m in range(D)]
        if self.history == "all":
            key = np.unique(u * n_i + i)
            self._hist_all = self._csr(key // n_i, key % n_i, n_u)

    @staticmethod
    def _csr(users: np.ndarray, items: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(users, kind="stable")
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        return indptr, items[order]

    def _history_rows(self, users: np.ndarray, domain: int) -> torch.Tensor:
        """(n_users, I_m) sparse binary history rows in the columns of the domain's matrix."""
        m = self.matrix_of_domain[domain]
        indptr, values = self._hist_all if self.history == "all" else self._hist[domain]
        users = np.asarray(users, dtype=np.int64)
        start, end = indptr[users], indptr[users + 1]
        lengths = end - start
        rows = np.repeat(np.arange(len(users)), lengths)
        idx = np.repeat(start, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        cols = self._col[m, values[idx]]
        keep = cols >= 0  # history="all": items the matrix never saw have no row in it
        return torch.sparse_coo_tensor(np.stack([rows[keep], cols[keep]]),
                                       torch.ones(int(keep.sum()), dtype=torch.float32),
                                       (len(users), len(self.items[m])), check_invariants=False).coalesce()

    def raw_score(self, users: np.ndarray, domain: int, items: np.ndarray) -> torch.Tensor:
        self._check(domain)
        m = self.matrix_of_domain[domain]
        x = self._history_rows(users, domain)  # (n_users, I_m) sparse
        full = torch.sparse.mm(x, self.weights[m])  # (n_users, I_m)
        cols = torch.as_tensor(self._col[m, np.asarray(items, dtype=np.int64)])  # (n_items,)
        out = torch.zeros(len(users), len(cols))
        known = cols >= 0
        out[:, known] = full[:, cols[known]]
        return out  # (n_users, n_items); items the matrix does not cover score 0

    def num_parameters(self) -> int:
        return sum(w.numel() for w in self.weights)


class ItemKNN(ItemItemModel):
    """Cosine item-kNN over all neighbours (no truncation); see the module docstring."""

    def __init__(self, scope: str = "domain", history: str | None = None):
        super().__init__(scope, history)
        self.name = "itemknn" if scope == "domain" else "itemknn-pooled"

    def weight_matrix(self, gram: torch.Tensor) -> torch.Tensor:
        norm = gram.diagonal().sqrt().clone()  # (I_m,) = sqrt(|U_i|); every item has >= 1 user
        gram.div_(norm[:, None]).div_(norm[None, :])  # cosine of binary columns
        gram.fill_diagonal_(0.0)  # an item is not its own neighbour
        return gram


class EASE(ItemItemModel):
    """EASE with L2 weight ``lam``; see the module docstring.

    ``lam`` is the one hyper-parameter. The default, 200, is a fixed value for data of the size
    of the XMRec markets (a few thousand users and up to ~10k items per domain); denser data
    wants more (MovieLens-1M: 500). Choose it on a validation split or a hold-out from training
    (:func:`select_ease_lambda`), never on the split that is reported.
    """

    def __init__(self, lam: float = 200.0, scope: str = "domain", history: str | None = None):
        if not (isinstance(lam, (int, float)) and lam > 0 and np.isfinite(lam)):
            raise ValueError(f"EASE lambda must be a finite number > 0, got {lam!r}")
        super().__init__(scope, history)
        self.lam = float(lam)
        self.name = "ease" if scope == "domain" else "ease-pooled"

    def weight_matrix(self, gram: torch.Tensor) -> torch.Tensor:
        gram.diagonal().add_(self.lam)  # X^T X + lam I: symmetric positive definite
        # P = (X^T X + lam I)^-1; a plain LU inverse: on CPU several times faster than
        # cholesky_inverse at these sizes, and as accurate for a matrix this well conditioned
        p = torch.linalg.inv(gram)
        p.div_(-p.diagonal().clone()[None, :])  # B_ij = -P_ij / P_jj (in place: P can be large)
        p.fill_diagonal_(0.0)  # = I - P diag(1/diag(P)): the constraint diag(B) = 0
        return p


#: reference name -> (class, constructor arguments)
REFERENCES: dict[str, tuple[type, dict]] = {
    "popularity": (Popularity, {"per_domain": False}),
    "domain-popularity": (Popularity, {"per_domain": True}),
    "itemknn": (ItemKNN, {"scope": "domain"}),
    "itemknn-pooled": (ItemKNN, {"scope": "pooled"}),
    "ease": (EASE, {"scope": "domain"}),
    "ease-pooled": (EASE, {"scope": "pooled"}),
}


def build_reference(name: str, **kwargs) -> Reference:
    """An unfitted reference ranker by name; ``kwargs`` go to its constructor (``lam=500``)."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; known: {sorted(REFERENCES)}")
    cls, preset = REFERENCES[name]
    return cls(**{**preset, **kwargs})


def select_ease_lambda(data: MultiDomainData, grid: tuple[float, ...] = (50, 100, 200, 500, 1000, 2000),
                       *, scope: str = "domain", metric: str = "recall@50", fraction: float = 0.1,
                       seed: int = 0) -> tuple[float, dict[float, float]]:
    """Pick EASE's ``lam`` on a hold-out from training: the last positive of ``fraction`` of the
    users, ranked against the full corpus, as the trainer validates. The reported split is never
    looked at. Returns (best lam, {lam: mean metric}); ties go to the larger lam."""
    from adirec.eval.protocols import SeenItems, evaluate
    from adirec.data.split import holdout_split

    if not grid or min(grid) <= 0:
        raise ValueError(f"lambda grid must hold positive values, got {grid}")
    name, _, k = metric.partition("@")
    if name not in ("recall", "ndcg") or not k.isdigit():
        raise ValueError(f"metric must look like recall@50 or ndcg@10, got {metric!r}")
    reduced, held = holdout_split(data, fraction, seed)
    reduced.splits["valid"] = held
    reduced.candidates = {}
    found = {}
    for lam in grid:
        model = EASE(float(lam), scope=scope).fit(reduced)
        result = evaluate(model, reduced, split="valid", protocol="full", ks=[int(k)], seen=SeenItems(reduced))
        found[float(lam)] = result.metrics(data.domains)[metric]["mean"]
    best = max(found, key=lambda lam: (found[lam], lam))
    return best, found
