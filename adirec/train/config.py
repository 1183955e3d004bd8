"""Training configuration: :class:`TrainConfig` and its self-training part
:class:`SelfTrainingConfig` (Algorithm 1). Plain dataclasses, validated on construction, importable
by every layer that builds or records a run."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field as dc_field

from adirec.extras import MissingExtra, require
from adirec.options import option


def _finite(name: str, value, low: float | None = None, *, strict: bool = True) -> None:
    """Raise ValueError unless ``value`` is a finite number (above ``low``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value!r}")


def _int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class SelfTrainingConfig:
    """Cross-domain self-training (Algorithm 1); the flags are ``--st-*``."""

    enabled: bool = option(True, "train with cross-domain pseudo-labels (Algorithm 1)", flag="--self-training")
    start_epoch: int = option(1, "first epoch (0-based) that uses pseudo-labels", flag="--st-start-epoch")
    p0: float = option(0.02, "fraction of candidates kept as pseudo-positives at the start epoch",
                       flag="--st-p0")
    delta_p: float = option(0.02, "growth of that fraction per epoch", flag="--st-delta-p")
    max_p: float = option(0.1, "ceiling of the fraction", flag="--st-max-p")
    weight: float = option(0.5, "loss weight of a pseudo-labelled sample (real samples weigh 1)",
                           flag="--st-weight")

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ValueError(f"self-training enabled must be true or false, got {self.enabled!r}")
        for name in ("p0", "delta_p", "max_p"):
            _finite(f"self-training {name}", getattr(self, name))
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"self-training {name} must be in [0, 1], got {getattr(self, name)}")
        _int("self-training start_epoch", self.start_epoch, 0)
        _finite("self-training weight", self.weight, 0.0, strict=False)

    def fraction(self, epoch: int) -> float:
        """p for ``epoch`` (0 when disabled or before ``start_epoch``)."""
        if not self.enabled or epoch < self.start_epoch:
            return 0.0
        return min(self.max_p, self.p0 + self.delta_p * (epoch - self.start_epoch))


PROPOSALS = ("unigram", "uniform")
SOFTMAXES = ("auto", "full", "sampled")
LR_SCHEDULES = ("constant", "cosine")
BATCHINGS = ("auto", "rows", "sequences")
DOMAIN_WEIGHTINGS = ("none", "balanced")
# --batch-size auto: a batch of sequences holds every position of a few dozen users, so it needs
# more positions per step than a batch of independent rows for the same number of users per step
AUTO_BATCH_SIZE = {"rows": 1024, "sequences": 8192}


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None


