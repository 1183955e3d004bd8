from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(name: str) -> Path:
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (see README: getting the data)")
    return path


@pytest.fixture
def tiny_raw():
    """A hand-made two-domain data set small enough to check by eye."""
    from adirec.data.build import RawColumn, RawInteractions, RawTable
    #          user  item  domain  time
    rows = [("u1", "a", 0, 1), ("u1", "b", 0, 2), ("u1", "c", 1, 3), ("u1", "d", 0, 4),
            ("u2", "a", 1, 1), ("u2", "c", 1, 2), ("u2", "e", 1, 3),
            ("u3", "b", 0, 1), ("u3", "d", 0, 2), ("u3", "e", 1, 3), ("u3", "a", 0, 5)]
    u, i, d, t = (np.array([r[k] for r in rows], dtype=object if k < 2 else np.int64) for k in range(4))
    train = RawInteractions(u, i, d, timestamp=t)
    test = RawInteractions(np.array(["u1", "u2", "u9"], dtype=object), np.array(["e", "b", "a"], dtype=object),
                           np.array([1, 1, 0]))
    users = RawTable(np.array(["u1", "u2", "u3", "u4"], dtype=object),
                     {"gender": RawColumn("categorical", np.array(["f", "m", "f", "x"], dtype=object)),
                      "spend": RawColumn("dense", np.array([1.0, 2.0, 3.0, 100.0]))})
    items = RawTable(np.array(["a", "b", "c", "d", "e"], dtype=object),
                     {"tags": RawColumn("sequence", [["x", "y"], ["y"], [], ["z", "x", "y"], ["w"]], max_len=2)})
    return dict(train=train, test=test, users=users, items=items)
