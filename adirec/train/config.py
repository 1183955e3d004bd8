"""Training configuration: :class:`TrainConfig` and its self-training part
:class:`SelfTrainingConfig` (Algorithm 1). Plain dataclasses, validated on construction, importable
by every layer that builds or records a run."""
from __future__ import annotations

from dataclasses import dataclass, field as dc_field


@dataclass
class SelfTrainingConfig:
    """Attributes:
        enabled: add pseudo-labelled samples to the loss.
        start_epoch: first epoch (0-based) that uses pseudo-labels.
        p0: fraction of candidate samples kept as pseudo-positives at ``start_epoch``.
        delta_p: growth of that fraction per epoch.
        max_p: ceiling of the fraction.
        weight: weight of a pseudo-labelled sample in the loss (real samples weigh 1).
    """

    enabled: bool = True
    start_epoch: int = 1
    p0: float = 0.02
    delta_p: float = 0.02
    max_p: float = 0.1
    weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("p0", "delta_p", "max_p"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"self-training {name} must be in [0, 1], got {v}")
        if self.start_epoch < 0:
            raise ValueError(f"self-training start_epoch must be >= 0, got {self.start_epoch}")
        if self.weight < 0:
            raise ValueError(f"self-training weight must be >= 0, got {self.weight}")

    def fraction(self, epoch: int) -> float:
        """p for ``epoch`` (0 when disabled or before ``start_epoch``)."""
        if not self.enabled or epoch < self.start_epoch:
            return 0.0
        return min(self.max_p, self.p0 + self.delta_p * (epoch - self.start_epoch))


@dataclass
class TrainConfig:
    """Attributes:
        epochs: maximum number of passes over the training split.
        batch_size: interactions per step (all domains mixed).
        lr: Adam learning rate.
        weight_decay: L2 penalty of Adam (applied to every parameter).
        num_negatives: extra negatives drawn from the proposal per step, shared by the batch.
        proposal: ``"unigram"`` (counts^alpha) or ``"uniform"`` over training items.
        proposal_alpha: exponent of the unigram proposal.
        temperature: softmax temperature applied to the scores (cosine scores need < 1).
        corpus_negatives_only: for a row of domain d, mask the negative columns whose item is not
            in d's corpus, so that each domain's softmax runs over what that domain serves (the
            logQ correction is unchanged: it describes how the columns were drawn).
        self_training: pseudo-label settings (Algorithm 1).
        early_stopping_metric: metric (averaged over domains) watched on the validation split;
            None = ``recall@10`` when validating on candidate lists (``sampled``, where deeper
            cut-offs saturate), ``recall@50`` on full rankings.
        patience: epochs without improvement before stopping; 0 disables early stopping.
        holdout_fraction: when no separate validation split exists, the fraction of users whose
            last training positive is held out to validate on.
        eval_ks: cut-offs computed during validation.
        seed: seeds data order, negatives, initialisation and the hold-out.
        num_threads: torch intra-op threads (None leaves torch's default).
        device: where the model trains: ``"auto"`` (this process's GPU when CUDA is available,
            ``cuda:LOCAL_RANK`` under torchrun, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"`` (see :func:`adirec.train.distributed.resolve_device`). Feature lookups
            stay on the host; each batch's tensors are copied to the device.
        progress: show progress bars.
    """

    epochs: int = 20
    batch_size: int = 1024
    lr: float = 3e-3
    weight_decay: float = 0.0
    num_negatives: int = 1024
    proposal: str = "unigram"
    proposal_alpha: float = 0.75
    temperature: float = 0.1
    corpus_negatives_only: bool = True
    self_training: SelfTrainingConfig = dc_field(default_factory=SelfTrainingConfig)
    early_stopping_metric: str | None = None
    patience: int = 3
    holdout_fraction: float = 0.1
    eval_ks: tuple[int, ...] = (10, 50)
    seed: int = 0
    num_threads: int | None = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.self_training, dict):
            self.self_training = SelfTrainingConfig(**self.self_training)
        self.eval_ks = tuple(int(k) for k in self.eval_ks)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if not isinstance(self.device, str) or not (
                self.device in ("auto", "cpu", "cuda") or
                (self.device.startswith("cuda:") and self.device[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.early_stopping_metric is not None:
            name, _, k = self.early_stopping_metric.partition("@")
            if name not in ("recall", "ndcg") or not k.isdigit() or int(k) < 1:
                raise ValueError(f"early_stopping_metric must look like recall@50 or ndcg@10, "
                                 f"got {self.early_stopping_metric!r}")


