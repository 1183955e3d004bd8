"""Declared schema of a multi-domain data set (the paper's Table 1 feature groups).

Every input a tower sees is a :class:`Field`. Fields live on the user side or the item side,
are categorical (one id), a sequence of ids (padded with 0), or dense (a float vector), and may
be *per domain*: a user-domain field (e.g. the user's history within the current domain) or an
item-domain field (e.g. the item's click-through rate in the current domain). Per-domain fields
are resolved to the example's domain by the batch builder, so a tower always receives one value
per field.

Id vocabularies reserve index 0 for padding / out-of-vocabulary; real ids start at 1. Fields
that name the same ``vocab`` share one embedding table (the behaviour history and the target
item both use the ``item_id`` vocabulary).
"""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field

SIDES = ("user", "item")
KINDS = ("categorical", "sequence", "dense")

#: index of padding and of any id not seen in the training split
OOV = 0


@dataclass(frozen=True)
class Field:
    """One input field of a tower.

    Attributes:
        name: unique field name (also the key in feature dicts).
        side: ``"user"`` or ``"item"``.
        kind: ``"categorical"`` (tensor ``(B,)`` long), ``"sequence"`` (``(B, L)`` long, 0 = pad)
            or ``"dense"`` (``(B, dim)`` float).
        vocab: vocabulary name for categorical/sequence fields; defaults to ``name``.
        per_domain: True for user-domain and item-domain fields.
        dim: width of a dense field, or the maximum length ``L`` of a sequence field.
        ordered: a sequence whose items are in time order (a behaviour history on data with
            time), so that an order-aware encoder can read it; False for sets (genres) and for
            histories of data without time (ordered by item id, which means nothing).
    """

    name: str
    side: str
    kind: str
    vocab: str | None = None
    per_domain: bool = False
    dim: int = 1
    ordered: bool = False

    def __post_init__(self) -> None:
        if self.side not in SIDES:
            raise ValueError(f"field {self.name!r}: side must be one of {SIDES}, got {self.side!r}")
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.dim < 1:
            raise ValueError(f"field {self.name!r}: dim must be >= 1, got {self.dim}")
        if self.ordered and self.kind != "sequence":
            raise ValueError(f"field {self.name!r}: only a sequence can be ordered")
        if self.kind == "dense" and self.vocab is not None:
            raise ValueError(f"field {self.name!r}: a dense field has no vocabulary")

    @property
    def vocab_name(self) -> str | None:
        if self.kind == "dense":
            return None
        return self.vocab or self.name

    @property
    def id_vocab(self) -> str:
        """The vocabulary of a categorical or sequence field (:attr:`vocab_name`, for code that
        has already ruled out dense fields)."""
        if self.vocab_name is None:
            raise ValueError(f"field {self.name!r} is dense and has no vocabulary")
        return self.vocab_name


@dataclass
class Schema:
    """All fields of a data set plus the size of each id vocabulary (index 0 included)."""

    fields: list[Field]
    vocab_sizes: dict[str, int] = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate field names in schema: {sorted(dup)}")
        for f in self.fields:
            v = f.vocab_name
            if v is not None and self.vocab_sizes.get(v, 0) < 2:
                raise ValueError(
                    f"field {f.name!r} uses vocabulary {v!r}, which is missing or empty "
                    f"(vocab_sizes={self.vocab_sizes})"
                )

    def side(self, side: str) -> list[Field]:
        return [f for f in self.fields if f.side == side]

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"no field {name!r} in schema; fields: {[f.name for f in self.fields]}")

    def to_dict(self) -> dict:
        return {
            "fields": [f.__dict__.copy() for f in self.fields],
            "vocab_sizes": dict(self.vocab_sizes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Schema:
        return cls([Field(**f) for f in d["fields"]], dict(d["vocab_sizes"]))
