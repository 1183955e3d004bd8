"""Synthetic multi-domain data with a planted ground truth.

The generated world imitates the industrial data of the ADI paper: a few business domains with
very unequal traffic (by default ``d1``/``d2``/``d3`` with 63% / 8% / 29% of the interactions),
about half of the users active in two or more domains and most items available in several
domains. Interactions are drawn from a known model, so a domain-aware recommender has something
real to learn and its quality can be compared with the truth:

* **Items.** Every item has a ``category`` (Zipf-like sizes), a ``brand`` (each brand belongs to
  one category) and a price. Its latent vector is ``cat_vec[category] + brand_scale *
  brand_vec[brand] + item_noise * noise``, so category and brand carry signal. Each item has a
  global log-popularity ``b_i`` and, per domain, an attractiveness ``a_{d,i}``; it is available in
  a random subset of the domains (always at least one).
* **Users.** Profile fields ``age_bucket``, ``gender``, ``city_tier`` (categorical) and
  ``purchase_power`` (dense). The profile sets the odds of the user's favourite categories
  ``F_u``, and the shared interest ``s_u`` is the mean of the favourite categories' vectors plus
  the user's noise ``n_u``. In domain ``d`` the interest is ``z_{u,d} = b_{u,d} + domain_transform
  * R_d b_{u,d} + domain_shift * delta_d + user_domain_shift * eps_{u,d}``: a domain-specific
  linear map of the base interest (what a domain-specific tower can learn from the user's
  features and history), a shift shared by the domain, and noise per user and domain.
* **Domain-specific interest** (``domain_interest = w``, 0 by default). The base interest is
  ``b_{u,d} = (1 - w) s_u + w s_{u,d}`` with ``s_{u,d}`` = the mean of the vectors of the
  categories ``pi_d(F_u)`` plus ``n_u``, where ``pi_d`` is a fixed random permutation of the
  categories per domain (the identity for the first domain). With ``w = 1`` the same user
  likes different item groups in different domains (a user who buys category 3 in ``d1`` buys
  category ``pi_2(3)`` in ``d2``), while the items themselves (and their categories) are shared
  by the domains. A model that does not know the queried domain sees one mixture of the user's
  tastes and ranks the same items first in every domain; the mapping from the user's behaviour
  to each domain's taste is one fixed function per domain, which domain-specific networks can
  learn. The ``demo`` preset is built on this (``adirec demo`` compares ADI with a domain-blind
  DNN there).
* **Interactions.** A user's number of interactions is ``min_interactions`` plus a negative
  binomial draw; a fraction ``multi_domain_user_frac`` of the users spreads them over two or more
  domains, the others stay in one; the expected traffic share of domain ``d`` is
  ``domain_shares[d]``. In domain ``d`` the user's items are drawn without replacement from
  ``softmax(z_{u,d} . v_i / temperature + b_i + a_{d,i} + price_affinity * pp_u * price_i)``
  over the items available in ``d`` (a user never gets the same item twice, in any domain).
  Catalogues larger than ``candidate_pool`` per domain are subsampled: each block of users draws
  from a fresh uniform random subset of ``candidate_pool`` available items (an approximation of
  the full softmax that keeps very large worlds affordable; exact below that size).
* **Time and splits.** Each user's interactions get strictly increasing timestamps in random
  domain order; per user the last one is the test row, the second last the valid row, the rest
  train (users with fewer than 3 interactions keep everything in train). ``--domains`` drops the
  other domains' interactions first and splits what is left by the same rule.

Everything is generated per block of ``block_users`` users from random streams keyed by
``(seed, stream, block)``, so :func:`generate_chunks` can stream a huge world block by block and
:func:`load_synthetic` (which concatenates the same blocks) gives exactly the same rows. Item
and user feature tables are produced separately and cheaply (:meth:`SyntheticWorld.item_table`,
:meth:`SyntheticWorld.user_table`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from collections.abc import Iterator

import numpy as np

from adirec.data.build import RawColumn, RawInteractions, RawTable, build_dataset
from adirec.data.dataset import MultiDomainData

__all__ = [
    "SyntheticConfig", "PRESETS", "SyntheticWorld", "InteractionChunk", "UserBlock",
    "generate_chunks", "load_synthetic", "resolve_config", "SPLIT_CODES",
]

#: values of :attr:`InteractionChunk.split`
SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}

AGE_BUCKETS = ("<18", "18-24", "25-34", "35-44", "45-54", "55+")
AGE_PROBS = (0.05, 0.20, 0.30, 0.22, 0.13, 0.10)
GENDERS = ("f", "m", "u")
GENDER_PROBS = (0.48, 0.47, 0.05)
CITY_TIERS = ("tier1", "tier2", "tier3", "tier4", "tier5")
CITY_PROBS = (0.15, 0.20, 0.25, 0.20, 0.20)
# purchase-power effects of the profile fields (richer in big cities and at middle age)
_CITY_PP = np.array([1.0, 0.5, 0.0, -0.4, -0.8])
_AGE_PP = np.array([-0.8, -0.3, 0.2, 0.4, 0.2, -0.2])
_PP_NOISE = 0.7
_PP_SD = math.sqrt(float(np.dot(CITY_PROBS, _CITY_PP ** 2) - np.dot(CITY_PROBS, _CITY_PP) ** 2)
                   + float(np.dot(AGE_PROBS, _AGE_PP ** 2) - np.dot(AGE_PROBS, _AGE_PP) ** 2)
                   + _PP_NOISE ** 2)

# independent random streams: (seed, stream, block)
_WORLD, _PROFILE, _LATENT, _ACTIVITY, _SAMPLE = range(5)
_MAX_CELLS = 1 << 22  # logits computed at once when sampling (rows x candidates)
_HORIZON_SECONDS = 180 * 86400  # users start within the first 180 days


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of a synthetic world. All fields are validated on construction.

    Size:
        num_users: number of users generated (every one has >= ``min_interactions`` rows).
        num_items: number of items in the catalogue (all domains together).
        interactions_per_user: mean number of interactions of a user, all domains together.
        min_interactions: minimum number of interactions of a user (>= 1; with 3 or more every
            user gets a valid and a test row).
        activity_dispersion: shape ``r`` of the negative-binomial activity (smaller = heavier
            tail of very active users).
    Domains:
        domain_shares: expected traffic share of each domain (positive, summing to 1); their
            number is the number of domains.
        domain_names: names of the domains; default ``d1``, ``d2``, ...
        multi_domain_user_frac: fraction of users whose interactions span two or more domains
            (ignored with one domain).
        secondary_domain_weight: for those users, the probability that an interaction leaves the
            user's primary domain (it then lands in a domain drawn by ``domain_shares``).
        item_domain_prob: probability that an item is available in a given domain (each item is
            available in at least one domain, and every domain has items).
    Items:
        num_categories, num_brands: sizes of the two item vocabularies (every category has at
            least one brand, so ``num_brands >= num_categories``).
        num_price_buckets: number of quantile buckets of the ``price_bucket`` feature.
    Planted truth:
        latent_dim: dimension of the latent user/item vectors.
        temperature: softmax temperature of the preference term ``z . v``.
        favourite_categories: how many categories make up a user's shared interest.
        profile_signal: how strongly the profile fields steer the favourite categories (0 = not
            at all).
        brand_scale, item_noise: weight of the brand vector and of the item's own noise in the
            item vector (the category vector has weight 1).
        user_noise: weight of the user's own noise in the shared interest.
        domain_interest: weight ``w`` in [0, 1] of the domain-specific interest: in domain ``d``
            the user's favourite categories are permuted by the domain's ``pi_d`` (see the module
            docstring); 0 = one interest in every domain, 1 = fully domain-specific.
        domain_transform: weight of the domain-specific linear map ``R_d`` of the base
            interest (random ``latent_dim x latent_dim`` matrix per domain).
        domain_shift: weight of the shift shared by all users of a domain.
        user_domain_shift: weight of the shift specific to each (user, domain).
        popularity_sigma: standard deviation of the global item log-popularity.
        domain_item_sigma: standard deviation of the per-domain item attractiveness.
        price_affinity: strength of the purchase-power x price interaction.
    Time:
        start_time: earliest timestamp (unix seconds).
        mean_gap_seconds: mean time between two interactions of a user.
    Generation:
        candidate_pool: largest number of items a user block samples from per domain; larger
            per-domain catalogues are subsampled at random for every block.
        block_users: users per generation block (and per chunk of :func:`generate_chunks`); the
            data depend on it, so keep it fixed to reproduce a data set.
        item_domain_dense: add the per-domain item statistics ``item_domain_ctr`` (CTR-like)
            and ``item_domain_price`` (price-like) as item-domain fields.
    """

    num_users: int = 5_000
    num_items: int = 2_000
    interactions_per_user: float = 40.0
    min_interactions: int = 3
    activity_dispersion: float = 1.5
    domain_shares: tuple[float, ...] = (0.63, 0.08, 0.29)
    domain_names: tuple[str, ...] | None = None
    multi_domain_user_frac: float = 0.5
    secondary_domain_weight: float = 0.4
    item_domain_prob: float = 0.7
    num_categories: int = 24
    num_brands: int = 240
    num_price_buckets: int = 10
    latent_dim: int = 16
    temperature: float = 0.25
    favourite_categories: int = 2
    profile_signal: float = 1.0
    brand_scale: float = 0.5
    item_noise: float = 0.3
    user_noise: float = 0.5
    domain_interest: float = 0.0
    domain_transform: float = 0.7
    domain_shift: float = 0.5
    user_domain_shift: float = 0.3
    popularity_sigma: float = 1.0
    domain_item_sigma: float = 0.7
    price_affinity: float = 0.5
    start_time: int = 1_600_000_000
    mean_gap_seconds: float = 43_200.0
    candidate_pool: int = 20_000
    block_users: int = 2_048
    item_domain_dense: bool = True

    def __post_init__(self) -> None:
        shares = _as_tuple(self.domain_shares, "domain_shares")
        object.__setattr__(self, "domain_shares", tuple(float(s) for s in shares))
        if self.domain_names is not None:
            object.__setattr__(self, "domain_names",
                               tuple(str(n) for n in _as_tuple(self.domain_names, "domain_names")))
        self.validate()

    # ---------------------------------------------------------------- helpers
    @property
    def num_domains(self) -> int:
        return len(self.domain_shares)

    @property
    def domains(self) -> list[str]:
        if self.domain_names is None:
            return [f"d{j + 1}" for j in range(self.num_domains)]
        return list(self.domain_names)

    @property
    def num_blocks(self) -> int:
        return -(-self.num_users // self.block_users)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["domain_shares"] = list(self.domain_shares)
        d["domain_names"] = self.domains
        return d

    def validate(self) -> None:
        _int(self, "num_users", 1)
        _int(self, "num_items", 2)
        _int(self, "min_interactions", 1)
        _num(self, "interactions_per_user", lo=self.min_interactions)
        _num(self, "activity_dispersion", lo=0.0, lo_open=True)
        shares = self.domain_shares
        if len(shares) < 1:
            raise ValueError("domain_shares must name at least one domain")
        if not all(math.isfinite(s) and s > 0 for s in shares):
            raise ValueError(f"domain_shares must all be positive and finite, got {shares}")
        if abs(sum(shares) - 1.0) > 1e-6:
            raise ValueError(f"domain_shares must sum to 1, got {shares} (sum {sum(shares):.6g})")
        if self.domain_names is not None:
            names = self.domain_names
            if len(names) != len(shares):
                raise ValueError(f"domain_names has {len(names)} names but domain_shares has "
                                 f"{len(shares)} domains")
            if len(set(names)) != len(names) or any(not n for n in names):
                raise ValueError(f"domain_names must be distinct non-empty strings, got {names}")
        if self.num_items < len(shares):
            raise ValueError(f"num_items must be >= the number of domains ({len(shares)}), "
                             f"got {self.num_items}")
        _num(self, "multi_domain_user_frac", lo=0.0, hi=1.0)
        _num(self, "secondary_domain_weight", lo=0.0, hi=1.0)
        _num(self, "item_domain_prob", lo=0.0, hi=1.0)
        _num(self, "domain_interest", lo=0.0, hi=1.0)
        _int(self, "num_categories", 1)
        _int(self, "num_brands", self.num_categories)
        _int(self, "num_price_buckets", 1)
        _int(self, "latent_dim", 1)
        _num(self, "temperature", lo=0.0, lo_open=True)
        _int(self, "favourite_categories", 1)
        if self.favourite_categories > self.num_categories:
            raise ValueError(f"favourite_categories must be <= num_categories "
                             f"({self.num_categories}), got {self.favourite_categories}")
        for name in ("profile_signal", "brand_scale", "item_noise", "user_noise", "domain_transform", "domain_shift",
                     "user_domain_shift", "popularity_sigma", "domain_item_sigma",
                     "price_affinity"):
            _num(self, name, lo=0.0)
        _int(self, "start_time", 0)
        _num(self, "mean_gap_seconds", lo=0.0, lo_open=True)
        _int(self, "candidate_pool", 2)
        _int(self, "block_users", 1)
        if not isinstance(self.item_domain_dense, bool):
            raise ValueError(f"item_domain_dense must be a bool, got {self.item_domain_dense!r}")


def _as_tuple(v, name: str) -> tuple:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise ValueError(f"{name} must be a sequence, got {v!r}")
    return tuple(v)


def _int(cfg, name: str, lo: int) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")


def _num(cfg, name: str, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False) -> None:
    v = getattr(cfg, name)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v}")
    if hi is not None and v > hi:
        raise ValueError(f"{name} must be <= {hi}, got {v}")


