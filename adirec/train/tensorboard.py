"""Per-epoch training curves for TensorBoard, written beside ``metrics.jsonl`` when
``TrainConfig.tensorboard`` (``--tensorboard DIR``) names a directory.

Each epoch's row of ``metrics.jsonl`` becomes scalars at step = epoch: ``train/<name>`` for every
number of the row (loss, samples per second, seconds, self-training counts) and
``valid/<metric>/<domain>`` for every validation metric per domain and its ``mean``. TensorBoard
allows letters, digits, ``_``, ``-``, ``.`` and ``/`` in a tag, so ``recall@10`` is written
``recall_at_10``. Every epoch opens, writes and closes its own event file, so the curves of an
epoch are on disk as soon as it ends and a resumed run adds to them.
"""
from __future__ import annotations

from pathlib import Path

from adirec.extras import require


def scalars(row: dict) -> dict[str, float]:
    """The tag -> value pairs of one epoch's row (without its ``epoch``)."""
    out: dict[str, float] = {}
    for name, value in row.items():
        if name == "valid":
            for metric, per_domain in value.items():
                for domain, v in per_domain.items():
                    out[f"valid/{_tag(metric)}/{_tag(domain)}"] = float(v)
        elif name != "epoch" and not name.startswith("valid_") and _is_number(value):
            out[f"train/{_tag(name)}"] = float(value)  # valid_<metric> repeats a valid/.../mean
    return out


class TensorBoardCurves:
    """Writes epoch rows as TensorBoard scalars into ``directory`` (created when missing)."""

    def __init__(self, directory: str | Path):
        require("tensorboard", "--tensorboard")
        self.directory = Path(directory)

    def write(self, row: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=str(self.directory))
        try:
            for tag, value in scalars(row).items():
                writer.add_scalar(tag, value, global_step=int(row["epoch"]))
        finally:
            writer.close()


def _tag(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./" else "_" for c in name.replace("@", "_at_"))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
