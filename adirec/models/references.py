"""Non-neural reference rankers: the floor every multi-domain model has to clear.

* ``popularity``: an item's number of training interactions over all domains.
* ``domain-popularity``: the same count within the queried domain only.
* ``itemknn``: cosine item-item similarity on the binary user-item training matrix,
  ``S_ij = |U_i & U_j| / sqrt(|U_i| |U_j|)`` (self-similarity zeroed); a user's score of item j
  is ``sum_{i in H_u} S_ij`` over the user's training items ``H_u`` (Sarwar et al., WWW 2001).
* ``ease``: EASE (Steck, WWW 2019), the closed form of
  ``min_B ||X - XB||^2 + lam ||B||^2  s.t. diag(B) = 0``:
  ``P = (X^T X + lam I)^-1``, ``B = I - P diag(1 / diag(P))``; scores ``X_u B``.
* ``ease-recency``, ``ease-pooled-recency``: EASE scoring recency-weighted histories (below).

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

Recency (``decay < 1``, the ``-recency`` references). On timestamped data what a user did last
predicts the next interaction far better than what they did long ago, so the history row is
weighted: the entry of item ``i`` is ``decay ** r`` where ``r`` is the recency rank of ``i`` in
the history used (0 = the most recent training positive, by (time, item id); an item seen
twice counts at its latest time). The matrix is fitted on the binary matrix as before; only
the scoring row changes. ``decay = 1`` is the unweighted model. On MovieLens-1M this lifts
pooled EASE from 0.284 to 0.356 Recall@50 (age3) and from 0.532 to 0.554 (genre3). Data
without timestamps has no recency: fitting a ``decay < 1`` model on it is an error.

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


def _check_decay(decay) -> float:
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
        raise ValueError(f"recency decay must be a number in (0, 1], got {decay!r}")
    return float(decay)


def _has_time(data: MultiDomainData) -> bool:
    t = data.splits["train"].timestamp
    return bool(len(t)) and bool(np.any(t != t[0]))


def _history_csr(users: np.ndarray, items: np.ndarray, times: np.ndarray,
                 n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's distinct items as CSR over user ids: ``(indptr, items, recency rank)``; the
    rank is 0 for the most recent item by (latest time, item id), 1 for the one before, ..."""
    by_pair = np.lexsort((times, items, users))  # the latest time of a (user, item) last
    u, i, t = users[by_pair], items[by_pair], times[by_pair]
    last = np.r_[(u[1:] != u[:-1]) | (i[1:] != i[:-1]), True] if len(u) else np.zeros(0, dtype=bool)
    u, i, t = u[last], i[last], t[last]
    order = np.lexsort((i, t, u))  # oldest first within each user
    u, i = u[order], i[order]
    counts = np.bincount(u, minlength=n_users)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    rank = indptr[u + 1] - 1 - np.arange(len(u))  # 0 = the user's last entry
    return indptr, i, rank