#: named sizes; ``default`` is what ``adirec demo`` trains on
PRESETS: dict[str, SyntheticConfig] = {
    # ~3k interactions: unit tests
    "tiny": SyntheticConfig(num_users=200, num_items=250, interactions_per_user=15.0,
                            num_categories=12, num_brands=60, latent_dim=8, block_users=128),
    # ~50k interactions
    "small": SyntheticConfig(num_users=2_000, num_items=1_000, interactions_per_user=25.0,
                             num_categories=16, num_brands=120),
    # ~200k interactions, 5k users, 2k items
    "default": SyntheticConfig(),
    # ~60k interactions: what ``adirec demo`` trains on. The same users like different item
    # groups in different domains (domain_interest=1), most users are active in several domains
    # and most items are offered in every domain: a model that ignores the domain cannot rank
    # each domain's favourites first
    "demo": SyntheticConfig(num_users=3_000, num_items=600, interactions_per_user=20.0,
                            domain_shares=(0.4, 0.3, 0.3), multi_domain_user_frac=0.9,
                            secondary_domain_weight=0.6, item_domain_prob=0.9, num_categories=12,
                            num_brands=60, favourite_categories=2, domain_interest=1.0,
                            domain_transform=0.0, domain_shift=0.0, user_domain_shift=0.2,
                            popularity_sigma=0.5, domain_item_sigma=0.3),
    # ~1M interactions
    "large": SyntheticConfig(num_users=25_000, num_items=10_000, interactions_per_user=40.0,
                             num_categories=40, num_brands=800, latent_dim=24),
    # ~10M interactions, 1M items: meant to be streamed with generate_chunks
    "xl": SyntheticConfig(num_users=500_000, num_items=1_000_000, interactions_per_user=20.0,
                          num_categories=200, num_brands=20_000, latent_dim=32,
                          candidate_pool=8_192, block_users=4_096),
}


