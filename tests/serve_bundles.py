"""Small bundles for the serving tests: synthetic:tiny data and an untrained, seeded model
(nothing is trained, so a bundle takes about a second)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_MODEL = dict(embedding_dim=8, expert_hidden=(16,), expert_out=8, forward_hidden=(8,), output_dim=8)
TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tiny_data(scope: str = "global"):
    """synthetic:tiny; with ``scope="domain"`` its user keys become '<domain>:<id>' (as XMRec's),
    each user keyed by the domain of their first training interaction."""
    from adirec.data.spec import DataSpec
    data = DataSpec(source="synthetic:tiny").load()
    if scope == "domain":
        tr = data.splits["train"]
        first = np.full(data.num_users + 1, -1)
        for u, d in zip(tr.user[::-1], tr.domain[::-1]):
            first[u] = d
        keys = data.user_keys.copy()
        keys[1:] = [f"{data.domains[first[u]]}:{data.user_keys[u]}" for u in range(1, data.num_users + 1)]
        data.user_keys = keys
        data.meta["user_key_scope"] = "domain"
    return data


def tiny_model(data, seed: int = 0):
    from adirec.models.adi import TwoTowerModel
    from adirec.models.config import TwoTowerConfig
    torch.manual_seed(seed)
    return TwoTowerModel(data.schema, data.num_domains, TwoTowerConfig(**TINY_MODEL)).eval()


def tiny_bundle(out: Path, scope: str = "global", **kw) -> tuple[Path, object, object]:
    """(bundle path, model, data) of an untrained model on synthetic:tiny."""
    from adirec.serve.bundle import write_bundle
    data = tiny_data(scope)
    model = tiny_model(data)
    write_bundle(out, model, data, model_name="adi-se", **kw)
    return Path(out), model, data