def _order_positions(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
    """(n,) float32 position of each entry when sorted ascending by (primary, secondary)."""
    ascending = np.lexsort((secondary, primary))
    pos = np.empty(len(primary), dtype=np.float32)
    pos[ascending] = np.arange(len(primary), dtype=np.float32)  # exact in float32 below 2^24
    return pos


class Reference:
    """Base of the references: domain counts, the tie order, and the ranking transform."""

    name = "reference"

    def fit(self, data: MultiDomainData) -> Reference:
        u, i, d = self._fit_counts(data)
        self._fit(u, i, d, data)
        return self

    def _fit_counts(self, data: MultiDomainData):
        """Domain and global counts and the tie order; returns the distinct training positives."""
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
        return u, i, d

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

    def use_histories(self, data: MultiDomainData) -> Reference:
        """Score with the users' histories in ``data``'s training split (e.g. the training and
        validation positives of :func:`adirec.data.split.history_view`); what was fitted stays.
        Nothing to do for a reference that reads no history."""
        return self


class Popularity(Reference):
    """Scores every item by its training count, over all domains or within the queried domain."""

    def __init__(self, per_domain: bool = False):
        self.per_domain = per_domain
        self.name = "domain-popularity" if per_domain else "popularity"

    def _fit(self, u, i, d, data) -> None:
        counts = (self.domain_counts if self.per_domain
                  else np.broadcast_to(self.global_counts, self.domain_counts.shape))
        counts = counts.astype(np.int64).copy()
        counts[:, 0] = -1
        # the whole ranking is one order per domain: count first, then the tie order
        orders = [_order_positions(c, t) for c, t in zip(counts, self._tie, strict=True)]
        self._order = torch.from_numpy(np.stack(orders))

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

    def __init__(self, scope: str = "domain", history: str | None = None, decay: float = 1.0):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        history = history or ("all" if scope == "pooled" else "domain")
        if history not in HISTORIES:
            raise ValueError(f"history must be one of {HISTORIES}, got {history!r}")
        self.scope, self.history = scope, history
        self.decay = _check_decay(decay)
        self.window: int | None = None  # score only the most recent `window` history items (None: all)
        self.weights: list[torch.Tensor] = []  # per matrix (I_m, I_m) float32
        self.items: list[np.ndarray] = []  # per matrix: the item id of each row

    @property
    def needs_time(self) -> bool:
        """Whether the model weighs histories by recency (and so needs timestamps)."""
        return self.decay < 1.0

    def set_decay(self, decay: float) -> ItemItemModel:
        """Score with another recency decay; the fitted matrix is unchanged (it does not depend
        on it), so a decay can be chosen without refitting."""
        decay = _check_decay(decay)
        if decay < 1.0 and getattr(self, "_timeless", False):
            raise ValueError(f"{self.name}: recency weighting needs timestamps; this data set has none")
        self.decay = decay
        return self

    def use_histories(self, data: MultiDomainData) -> ItemItemModel:
        if not hasattr(self, "_hist"):
            raise RuntimeError(f"{self.name}: call fit(data) before use_histories")
        fitted = (len(self._hist), len(self._hist[0][0]) - 2)  # CSR over ids 0..U: U + 2 offsets
        if (data.num_domains, data.num_users) != fitted:
            raise ValueError(f"{self.name}: histories of another data set ({data.num_domains} domains, "
                             f"{data.num_users} users; fitted on {fitted[0]} domains, {fitted[1]} users)")
        self._fit_histories(data)
        return self

    def weight_matrix(self, gram: torch.Tensor) -> torch.Tensor:
        """(I_m, I_m) item-item matrix from the float64 Gram matrix ``X^T X`` (which it may
        overwrite)."""
        raise NotImplementedError

    def _fit(self, u, i, d, data) -> None:
        self._timeless = not _has_time(data)
        if self.needs_time and self._timeless:
            raise ValueError(f"{self.name}: recency weighting (decay {self.decay:g}) needs timestamps; "
                             f"{data.name} has none. Use the reference without recency")
        self.weights = [self.weight_matrix(gram).to(torch.float32).contiguous() for gram in self._grams(u, i, d, data)]
        self._fit_histories(data)

    def _grams(self, u, i, d, data):
        """Yield each matrix's float64 Gram matrix ``X^T X`` (I_m, I_m), setting its items and columns."""
        n_i, D = data.num_items + 1, data.num_domains
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
            index = torch.from_numpy(np.stack([rows, self._col[m, mi]]))
            x = torch.sparse_coo_tensor(index, torch.ones(len(rows), dtype=torch.float64),
                                        (int(rows.max()) + 1, len(items)), check_invariants=False).coalesce()
            with warnings.catch_warnings():  # torch calls its sparse product "beta"; it is exact
                warnings.simplefilter("ignore", UserWarning)
                gram = torch.sparse.mm(x.t().coalesce(), x).to_dense()  # (I_m, I_m) co-occurrence counts
            yield gram
            del gram

    def fit_grid(self, data: MultiDomainData, lambdas, decays):
        """Yield ``(lam, decay, fitted model)`` for every pair: the Gram matrices are built once,
        the matrix once per lambda, and the decay only weighs the scoring row. For models with a
        ``lam`` (EASE)."""
        u, i, d = self._fit_counts(data)
        self._timeless = not _has_time(data)
        grams = list(self._grams(u, i, d, data))
        self._fit_histories(data)
        for lam in lambdas:
            self.lam = float(lam)
            self.weights = [self.weight_matrix(g.clone()).to(torch.float32).contiguous() for g in grams]
            for decay in decays:
                yield float(lam), _check_decay(decay), self.set_decay(decay)

    def _fit_histories(self, data: MultiDomainData) -> None:
        """User histories as CSR over user ids with recency ranks: per domain, and over all domains."""
        n_u, D = data.num_users + 1, data.num_domains
        tr = data.splits["train"]
        pos = tr.weight > 0
        tu, ti, td, tt = tr.user[pos], tr.item[pos], tr.domain[pos], tr.timestamp[pos]
        self._hist = [_history_csr(tu[td == m], ti[td == m], tt[td == m], n_u) for m in range(D)]
        if self.history == "all":
            self._hist_all = _history_csr(tu, ti, tt, n_u)

    def _history_rows(self, users: np.ndarray, domain: int) -> torch.Tensor:
        """(n_users, I_m) sparse history rows in the columns of the domain's matrix: 1 per item,
        or ``decay ** recency rank`` with recency weighting."""
        m = self.matrix_of_domain[domain]
        indptr, values, ranks = self._hist_all if self.history == "all" else self._hist[domain]
        users = np.asarray(users, dtype=np.int64)
        start, end = indptr[users], indptr[users + 1]
        lengths = end - start
        rows = np.repeat(np.arange(len(users)), lengths)
        idx = np.repeat(start, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
        cols = self._col[m, values[idx]]
        keep = cols >= 0  # history="all": items the matrix never saw have no row in it
        if self.window is not None:
            keep &= ranks[idx] < self.window
        if self.decay < 1.0:
            weight = torch.from_numpy(np.power(self.decay, ranks[idx][keep].astype(np.float64)).astype(np.float32))
        else:
            weight = torch.ones(int(keep.sum()), dtype=torch.float32)
        return torch.sparse_coo_tensor(torch.from_numpy(np.stack([rows[keep], cols[keep]])), weight,
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

    def __init__(self, scope: str = "domain", history: str | None = None, decay: float = 1.0):
        super().__init__(scope, history, decay)
        self.name = ("itemknn" if scope == "domain" else "itemknn-pooled") + ("-recency" if decay < 1 else "")

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

    def __init__(self, lam: float = 200.0, scope: str = "domain", history: str | None = None, decay: float = 1.0):
        if not (isinstance(lam, (int, float)) and lam > 0 and np.isfinite(lam)):
            raise ValueError(f"EASE lambda must be a finite number > 0, got {lam!r}")
        super().__init__(scope, history, decay)
        self.lam = float(lam)
        self.name = ("ease" if scope == "domain" else "ease-pooled") + ("-recency" if decay < 1 else "")

    def weight_matrix(self, gram: torch.Tensor) -> torch.Tensor:
        gram.diagonal().add_(self.lam)  # X^T X + lam I: symmetric positive definite
        # P = (X^T X + lam I)^-1; a plain LU inverse: on CPU several times faster than
        # cholesky_inverse at these sizes, and as accurate for a matrix this well conditioned
        p = torch.linalg.inv(gram)
        p.div_(-p.diagonal().clone()[None, :])  # B_ij = -P_ij / P_jj (in place: P can be large)
        p.fill_diagonal_(0.0)  # = I - P diag(1/diag(P)): the constraint diag(B) = 0
        return p


class SequentialLinear(ItemItemModel):
    """Next-item ridge regression on recency-weighted windows (``seq-linear``): a linear item-item
    model fitted to predict each training positive from the ones just before it.

    Every user's training positives, all domains together, in time order (time, then item id)
    make a sequence ``i_1, i_2, ...``. Each position ``t >= 2`` is a training example: the input
    ``x_t = sum_{l=1..window} decay^(l-1) e(i_{t-l})`` (the preceding items, the latest weighing
    1), the target ``y_t = e(i_t)``. ``B = argmin ||Y - X B||^2 + lam ||B||^2 = (X^T X + lam I)^-1
    X^T Y``; a user is scored by ``x_u B`` with ``x_u`` the same window over the user's latest
    training positives. It is EASE's closed form with the co-occurrence of a whole history
    replaced by "what came next" (item-item models of this kind: Choi et al., "Session-aware
    Linear Item-Item Models for Session-based Recommendation", WWW 2021). One matrix for every
    domain (pooled), as pooled EASE; it needs timestamps.
    """

    def __init__(self, lam: float = 500.0, decay: float = 0.8, window: int = 10):
        if not (isinstance(lam, (int, float)) and lam > 0 and np.isfinite(lam)):
            raise ValueError(f"seq-linear lambda must be a finite number > 0, got {lam!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"seq-linear window must be an integer >= 1, got {window!r}")
        super().__init__("pooled", "all", decay)
        self.lam, self.window = float(lam), window
        self.name = "seq-linear"

    @property
    def needs_time(self) -> bool:
        return True

    def set_decay(self, decay: float) -> ItemItemModel:
        raise ValueError("seq-linear's matrix depends on its decay: build another model (see fit_grid)")

    def _fit(self, u, i, d, data) -> None:
        if not _has_time(data):
            raise ValueError(f"{self.name} learns from the order of interactions; {data.name} has no timestamps")
        self._prepare(data)
        xtx, xty = self._transition_products(self.decay)
        self.weights = [self._solve(xtx, xty, self.lam)]
        self._fit_histories(data)

    def _prepare(self, data: MultiDomainData) -> None:
        n_i, D = data.num_items + 1, data.num_domains
        tr = data.splits["train"]
        pos = tr.weight > 0
        u, i, t = tr.user[pos], tr.item[pos], tr.timestamp[pos]
        order = np.lexsort((i, t, u))
        self._seq_user, self._seq_item = u[order], i[order]
        items = np.unique(i)
        self.matrix_of_domain = [0] * D
        self._col = np.full((1, n_i), -1, dtype=np.int64)
        self._col[0, items] = np.arange(len(items))
        self.items = [items]

    def _transition_products(self, decay: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(X^T X, X^T Y), float64 (I_m, I_m), for the windows weighted by ``decay``.

        Summed lag pair by lag pair with counts over flat (row, column) cells: a position that
        has a preceding item at lag ``l2`` has one at every smaller lag (a user's positions are
        contiguous), and the pair (l1, l2) adds ``decay^(l1-1) decay^(l2-1)`` times the count of
        (item at t-l1, item at t-l2)."""
        window = self.window
        assert window is not None  # seq-linear always has one
        su, cols = self._seq_user, self._col[0, self._seq_item]
        n, m = len(su), len(self.items[0])
        valid = [np.flatnonzero(su[lag:] == su[:-lag]) + lag if n > lag else np.zeros(0, dtype=np.int64)
                 for lag in range(1, window + 1)]
        xtx = np.zeros(m * m)
        xty = np.zeros(m * m)
        for l1 in range(1, window + 1):
            t1 = valid[l1 - 1]
            xty += decay ** (l1 - 1) * np.bincount(cols[t1 - l1] * m + cols[t1], minlength=m * m)
            for l2 in range(l1, window + 1):
                t = valid[l2 - 1]
                if not len(t):
                    continue
                c = np.bincount(cols[t - l1] * m + cols[t - l2], minlength=m * m).astype(np.float64)
                if l2 != l1:  # the pair (l2, l1) is the transpose
                    c += c.reshape(m, m).T.ravel()
                xtx += decay ** (l1 + l2 - 2) * c
        return torch.from_numpy(xtx.reshape(m, m)), torch.from_numpy(xty.reshape(m, m))

    @staticmethod
    def _solve(xtx: torch.Tensor, xty: torch.Tensor, lam: float) -> torch.Tensor:
        g = xtx.clone()
        g.diagonal().add_(lam)  # symmetric positive definite
        return torch.linalg.solve(g, xty).to(torch.float32).contiguous()

    def fit_grid(self, data: MultiDomainData, lambdas, decays):
        """Yield ``(lam, decay, fitted model)`` for every pair, building the window products once
        per decay (the expensive part) and solving once per lambda."""
        self._fit_counts(data)
        if not _has_time(data):
            raise ValueError(f"{self.name} learns from the order of interactions; {data.name} has no timestamps")
        self._prepare(data)
        self._fit_histories(data)
        for decay in decays:
            xtx, xty = self._transition_products(decay)
            for lam in lambdas:
                self.decay, self.lam = _check_decay(decay), float(lam)
                self.weights = [self._solve(xtx, xty, lam)]
                yield float(lam), self.decay, self


#: reference name -> (class, constructor arguments)
REFERENCES: dict[str, tuple[type, dict]] = {
    "popularity": (Popularity, {"per_domain": False}),
    "domain-popularity": (Popularity, {"per_domain": True}),
    "itemknn": (ItemKNN, {"scope": "domain"}),
    "itemknn-pooled": (ItemKNN, {"scope": "pooled"}),
    "ease": (EASE, {"scope": "domain"}),
    "ease-pooled": (EASE, {"scope": "pooled"}),
    "ease-recency": (EASE, {"scope": "domain", "decay": 0.9}),
    "ease-pooled-recency": (EASE, {"scope": "pooled", "decay": 0.9}),
    "seq-linear": (SequentialLinear, {"decay": 0.8}),
}
#: references that weigh histories by recency: they need timestamps, and their decay is chosen
#: on a hold-out (:func:`select_settings`)
RECENCY_REFERENCES = frozenset(name for name, (_, kw) in REFERENCES.items() if "decay" in kw)
#: references whose lambda (and decay) are chosen on a hold-out
TUNED_REFERENCES = frozenset(name for name, (cls, _) in REFERENCES.items() if cls in (EASE, SequentialLinear))


def build_reference(name: str, **kwargs) -> Reference:
    """An unfitted reference ranker by name; ``kwargs`` go to its constructor (``lam=500``,
    ``decay=0.95``)."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; known: {sorted(REFERENCES)}")
    cls, preset = REFERENCES[name]
    model = cls(**{**preset, **kwargs})
    model.name = name
    return model


def has_time(data: MultiDomainData) -> bool:
    """Whether the training interactions carry timestamps (what recency weighting needs)."""
    return _has_time(data)


def _grid(name: str, data: MultiDomainData, lambdas, decays):
    """``(lam, decay, fitted model)`` for every pair of the grid, fitting as little as the model
    allows: EASE's Gram matrices once (the decay only weighs the scoring row), seq-linear's window
    products once per decay."""
    model = build_reference(name, decay=1.0)
    assert isinstance(model, (EASE, SequentialLinear)), name  # the tuned references
    yield from model.fit_grid(data, lambdas, decays)


def select_settings(data: MultiDomainData, name: str, lambdas: tuple[float, ...] = (50, 100, 200, 500, 1000, 2000),
                    decays: tuple[float, ...] = (1.0,), *, metric: str = "recall@50", fraction: float = 0.1,
                    seed: int = 0) -> tuple[float, float, dict[tuple[float, float], float]]:
    """Choose the lambda and recency decay of reference ``name`` (an EASE or ``seq-linear``) on a
    hold-out from training: the last positive of ``fraction`` of the users, ranked against the
    full corpus, as the trainer validates. The reported split is never looked at. EASE tries
    every pair; ``seq-linear`` the decays at the middle lambda, then the lambdas at the best
    decay. Returns (best lam, best decay, {(lam, decay): mean metric} of the pairs tried); ties
    go to the larger lam, then the larger decay (the simpler model)."""
    from adirec.eval.protocols import SeenItems, evaluate
    from adirec.data.split import holdout_split

    if name not in TUNED_REFERENCES:
        raise ValueError(f"{name!r} has no lambda to choose; tuned references: {sorted(TUNED_REFERENCES)}")
    if not lambdas or min(lambdas) <= 0:
        raise ValueError(f"lambda grid must hold positive values, got {lambdas}")
    if not decays:
        raise ValueError("decay grid must hold at least one value")
    decays = tuple(_check_decay(x) for x in decays)
    metric_name, _, k = metric.partition("@")
    if metric_name not in ("recall", "ndcg") or not k.isdigit():
        raise ValueError(f"metric must look like recall@50 or ndcg@10, got {metric!r}")
    if (min(decays) < 1.0 or name == "seq-linear") and not _has_time(data):
        raise ValueError(f"{data.name}: {name} with decays {list(decays)} needs timestamps; the data has none")
    reduced, held = holdout_split(data, fraction, seed)
    reduced.splits["valid"] = held
    reduced.candidates = {}
    seen = SeenItems(reduced)
    found: dict[tuple[float, float], float] = {}

    def best() -> tuple[float, float]:
        return max(found, key=lambda key: (found[key], key[0], key[1]))

    def score(lambdas_, decays_) -> None:
        for lam, decay, model in _grid(name, reduced, lambdas_, decays_):
            if (lam, decay) not in found:
                result = evaluate(model, reduced, split="valid", protocol="full", ks=[int(k)], seen=seen)
                found[(lam, decay)] = result.metrics(data.domains)[metric]["mean"]

    if name == "seq-linear":
        # every (lambda, decay) is a new least-squares solve: the decay at the middle lambda
        # first, then the lambda at that decay (len(lambdas) + len(decays) - 1 solves, not their product)
        middle = sorted(lambdas)[len(lambdas) // 2]
        score((middle,), decays)
        score(lambdas, (best()[1],))
    else:
        score(lambdas, decays)
    lam, decay = best()
    return lam, decay, found


def select_ease(data: MultiDomainData, lambdas: tuple[float, ...] = (50, 100, 200, 500, 1000, 2000),
                decays: tuple[float, ...] = (1.0,), *, scope: str = "domain", metric: str = "recall@50",
                fraction: float = 0.1, seed: int = 0) -> tuple[float, float, dict[tuple[float, float], float]]:
    """:func:`select_settings` for EASE fitted per domain (``scope="domain"``) or pooled."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    return select_settings(data, "ease" if scope == "domain" else "ease-pooled", lambdas, decays, metric=metric,
                           fraction=fraction, seed=seed)


def select_ease_lambda(data: MultiDomainData, grid: tuple[float, ...] = (50, 100, 200, 500, 1000, 2000),
                       *, scope: str = "domain", metric: str = "recall@50", fraction: float = 0.1,
                       seed: int = 0) -> tuple[float, dict[float, float]]:
    """:func:`select_ease` without recency: (best lam, {lam: mean metric})."""
    lam, _, found = select_ease(data, grid, (1.0,), scope=scope, metric=metric, fraction=fraction, seed=seed)
    return lam, {key[0]: v for key, v in found.items()}