# ---------------------------------------------------------------------- blocks
@dataclass
class UserBlock:
    """Users of one block: profile and planted latents."""

    keys: np.ndarray  # (n,) int64 raw user keys
    age: np.ndarray  # (n,) index into AGE_BUCKETS
    gender: np.ndarray  # (n,) index into GENDERS
    city: np.ndarray  # (n,) index into CITY_TIERS
    purchase_power: np.ndarray  # (n,) float64, about N(0, 1)
    shared: np.ndarray | None = None  # (n, k) float32 shared interest s_u
    interest: np.ndarray | None = None  # (n, D, k) float32 per-domain interest z_{u,d}


@dataclass
class InteractionChunk:
    """Raw interactions of one block of users, sorted by user then time.

    ``user`` and ``item`` are raw keys (int64, users ``0..num_users-1``, items
    ``0..num_items-1``); ``split`` holds :data:`SPLIT_CODES` (0 train, 1 valid, 2 test)."""

    block: int
    user: np.ndarray
    item: np.ndarray
    domain: np.ndarray
    timestamp: np.ndarray
    split: np.ndarray

    def __len__(self) -> int:
        return len(self.user)

    def columns(self) -> dict[str, np.ndarray]:
        return {c: getattr(self, c) for c in ("user", "item", "domain", "timestamp", "split")}

    @staticmethod
    def concat(chunks: list[InteractionChunk]) -> InteractionChunk:
        if not chunks:
            z = np.zeros(0, np.int64)
            return InteractionChunk(-1, z, z, z, z, z.astype(np.int8))
        cols = {c: np.concatenate([getattr(ch, c) for ch in chunks])
                for c in ("user", "item", "domain", "timestamp", "split")}
        return InteractionChunk(-1, **cols)