def lr_factor(schedule: str, progress: float) -> float:
    """The learning rate's multiplier after ``progress`` (0 to 1) of the planned epochs:
    1 for ``constant``; ``(1 + cos(pi * progress)) / 2`` for ``cosine``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {schedule!r}")


def resolve_batch_size(batch_size: int | str, *, sequences: bool) -> int:
    """The interactions per step a run uses: ``batch_size``, or for ``auto`` the size of
    :data:`AUTO_BATCH_SIZE` for how the run batches (by sequences or by rows)."""
    if batch_size == "auto":
        return AUTO_BATCH_SIZE["sequences" if sequences else "rows"]
    assert isinstance(batch_size, int)
    return batch_size


def _tensorboard_dir(text: str) -> str:
    """``--tensorboard DIR``: refused at once, not after the first epoch, when TensorBoard is missing."""
    try:
        require("tensorboard", "--tensorboard")
    except MissingExtra as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


@dataclass
class TrainConfig:
    """How a model is trained. Every field has a flag of ``adirec train`` / ``bench``."""

    epochs: int = option(20, "maximum passes over the training split")
    batch_size: int | str = option(1024, "interactions per step (all domains mixed); auto: "
                                   f"{AUTO_BATCH_SIZE['sequences']:,} when batching by sequences, "
                                   f"{AUTO_BATCH_SIZE['rows']:,} when batching by rows (adi-plus, dnn-plus)",
                                   parse=_batch_size, metavar="N|auto")
    lr: float = option(3e-3, "Adam learning rate")
    lr_schedule: str = option("constant", "constant: --lr throughout; cosine: the rate falls from --lr along a "
                              "half cosine to 0 at the end of the last of --epochs (a run stopped early "
                              "stops on the way down)", choices=LR_SCHEDULES)
    weight_decay: float = option(0.0, "L2 penalty of Adam, on every parameter (SparseAdam tables: none)")
    num_negatives: int = option(1024, "extra negatives drawn from the proposal per step, shared by the batch",
                                flag="--negatives")
    proposal: str = option("unigram", "proposal Q of the sampled negatives: unigram (counts^alpha) or "
                           "uniform over training items", choices=PROPOSALS)
    proposal_alpha: float = option(0.75, "exponent alpha of the unigram proposal")
    temperature: float = option(0.1, "softmax temperature on the scores (cosine scores need < 1)")
    corpus_negatives_only: bool = option(
        True, "a row of domain d has as negatives only items of d's corpus (its domain's softmax); "
        "off, every row's softmax runs over every domain's items (dnn-blind), sampled or full; "
        "the logQ correction is unchanged: it describes how the columns were drawn")
    softmax: str = option("sampled", "sampled: in-batch + sampled negatives with logQ correction (eq. 4-5, the "
                          "paper's training); full: each row against its domain's whole corpus (eq. 2-3); auto: "
                          "full when the corpora hold at most --full-softmax-max-items items together, else "
                          "sampled (adi-plus, dnn-plus)", choices=SOFTMAXES)
    full_softmax_max_items: int = option(20_000, "the largest total corpus size that auto trains with the full "
                                         "softmax")
    batching: str = option("auto", "rows: batches of interactions; sequences: batches of users' time-ordered "
                           "sequences, every position a row, each history encoded once per batch; auto: "
                           "sequences for an order-aware history encoder on data with time, unless the run "
                           "self-trains (Algorithm 1 labels rows) or streams its rows", choices=BATCHINGS)
    domain_weighting: str = option("none", "none: every training row weighs the same, so a domain counts in "
                                   "the loss by its rows; balanced: each domain's rows weigh N / (D N_d) (N_d "
                                   "its rows, or their summed weights), so every domain counts the same, as in "
                                   "the unweighted mean over domains of the tables",
                                   choices=DOMAIN_WEIGHTINGS)
    self_training: SelfTrainingConfig = dc_field(default_factory=SelfTrainingConfig)
    early_stopping_metric: str | None = option(
        None, "validation metric (mean over domains) to stop on; default recall@10 on candidate lists "
        "(sampled), recall@50 on full rankings")
    patience: int = option(3, "epochs without improvement before stopping; 0 = never stop early")
    holdout_fraction: float = option(0.1, "when the reported split is the only validation data, the "
                                     "fraction of users whose last training positive is held out to validate on")
    eval_ks: tuple[int, ...] = option((10, 50), "cut-offs computed during validation")
    seed: int = option(0, "seeds data order, negatives, initialisation and the hold-out")
    num_threads: int | None = option(None, "torch intra-op threads (default: one per CPU not already busy, "
                                     "see benchmarks/README.md, Threads)", flag="--threads")
    device: str = option("auto", "auto (this process's GPU when CUDA is available, cuda:LOCAL_RANK "
                         "under torchrun, else the CPU), cpu, cuda or cuda:N")
    progress: bool = option(True, "progress bars and one line per epoch")
    tensorboard: str | None = option(None, "also write the per-epoch curves (loss, every validation metric, "
                                     "samples/s) as TensorBoard scalars into DIR; needs adirec[tensorboard]",
                                     metavar="DIR", parse=_tensorboard_dir)

    def __post_init__(self) -> None:
        if isinstance(self.self_training, dict):
            self.self_training = SelfTrainingConfig(**self.self_training)
        self.eval_ks = tuple(self.eval_ks)
        if not self.eval_ks:
            raise ValueError("eval_ks must hold at least one cut-off")
        for k in self.eval_ks:
            _int("eval_ks", k, 1)
        _int("epochs", self.epochs, 1)
        if self.batch_size != "auto":
            _int("batch_size (or auto)", self.batch_size, 1)
        _int("num_negatives", self.num_negatives, 0)
        _int("patience", self.patience, 0)
        _int("seed", self.seed, 0)
        if self.num_threads is not None:
            _int("num_threads", self.num_threads, 1)
        _finite("lr", self.lr, 0.0)
        _finite("temperature", self.temperature, 0.0)
        _finite("weight_decay", self.weight_decay, 0.0, strict=False)
        _finite("proposal_alpha", self.proposal_alpha)
        if not 0.0 <= self.proposal_alpha <= 1.0:
            raise ValueError(f"proposal_alpha must be in [0, 1], got {self.proposal_alpha}")
        _int("full_softmax_max_items", self.full_softmax_max_items, 0)
        if self.softmax not in SOFTMAXES:
            raise ValueError(f"softmax must be one of {SOFTMAXES}, got {self.softmax!r}")
        if self.batching not in BATCHINGS:
            raise ValueError(f"batching must be one of {BATCHINGS}, got {self.batching!r}")
        if self.domain_weighting not in DOMAIN_WEIGHTINGS:
            raise ValueError(f"domain_weighting must be one of {DOMAIN_WEIGHTINGS}, got {self.domain_weighting!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        _finite("holdout_fraction", self.holdout_fraction)
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("corpus_negatives_only", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.tensorboard is not None and (not isinstance(self.tensorboard, str) or not self.tensorboard.strip()):
            raise ValueError(f"tensorboard must be a directory or None, got {self.tensorboard!r}")
        if self.early_stopping_metric is not None:
            name, _, cutoff = str(self.early_stopping_metric).partition("@")
            if name not in ("recall", "ndcg") or not cutoff.isdigit() or int(cutoff) < 1:
                raise ValueError(f"early_stopping_metric must look like recall@50 or ndcg@10, "
                                 f"got {self.early_stopping_metric!r}")