class SyntheticWorld:
    """The planted world of one (config, seed): item side built eagerly (cheap), users and
    interactions generated on demand per block."""

    def __init__(self, config: SyntheticConfig, seed: int = 0):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.config = config
        self.seed = int(seed)
        c = config
        D, n_items, k, C, B = c.num_domains, c.num_items, c.latent_dim, c.num_categories, c.num_brands
        rng = self._rng(_WORLD)
        s = 1.0 / math.sqrt(k)
        # categories (Zipf-like sizes) and brands (brand j belongs to category j % C)
        self.cat_vec = rng.normal(0, s, (C, k))
        self.brand_vec = rng.normal(0, s, (B, k))
        cat_w = 1.0 / np.arange(1, C + 1) ** 0.7
        cat_w = rng.permutation(cat_w / cat_w.sum())
        self.item_category = _draw(rng, cat_w, n_items)
        n_brands_of = (B - 1 - np.arange(C)) // C + 1  # brands per category
        self.item_brand = self.item_category + C * np.floor(
            rng.random(n_items) * n_brands_of[self.item_category]).astype(np.int64)
        vec = (self.cat_vec[self.item_category] + c.brand_scale * self.brand_vec[self.item_brand]
               + c.item_noise * rng.normal(0, s, (n_items, k)))
        self.item_vec = vec.astype(np.float32)
        # price: category level + brand premium + noise, on a log scale
        log_price = (rng.normal(3.0, 0.8, C)[self.item_category]
                     + rng.normal(0, 0.4, B)[self.item_brand] + rng.normal(0, 0.3, n_items))
        self.item_price = np.round(np.exp(log_price), 2)
        self.price_z = ((log_price - log_price.mean()) / (log_price.std() or 1.0)).astype(np.float32)
        edges = np.quantile(log_price, np.linspace(0, 1, c.num_price_buckets + 1)[1:-1])
        self.item_price_bucket = np.searchsorted(edges, log_price, side="right")
        # popularity, per-domain attractiveness and availability
        self.popularity = rng.normal(0, c.popularity_sigma, n_items)
        self.attractiveness = rng.normal(0, c.domain_item_sigma, (D, n_items))
        avail = rng.random((D, n_items)) < c.item_domain_prob
        home = rng.permutation(np.arange(n_items) % D)  # every domain gets items
        avail[home, np.arange(n_items)] = True
        self.available = avail
        self.domain_items = [np.flatnonzero(avail[d]) for d in range(D)]
        self.base_logit = (self.popularity[None, :] + self.attractiveness).astype(np.float32)
        # domain shifts of the interest and profile -> favourite-category affinities
        self.domain_vec = rng.normal(0, s, (D, k))
        ps = c.profile_signal
        self.aff_age = ps * rng.normal(0, 1, (len(AGE_BUCKETS), C))
        self.aff_gender = ps * rng.normal(0, 1, (len(GENDERS), C))
        self.aff_city = ps * rng.normal(0, 1, (len(CITY_TIERS), C))
        self.aff_base = np.log(cat_w)  # big categories are liked more often
        self.domain_map = rng.normal(0, s, (D, k, k))  # R_d
        # pi_d: drawn last, so that worlds without a domain-specific interest stay as they were
        self.category_perm = np.stack([np.arange(C)] + [rng.permutation(C) for _ in range(D - 1)])  # (D, C)

    # ------------------------------------------------------------------ rngs
    def _rng(self, stream: int, block: int = 0) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, stream, block]))

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    def block_range(self, block: int) -> tuple[int, int]:
        if not 0 <= block < self.num_blocks:
            raise ValueError(f"block must be in [0, {self.num_blocks}), got {block}")
        lo = block * self.config.block_users
        return lo, min(lo + self.config.block_users, self.config.num_users)

    # ----------------------------------------------------------------- users
    def user_block(self, block: int, latents: bool = True) -> UserBlock:
        """Profile (and, with ``latents``, the planted interests) of the users of ``block``."""
        lo, hi = self.block_range(block)
        n = hi - lo
        rng = self._rng(_PROFILE, block)
        age = _draw(rng, np.array(AGE_PROBS), n)
        gender = _draw(rng, np.array(GENDER_PROBS), n)
        city = _draw(rng, np.array(CITY_PROBS), n)
        pp = (_CITY_PP[city] + _AGE_PP[age] + rng.normal(0, _PP_NOISE, n)) / _PP_SD
        ub = UserBlock(np.arange(lo, hi, dtype=np.int64), age, gender, city, pp)
        if not latents:
            return ub
        c = self.config
        k, D = c.latent_dim, c.num_domains
        s = 1.0 / math.sqrt(k)
        rng = self._rng(_LATENT, block)
        logits = (self.aff_base[None, :] + self.aff_age[age] + self.aff_gender[gender]
                  + self.aff_city[city])
        g = logits - np.log(rng.standard_exponential(logits.shape))  # Gumbel top-F
        fav = np.argpartition(-g, c.favourite_categories - 1, axis=1)[:, :c.favourite_categories]
        own = c.user_noise * rng.normal(0, s, (n, k))
        shared = self.cat_vec[fav].mean(axis=1) + own
        eps = rng.normal(0, s, (n, D, k))
        base = np.broadcast_to(shared[:, None, :], (n, D, k))
        if c.domain_interest > 0:  # the favourite categories as each domain permutes them
            per_domain = self.cat_vec[self.category_perm[:, fav]].mean(axis=2).transpose(1, 0, 2) + own[:, None, :]
            base = (1.0 - c.domain_interest) * base + c.domain_interest * per_domain  # (n, D, k)
        interest = (base + c.domain_transform * np.einsum("ndk,dkj->ndj", base, self.domain_map)
                    + c.domain_shift * self.domain_vec[None, :, :] + c.user_domain_shift * eps)
        ub.shared = shared.astype(np.float32)
        ub.interest = interest.astype(np.float32)
        return ub

    def user_table(self) -> RawTable:
        """Raw user features of every user (profile only: cheap)."""
        blocks = [self.user_block(b, latents=False) for b in range(self.num_blocks)]
        cat = lambda f: np.concatenate([getattr(u, f) for u in blocks])  # noqa: E731
        return RawTable(cat("keys"), {
            "age_bucket": RawColumn("categorical", _names(AGE_BUCKETS)[cat("age")]),
            "gender": RawColumn("categorical", _names(GENDERS)[cat("gender")]),
            "city_tier": RawColumn("categorical", _names(CITY_TIERS)[cat("city")]),
            "purchase_power": RawColumn("dense", cat("purchase_power").astype(np.float32)),
        })

    # ----------------------------------------------------------------- items
    @property
    def item_keys(self) -> np.ndarray:
        return np.arange(self.config.num_items, dtype=np.int64)

    def item_table(self) -> RawTable:
        c = self.config
        cats = _names([f"c{j:03d}" for j in range(c.num_categories)])
        brands = _names([f"b{j:05d}" for j in range(c.num_brands)])
        prices = _names([f"p{j:02d}" for j in range(c.num_price_buckets)])
        return RawTable(self.item_keys, {
            "category": RawColumn("categorical", cats[self.item_category]),
            "brand": RawColumn("categorical", brands[self.item_brand]),
            "price_bucket": RawColumn("categorical", prices[self.item_price_bucket]),
        })

    def item_domain_dense(self) -> dict[str, np.ndarray]:
        """Per-domain item features aligned to :attr:`item_keys`, each ``(D, num_items, 1)``
        float32: ``item_domain_ctr`` (a noisy click-through rate driven by popularity and
        per-domain attractiveness; 0 where the item is not available) and
        ``item_domain_price`` (log price with a per-domain price level and discount noise)."""
        c = self.config
        D, n_items = c.num_domains, c.num_items
        rng = self._rng(_WORLD, 1)
        ctr = 1.0 / (1.0 + np.exp(-(-3.0 + 0.5 * self.base_logit + rng.normal(0, 0.3, (D, n_items)))))
        ctr = np.where(self.available, ctr, 0.0)
        level = rng.normal(0, 0.1, D)[:, None]
        price = np.log(self.item_price)[None, :] + level + np.abs(rng.normal(0, 0.05, (D, n_items)))
        return {"item_domain_ctr": ctr.astype(np.float32)[..., None],
                "item_domain_price": price.astype(np.float32)[..., None]}

    # ---------------------------------------------------------------- truth
    def oracle_logits(self, user_keys: np.ndarray, domain: np.ndarray | int,
                      domain_aware: bool = True) -> np.ndarray:
        """Planted preference logits ``(n, num_items)`` of users in domains (``-inf`` where the
        item is not available in the domain), over the full catalogue (no candidate-pool
        subsampling). ``domain_aware=False`` drops everything that depends on the domain (the
        domain map ``R_d``, the shifts and the per-domain attractiveness), i.e. the truth as a
        domain-blind model would see it (availability is still applied)."""
        c = self.config
        keys = np.asarray(user_keys, dtype=np.int64)
        dom = np.broadcast_to(np.asarray(domain, dtype=np.int64), keys.shape)
        if keys.size and (keys.min() < 0 or keys.max() >= c.num_users):
            raise ValueError(f"user keys must be in [0, {c.num_users})")
        blocks = keys // c.block_users
        z = np.zeros((len(keys), c.latent_dim), np.float32)
        pp = np.zeros(len(keys))
        for b in np.unique(blocks):
            ub = self.user_block(int(b))
            assert ub.interest is not None and ub.shared is not None  # user_block draws the latents
            sel = np.flatnonzero(blocks == b)
            local = keys[sel] - b * c.block_users
            z[sel] = ub.interest[local, dom[sel]] if domain_aware else ub.shared[local]
            pp[sel] = ub.purchase_power[local]
        out = z @ self.item_vec.T / c.temperature + c.price_affinity * pp[:, None] * self.price_z
        out += self.base_logit[dom] if domain_aware else self.popularity[None, :]
        return np.where(self.available[dom], out, -np.inf)

    # ---------------------------------------------------------- interactions
    def domain_counts(self, block: int, n_users: int) -> np.ndarray:
        """``(n, D)`` number of interactions of each user of ``block`` in each domain."""
        c = self.config
        D = c.num_domains
        rng = self._rng(_ACTIVITY, block)
        p = np.array(c.domain_shares)
        extra = c.interactions_per_user - c.min_interactions
        r = c.activity_dispersion
        total = c.min_interactions + (rng.negative_binomial(r, r / (r + extra), n_users)
                                      if extra > 0 else np.zeros(n_users, np.int64))
        primary = _draw(rng, p, n_users)
        multi = (rng.random(n_users) < c.multi_domain_user_frac) & (total >= 2) & (D > 1)
        # domain weights: single-domain users stay in their primary domain; the others leave it
        # with probability secondary_domain_weight, for a domain drawn by the shares. Either way
        # E[weights] = shares, so the expected traffic shares are the configured ones.
        lam = np.where(multi, c.secondary_domain_weight, 0.0)
        w = lam[:, None] * p[None, :]
        w[np.arange(n_users), primary] += 1.0 - lam
        counts = rng.multinomial(total, w / w.sum(axis=1, keepdims=True))
        # a multi-domain user whose draws all fell in one domain moves one of them elsewhere
        stuck = np.flatnonzero(multi & ((counts > 0).sum(axis=1) == 1))
        if len(stuck):
            src = counts[stuck].argmax(axis=1)
            q = np.tile(p, (len(stuck), 1))
            q[np.arange(len(stuck)), src] = 0.0
            dst = _draw_rows(rng, q)
            counts[stuck, src] -= 1
            counts[stuck, dst] += 1
        # never ask for more than half of what a domain offers
        cap = np.array([max(1, min(len(it), c.candidate_pool) // 2) for it in self.domain_items])
        return np.minimum(counts, cap[None, :])

    def interactions(self, block: int) -> InteractionChunk:
        """All interactions of the users of ``block`` (see the module docstring)."""
        c = self.config
        D, n_items = c.num_domains, c.num_items
        ub = self.user_block(block)
        assert ub.interest is not None  # user_block draws the latents
        n = len(ub.keys)
        counts = self.domain_counts(block, n)
        rng = self._rng(_SAMPLE, block)
        picked_user: list[np.ndarray] = []
        picked_item: list[np.ndarray] = []
        picked_dom: list[np.ndarray] = []
        col_of = np.full(n_items, -1, dtype=np.int64)
        for d in range(D):
            rows = np.flatnonzero(counts[:, d] > 0)
            if not len(rows):
                continue
            items = self.domain_items[d]
            if len(items) > c.candidate_pool:
                items = np.sort(rng.choice(items, c.candidate_pool, replace=False))
            M = len(items)
            col_of[items] = np.arange(M)
            # items this block's users already got in earlier domains (no repeats per user)
            if picked_user:
                prev_u, prev_i = np.concatenate(picked_user), np.concatenate(picked_item)
            else:
                prev_u = prev_i = np.zeros(0, np.int64)
            row_of = np.full(n, -1, dtype=np.int64)
            row_of[rows] = np.arange(len(rows))
            vec_t = self.item_vec[items].T / np.float32(c.temperature)
            base = self.base_logit[d, items]
            price = np.float32(c.price_affinity) * self.price_z[items]
            step = max(1, _MAX_CELLS // M)
            for lo in range(0, len(rows), step):
                r = rows[lo:lo + step]
                logits = ub.interest[r, d] @ vec_t
                logits += base
                logits += ub.purchase_power[r, None].astype(np.float32) * price
                if len(prev_u):
                    sel = (row_of[prev_u] >= lo) & (row_of[prev_u] < lo + len(r))
                    pc_ = col_of[prev_i[sel]]
                    ok = pc_ >= 0
                    logits[row_of[prev_u[sel]][ok] - lo, pc_[ok]] = -np.inf
                # Gumbel-top-k: sampling without replacement from the softmax
                e = rng.standard_exponential(logits.shape, dtype=np.float32)
                logits -= np.log(np.maximum(e, np.float32(1e-30), out=e), out=e)
                want = np.minimum(counts[r, d], M)
                K = int(want.max())
                if K < M:
                    top = np.argpartition(-logits, K - 1, axis=1)[:, :K]
                else:
                    top = np.broadcast_to(np.arange(M), (len(r), M))
                g = np.take_along_axis(logits, top, axis=1)
                order = np.argsort(-g, axis=1, kind="stable")
                top = np.take_along_axis(top, order, axis=1)
                g = np.take_along_axis(g, order, axis=1)
                keep = (np.arange(K)[None, :] < want[:, None]) & np.isfinite(g)
                picked_user.append(np.broadcast_to(r[:, None], keep.shape)[keep])
                picked_item.append(items[top[keep]])
                picked_dom.append(np.full(int(keep.sum()), d, dtype=np.int64))
            col_of[items] = -1
        if picked_user:
            u = np.concatenate(picked_user)
            it = np.concatenate(picked_item)
            dm = np.concatenate(picked_dom)
        else:
            u = it = dm = np.zeros(0, np.int64)
        # random order within user, then strictly increasing timestamps
        order = np.lexsort((rng.random(len(u)), u))
        u, it, dm = u[order], it[order], dm[order]
        per_user = np.bincount(u, minlength=n)
        start = c.start_time + rng.integers(0, _HORIZON_SECONDS, n)
        gaps = 1 + np.floor(rng.exponential(c.mean_gap_seconds, len(u))).astype(np.int64)
        csum = np.cumsum(gaps)
        before = csum - gaps  # total gap before each row
        first = np.minimum(np.cumsum(per_user) - per_user, max(len(u) - 1, 0))
        ts = start[u] + csum - (np.repeat(before[first], per_user) if len(u) else csum)
        # leave-last-out per user
        last = np.repeat(np.cumsum(per_user) - 1, per_user)
        from_end = last - np.arange(len(u))
        split = np.where(per_user[u] >= 3, np.where(from_end == 0, 2, np.where(from_end == 1, 1, 0)), 0)
        return InteractionChunk(block, ub.keys[u], it.astype(np.int64), dm, ts.astype(np.int64),
                                split.astype(np.int8))

    def chunks(self) -> Iterator[InteractionChunk]:
        for b in range(self.num_blocks):
            yield self.interactions(b)


def _names(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def _draw(rng: np.random.Generator, p: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws from the categorical distribution ``p`` (vectorised inverse CDF)."""
    cdf = np.cumsum(p)
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), len(p) - 1)


def _draw_rows(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """One draw per row of the (unnormalised) weight matrix ``w``."""
    cdf = np.cumsum(w, axis=1)
    u = rng.random(len(w)) * cdf[:, -1]
    return np.minimum((cdf <= u[:, None]).sum(axis=1), w.shape[1] - 1)


# ------------------------------------------------------------------------ API
def resolve_config(preset: str | SyntheticConfig, overrides: dict | None = None
                   ) -> tuple[str, SyntheticConfig]:
    """``(name, config)`` of a preset name or config, with ``overrides`` applied (ValueError for
    an unknown preset or field)."""
    return _resolve(preset, overrides or {})


def _resolve(preset: str | SyntheticConfig, overrides: dict) -> tuple[str, SyntheticConfig]:
    if isinstance(preset, SyntheticConfig):
        name, cfg = "custom", preset
    else:
        if preset not in PRESETS:
            raise ValueError(f"unknown synthetic preset {preset!r}; presets: {sorted(PRESETS)}")
        name, cfg = preset, PRESETS[preset]
    if overrides:
        known = {f.name for f in dataclasses.fields(SyntheticConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown SyntheticConfig parameter(s) {unknown}; known: {sorted(known)}")
        cfg = dataclasses.replace(cfg, **overrides)
    return name, cfg


def generate_chunks(config: SyntheticConfig | str, seed: int = 0) -> Iterator[InteractionChunk]:
    """Yield the raw interactions block by block of ``config.block_users`` users.

    Concatenating the chunks gives exactly the rows :func:`load_synthetic` builds from (same
    config and seed). Feature tables come from ``SyntheticWorld(config, seed).user_table()`` /
    ``.item_table()``."""
    _, cfg = _resolve(config, {})
    yield from SyntheticWorld(cfg, seed).chunks()


def leave_last_out(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """:data:`SPLIT_CODES` of rows by the generator's rule, which is the sources' ``--split last``
    (:func:`adirec.data.sources.rows.split_codes`): per user, in time order, the last row is test
    and the second last valid, when the user has at least 3 rows (else all train)."""
    from adirec.data.sources.rows import Rows, SplitRule, split_codes
    n = len(user)
    # a user's generated times are strictly increasing, so no tie needs the item to break it
    rows = Rows(user, np.zeros(n, np.int64), np.zeros(n, np.int64), np.ones(n, np.float32), timestamp,
                np.arange(n))
    return split_codes("synthetic", rows, SplitRule.parse("last"), None)


def load_synthetic(preset: str | SyntheticConfig = "default", *, seed: int = 0,
                   domains: list[str] | None = None, history_len: int = 50, **overrides) -> MultiDomainData:
    """Generate a synthetic multi-domain data set.

    Args:
        preset: a name in :data:`PRESETS` (``tiny``, ``small``, ``default``, ``large``, ``xl``)
            or a :class:`SyntheticConfig`.
        seed: random seed (same seed, config and ``block_users`` -> identical data).
        domains: keep these domains, in this order (``--domains``): the other domains'
            interactions are dropped before the split, which is then made again on what is left.
        history_len: length of the behaviour-history fields.
        **overrides: any :class:`SyntheticConfig` field, replacing the preset's value.
    """
    from adirec.data.sources.rows import count, domain_remap
    name, cfg = _resolve(preset, overrides)
    world = SyntheticWorld(cfg, seed)
    rows = InteractionChunk.concat(list(world.chunks()))
    meta: dict = {"source": "synthetic", "preset": name, "seed": int(seed), "config": cfg.to_dict()}
    names, dense = cfg.domains, world.item_domain_dense() if cfg.item_domain_dense else None
    if domains is not None:
        remap = domain_remap(f"synthetic-{name}", names, list(domains))
        new_domain = remap[rows.domain]
        kept = np.flatnonzero(new_domain >= 0)
        count(meta, "outside_domains", len(rows) - len(kept))
        rows = InteractionChunk(rows.block, rows.user[kept], rows.item[kept], new_domain[kept],
                                rows.timestamp[kept], leave_last_out(rows.user[kept], rows.timestamp[kept]))
        if dense is not None:
            kept_old = [names.index(d) for d in domains]
            dense = {k: v[kept_old] for k, v in dense.items()}
        names = list(domains)
    parts: dict[str, RawInteractions] = {}
    for s, code in SPLIT_CODES.items():
        m = rows.split == code
        parts[s] = RawInteractions(rows.user[m], rows.item[m], rows.domain[m],
                                   np.ones(int(m.sum()), np.float32), rows.timestamp[m])
    return build_dataset(
        f"synthetic-{name}", names, parts["train"], parts["valid"], parts["test"],
        users=world.user_table(), items=world.item_table(), history_len=history_len,
        item_domain_dense=dense, meta=meta,
    )
