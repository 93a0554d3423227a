"""Adapter training on frozen backbone features (ALGORITHMS.md §8).

A cycle never runs the backbone: it trains a small projection head on the cached features, then
re-embeds the pool through it. The head starts as the identity (``Adapter`` output = the normalised
input), so cycle 0 cannot destroy the frozen embedding, and a warm-started head continues from the
previous cycle's state.

Training batches are built so that every term sees signal even on a large pool: half of a batch are
anchors (an epoch walks a seeded permutation of all rows), the other half one partner per anchor — a
human must-link partner (probability 1/2 when the anchor has one), else a co-cluster member (from
another camera when cameras are known and one is drawn), else a random row. A second "view" of every
row is the frozen feature with feature dropout and Gaussian noise.

Terms (select with ``TrainConfig.terms``; see trainer/losses.py):
``cluster`` SpCL cluster-contrastive loss on the pseudo-labels, centroids re-extracted every epoch and
momentum-updated within it (outliers ``-1`` are **excluded** by
default — ``outliers="instance"`` gives each its own memory entry as SpCL does, at the cost of a memory
row per outlier); ``pair`` margin loss on the human pairs; ``ua`` seed 004 uncertainty-aware
contrastive loss (human must-links strong positives, co-cluster members weak positives, cannot-links
forced negatives); ``gm`` seed 004 group-wise matching loss with ``K`` sampled hard negatives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor, nn

from strategies.defaults import (
    ADAPTER_HIDDEN_DIM,
    CONTRAST_TEMPERATURE,
    GM_BETA,
    GM_HARD_NEGATIVES,
    MEMORY_MOMENTUM,
    PAIR_MARGIN,
    TRAIN_BATCH_SIZE,
    TRAIN_EPOCHS,
    TRAIN_LR,
    TRAIN_PAIRS_PER_BATCH,
    TRAIN_STEPS_PER_EPOCH_MAX,
    TRAIN_WEIGHT_DECAY,
    UA_ALPHA,
    UA_PAIRED_WEIGHT,
    VIEW_DROPOUT,
    VIEW_NOISE,
)
from trainer.losses import (
    ClusterContrastiveLoss,
    GroupMatchingLoss,
    PairContrastiveLoss,
    UncertaintyAwareContrastiveLoss,
)

__all__ = [
    "ADAPTER_KINDS",
    "LOSS_TERMS",
    "STATE_FORMAT",
    "Adapter",
    "TrainConfig",
    "TrainReport",
    "TrainResult",
    "apply_adapter",
    "resolve_device",
    "train_adapter",
]

ADAPTER_KINDS = ("residual_mlp", "linear")
LOSS_TERMS = ("cluster", "pair", "ua", "gm")
OUTLIER_MODES = ("exclude", "instance")
STATE_FORMAT = "reid-al-adapter/1"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; an explicit CUDA request without a GPU is an error."""
    if isinstance(device, torch.device):
        resolved = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"device={str(resolved)!r} was requested but torch sees no CUDA GPU; use 'auto' or 'cpu'"
        )
    return resolved


@contextmanager
def _deterministic(num_threads: int | None = None) -> Iterator[None]:
    """Deterministic kernels (and optionally a thread count) for one run, then restore the caller's.

    Why a thread knob: on a CPU shared by several workers, torch's default of one thread per core
    spins against the other processes; one thread per worker is often several times faster.
    """
    was_enabled = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
        if num_threads is not None:
            torch.set_num_threads(was_threads)


class Adapter(nn.Module):
    """Projection head on frozen features, initialised to the identity, output L2-normalised.

    ``kind="linear"``: ``y = normalise(A x)``, ``A`` starts as the identity (a truncated one when
    ``out_dim != in_dim``). ``kind="residual_mlp"`` adds ``W2 gelu(W1 x + b1) + b2`` with ``W2, b2 = 0``,
    so the output at initialisation is exactly the normalised input while the non-linear branch can
    still learn. Inputs are L2-normalised first, so raw and normalised features give the same output.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int | None = None,
        *,
        kind: str = "residual_mlp",
        hidden_dim: int = ADAPTER_HIDDEN_DIM,
        random_state: int = 0,
    ) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim!r}")
        out_dim = in_dim if out_dim is None else out_dim
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1, got {out_dim!r}")
        if kind not in ADAPTER_KINDS:
            raise ValueError(f"kind must be one of {ADAPTER_KINDS}, got {kind!r}")
        if kind == "residual_mlp" and hidden_dim < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim!r}")
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.kind, self.hidden_dim = kind, int(hidden_dim)
        self.linear = nn.Linear(self.in_dim, self.out_dim, bias=False)
        self.fc1: nn.Linear | None = None
        self.fc2: nn.Linear | None = None
        if kind == "residual_mlp":
            self.fc1 = nn.Linear(self.in_dim, self.hidden_dim)
            self.fc2 = nn.Linear(self.hidden_dim, self.out_dim)
        self.reset_parameters(random_state)

    @torch.no_grad()
    def reset_parameters(self, random_state: int = 0) -> None:
        """Identity start, seeded without touching torch's global RNG."""
        self.linear.weight.copy_(torch.eye(self.out_dim, self.in_dim))
        if self.fc1 is not None and self.fc2 is not None:
            gen = torch.Generator().manual_seed(int(random_state))
            std = 1.0 / math.sqrt(self.in_dim)
            self.fc1.weight.copy_(torch.randn(self.fc1.weight.shape, generator=gen) * std)
            self.fc1.bias.zero_()
            self.fc2.weight.zero_()
            self.fc2.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(x, dim=1)
        y = self.linear(x)
        if self.fc1 is not None and self.fc2 is not None:
            y = y + self.fc2(F.gelu(self.fc1(x)))
        return F.normalize(y, dim=1)

    def to_state(self) -> dict[str, Any]:
        """Weights plus what is needed to rebuild the module; only str/int/tensor leaves, so the
        registry's ``torch.save`` / ``torch.load(weights_only=True)`` round-trips it."""
        return {
            "format": STATE_FORMAT,
            "kind": self.kind,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "hidden_dim": self.hidden_dim,
            "weights": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Adapter:
        """Rebuild an adapter from :meth:`to_state` output (weights may be numpy arrays or tensors)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"state is not an adapter state of format {STATE_FORMAT!r}")
        try:
            adapter = cls(
                int(state["in_dim"]),
                int(state["out_dim"]),
                kind=str(state["kind"]),
                hidden_dim=int(state["hidden_dim"]),
            )
            weights = {k: torch.as_tensor(np.asarray(v)) for k, v in state["weights"].items()}
            adapter.load_state_dict(weights, strict=True)
        except (KeyError, RuntimeError) as exc:
            raise ValueError(f"state is not a loadable adapter state: {exc}") from exc
        return adapter


def check_training_settings(config: Any) -> None:
    """The optimiser and loss fields that TrainConfig and trainer.finetune.FinetuneConfig share, checked
    once here so the two configs cannot drift apart; each message names the field."""
    if config.batch_size < 2:
        raise ValueError(f"batch_size must be >= 2 (anchors + partners), got {config.batch_size!r}")
    if config.max_steps_per_epoch is not None and config.max_steps_per_epoch < 1:
        raise ValueError(f"max_steps_per_epoch must be >= 1 or None, got {config.max_steps_per_epoch!r}")
    for name in ("lr", "temperature"):
        if not getattr(config, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(config, name)!r}")
    for name in ("weight_decay", "cluster_weight", "pair_weight", "ua_weight", "gm_weight", "ua_alpha",
                 "view_noise", "ua_paired_weight"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)!r}")
    if not 0.0 <= config.momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {config.momentum!r}")
    if config.pairs_per_batch < 0:
        raise ValueError(f"pairs_per_batch must be >= 0, got {config.pairs_per_batch!r}")
    unknown = [t for t in config.terms if t not in LOSS_TERMS]
    if unknown or not config.terms:
        raise ValueError(f"terms must be a non-empty subset of {LOSS_TERMS}, got {config.terms!r}")
    if config.outliers not in OUTLIER_MODES:
        raise ValueError(f"outliers must be one of {OUTLIER_MODES}, got {config.outliers!r}")
    if config.num_threads is not None and config.num_threads < 1:
        raise ValueError(f"num_threads must be >= 1 or None, got {config.num_threads!r}")
    if not isinstance(config.device, str) or not config.device:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {config.device!r}")


@dataclass
class TrainConfig:
    """Everything one adapter training run needs; defaults from strategies/defaults.py."""

    epochs: int = TRAIN_EPOCHS
    batch_size: int = TRAIN_BATCH_SIZE
    lr: float = TRAIN_LR
    weight_decay: float = TRAIN_WEIGHT_DECAY
    max_steps_per_epoch: int | None = TRAIN_STEPS_PER_EPOCH_MAX  # None: a full pass over the rows
    terms: tuple[str, ...] = LOSS_TERMS
    cluster_weight: float = 1.0
    pair_weight: float = 1.0
    ua_weight: float = 1.0
    gm_weight: float = GM_BETA  # β
    temperature: float = CONTRAST_TEMPERATURE
    momentum: float = MEMORY_MOMENTUM
    ua_alpha: float = UA_ALPHA  # α
    ua_paired_weight: float = UA_PAIRED_WEIGHT
    hard_negatives: int = GM_HARD_NEGATIVES  # K
    pair_margin: float = PAIR_MARGIN
    pairs_per_batch: int = TRAIN_PAIRS_PER_BATCH
    adapter: str = "residual_mlp"
    hidden_dim: int = ADAPTER_HIDDEN_DIM
    view_noise: float = VIEW_NOISE
    view_dropout: float = VIEW_DROPOUT
    outliers: str = "exclude"
    device: str = "auto"
    seed: int = 0
    num_threads: int | None = None  # CPU threads for this run (None: torch's setting); restored after


    def __post_init__(self) -> None:
        self.terms = tuple(self.terms)
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        check_training_settings(self)
        if not 0.0 <= self.view_dropout < 1.0:
            raise ValueError(f"view_dropout must be in [0, 1), got {self.view_dropout!r}")
        if self.hard_negatives < 1:
            raise ValueError(f"hard_negatives must be >= 1, got {self.hard_negatives!r}")
        if self.adapter not in ADAPTER_KINDS:
            raise ValueError(f"adapter must be one of {ADAPTER_KINDS}, got {self.adapter!r}")


@dataclass
class TrainResult:
    """What a training run returns; ``adapter_state`` feeds :func:`apply_adapter` and the registry."""

    adapter_state: dict[str, Any]
    losses_per_epoch: list[float]
    seconds: float
    terms_per_epoch: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    device: str = "cpu"


TrainReport = TrainResult  # name used in docs/architecture.md


def apply_adapter(
    state: dict[str, Any] | None,
    features: np.ndarray,
    *,
    batch_size: int = 16_384,
    device: str = "auto",
) -> np.ndarray:
    """Embed ``features`` through the adapter in batches, without gradients.

    ``state=None`` means "no adapter yet": the L2-normalised features are returned. The result is an
    L2-normalised ``float32`` array of shape ``(n, out_dim)``.
    """
    x = _as_features(features)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if state is None:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    model = Adapter.from_state(state)
    if model.in_dim != x.shape[1]:
        raise ValueError(f"features have {x.shape[1]} columns but the adapter expects {model.in_dim}")
    dev = resolve_device(device)
    model = model.to(dev).eval()
    out = np.empty((x.shape[0], model.out_dim), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])).to(dev)
            out[start : start + batch_size] = model(chunk).cpu().numpy()
    return out


def _as_features(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"features must be a non-empty 2-D (n, d) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"features must be numeric, got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or inf")
    return x


def _as_pairs(name: str, pairs: Sequence[tuple[int, int]] | np.ndarray | None, n: int) -> np.ndarray:
    if pairs is None:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(pairs, dtype=np.int64) if len(pairs) else np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be a sequence of (i, j) pairs, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ValueError(f"{name} contains a row index outside 0..{n - 1}")
    if np.any(arr[:, 0] == arr[:, 1]):
        raise ValueError(f"{name} contains a self pair (i == j)")
    return arr


def _as_labels(pseudo_labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(pseudo_labels)
    if labels.shape != (n,):
        raise ValueError(f"pseudo_labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"pseudo_labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < -1:
        raise ValueError("pseudo_labels must be >= -1 (-1 = outlier)")
    return labels


def _compact(labels: np.ndarray, outliers: str) -> np.ndarray:
    """Labels -> 0..c-1; outliers stay -1 (``exclude``) or get one fresh id each (``instance``)."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    inliers = labels >= 0
    if inliers.any():
        _, out[inliers] = np.unique(labels[inliers], return_inverse=True)
    if outliers == "instance" and (~inliers).any():
        start = int(out.max()) + 1 if inliers.any() else 0
        out[~inliers] = start + np.arange(int((~inliers).sum()))
    return out


def _components(n: int, ml_pairs: np.ndarray) -> np.ndarray:
    """Must-link component id per row (singletons are their own component)."""
    if ml_pairs.shape[0] == 0:
        return np.arange(n, dtype=np.int64)
    ones = np.ones(ml_pairs.shape[0], dtype=np.int8)
    graph = coo_matrix((ones, (ml_pairs[:, 0], ml_pairs[:, 1])), shape=(n, n)).tocsr()
    _, comp = connected_components(graph, directed=False)
    return comp.astype(np.int64)


class _BatchBuilder:
    """Seeded anchor/partner sampling and the per-batch identity masks."""

    def __init__(
        self,
        labels: np.ndarray,
        comp: np.ndarray,
        ml_pairs: np.ndarray,
        cl_pairs: np.ndarray,
        cameras: np.ndarray | None,
        rng: np.random.Generator,
    ) -> None:
        self.n = labels.shape[0]
        self.labels, self.comp, self.cameras, self.rng = labels, comp, cameras, rng
        inl = np.flatnonzero(labels >= 0)
        self.order = inl[np.argsort(labels[inl], kind="stable")]
        n_lab = int(labels.max()) + 1 if inl.size else 0
        self.counts = np.bincount(labels[inl], minlength=n_lab) if n_lab else np.zeros(0, dtype=np.int64)
        self.starts = (np.cumsum(self.counts) - self.counts).astype(np.int64)
        if ml_pairs.shape[0]:
            both = np.concatenate([ml_pairs, ml_pairs[:, ::-1]])
            both = both[np.lexsort((both[:, 1], both[:, 0]))]
            self.ml_indptr = np.searchsorted(both[:, 0], np.arange(self.n + 1))
            self.ml_indices = both[:, 1]
        else:
            self.ml_indptr = np.zeros(self.n + 1, dtype=np.int64)
            self.ml_indices = np.zeros(0, dtype=np.int64)
        n_comp = int(comp.max()) + 1
        self.n_comp = n_comp
        if cl_pairs.shape[0]:
            ca, cb = comp[cl_pairs[:, 0]], comp[cl_pairs[:, 1]]
            self.cl_keys = np.unique(np.concatenate([ca * n_comp + cb, cb * n_comp + ca]))
        else:
            self.cl_keys = np.zeros(0, dtype=np.int64)

    def partners(self, anchors: np.ndarray, tries: int = 4) -> np.ndarray:
        rng = self.rng
        out = rng.integers(0, self.n, size=anchors.shape[0])
        lab = self.labels[anchors]
        has_cluster = lab >= 0
        if has_cluster.any():
            idx = np.flatnonzero(has_cluster)
            counts = self.counts[lab[idx]]
            offsets = (rng.random((idx.size, tries)) * counts[:, None]).astype(np.int64)
            cand = self.order[self.starts[lab[idx]][:, None] + offsets]
            score = (cand != anchors[idx, None]).astype(np.int64)
            if self.cameras is not None:
                score += 2 * (self.cameras[cand] != self.cameras[anchors[idx], None])
            out[idx] = cand[np.arange(idx.size), np.argmax(score, axis=1)]
        degree = self.ml_indptr[anchors + 1] - self.ml_indptr[anchors]
        use_ml = (degree > 0) & (rng.random(anchors.shape[0]) < 0.5)
        if use_ml.any():
            idx = np.flatnonzero(use_ml)
            pick = (rng.random(idx.size) * degree[idx]).astype(np.int64)
            out[idx] = self.ml_indices[self.ml_indptr[anchors[idx]] + pick]
        return out

    def masks(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(strong, weak, forced-negative) boolean masks over ``rows`` x ``rows``."""
        comp = self.comp[rows]
        strong = comp[:, None] == comp[None, :]
        lab = self.labels[rows]
        weak = (lab[:, None] == lab[None, :]) & (lab[:, None] >= 0) & ~strong
        if self.cl_keys.size:
            keys = comp[:, None] * self.n_comp + comp[None, :]
            negative = np.isin(keys, self.cl_keys)
        else:
            negative = np.zeros_like(strong)
        return strong, weak & ~negative, negative


def train_adapter(
    features: np.ndarray,
    pseudo_labels: np.ndarray,
    ml_pairs: Sequence[tuple[int, int]] | np.ndarray | None,
    cl_pairs: Sequence[tuple[int, int]] | np.ndarray | None,
    config: TrainConfig | None = None,
    *,
    init_state: dict[str, Any] | None = None,
    cameras: np.ndarray | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train (or continue training, with ``init_state``) the adapter on frozen ``features``.

    ``pseudo_labels``: NP3-refined cluster ids per row, ``-1`` = outlier. ``ml_pairs``/``cl_pairs``: human
    must-link / cannot-link row pairs. ``cameras``: optional camera id per row, used to prefer
    cross-camera co-cluster partners. ``init_state``: a previous :meth:`Adapter.to_state` to continue
    from (its architecture wins over ``config.adapter`` / ``config.hidden_dim``). A fixed ``config.seed``
    gives bit-identical results on CPU (same thread count).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    x_np = _as_features(features)
    n, d = x_np.shape
    if n < 2:
        raise ValueError(f"features must have at least 2 rows to train on, got {n}")
    labels = _as_labels(pseudo_labels, n)
    ml = _as_pairs("ml_pairs", ml_pairs, n)
    cl = _as_pairs("cl_pairs", cl_pairs, n)
    cams = None
    if cameras is not None:
        cams = np.asarray(cameras)
        if cams.shape != (n,):
            raise ValueError(f"cameras must have shape ({n},), got {cams.shape}")
    device = resolve_device(config.device)
    started = time.perf_counter()

    with _deterministic(config.num_threads):
        gen = torch.Generator().manual_seed(int(config.seed))
        rng = np.random.default_rng(int(config.seed))
        if init_state is not None:
            model = Adapter.from_state(init_state)
            if model.in_dim != d:
                raise ValueError(f"init_state expects {model.in_dim}-d features, got {d}-d")
        else:
            model = Adapter(d, kind=config.adapter, hidden_dim=config.hidden_dim, random_state=config.seed)
        model = model.to(device).train()
        x = torch.from_numpy(np.ascontiguousarray(x_np)).to(device)

        train_labels = _compact(labels, config.outliers)
        n_clusters = int(train_labels.max()) + 1
        builder = _BatchBuilder(labels, _components(n, ml), ml, cl, cams, rng)
        terms = set(config.terms)
        memory: ClusterContrastiveLoss | None = None
        labels_t = torch.from_numpy(train_labels).to(device)
        if "cluster" in terms and n_clusters >= 1:
            memory = ClusterContrastiveLoss(
                n_clusters, model.out_dim, temperature=config.temperature, momentum=config.momentum
            ).to(device)
        pair_loss = PairContrastiveLoss(config.pair_margin)
        ua_loss = UncertaintyAwareContrastiveLoss(
            config.temperature, config.ua_alpha, paired_weight=config.ua_paired_weight
        )
        gm_loss = GroupMatchingLoss(config.hard_negatives, config.temperature)
        pairs = np.concatenate([ml, cl])
        same = np.concatenate([np.ones(ml.shape[0], bool), np.zeros(cl.shape[0], bool)])
        use_pairs = "pair" in terms and pairs.shape[0] > 0 and config.pairs_per_batch > 0
        need_view = bool(terms & {"ua", "gm"})

        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        n_anchor = max(1, config.batch_size // 2)
        steps = math.ceil(n / n_anchor)
        if config.max_steps_per_epoch is not None:
            steps = min(steps, config.max_steps_per_epoch)
        losses: list[float] = []
        term_log: list[dict[str, float]] = []
        epochs: Any = range(config.epochs)
        if progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="adapter", unit="epoch")
        total_steps = 0
        for _ in epochs:
            if memory is not None:
                # Cluster-Contrast style: centroids re-extracted with the current adapter every epoch,
                # momentum-updated within it (an epoch sees at most max_steps_per_epoch batches, so on a
                # large pool most centroids would otherwise go stale).
                with torch.no_grad():
                    memory.initialise(_embed_all(model, x), labels_t)
            perm = rng.permutation(n)
            sums = {t: 0.0 for t in (*config.terms, "total")}
            for step in range(steps):
                anchors = perm[step * n_anchor : (step + 1) * n_anchor]
                if anchors.size == 0:
                    break
                rows = np.concatenate([anchors, builder.partners(anchors)])
                n_rows = rows.shape[0]
                all_rows = rows
                if use_pairs:
                    n_take = min(config.pairs_per_batch, pairs.shape[0])
                    take = rng.choice(pairs.shape[0], size=n_take, replace=False)
                    all_rows = np.concatenate([rows, pairs[take, 0], pairs[take, 1]])
                rows_t = torch.from_numpy(rows).to(device)
                z_all = model(x[torch.from_numpy(all_rows).to(device)])
                z = z_all[:n_rows]
                parts: dict[str, Tensor] = {}
                if memory is not None:
                    parts["cluster"] = config.cluster_weight * memory(z, labels_t[rows_t])
                if use_pairs:
                    k = take.shape[0]
                    same_t = torch.from_numpy(same[take]).to(device)
                    za, zb = z_all[n_rows : n_rows + k], z_all[n_rows + k :]
                    parts["pair"] = config.pair_weight * pair_loss(za, zb, same_t)
                if need_view:
                    view = model(_augment(x[rows_t], config, gen))
                    strong, weak, negative = (torch.from_numpy(m).to(device) for m in builder.masks(rows))
                    if "ua" in terms:
                        parts["ua"] = config.ua_weight * ua_loss(z, view, strong, weak, negative)
                    if "gm" in terms:
                        gm = gm_loss(z, view, strong | weak, negative, generator=gen)
                        parts["gm"] = config.gm_weight * gm
                total = sum(parts.values(), start=z.sum() * 0.0)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                if memory is not None:
                    memory.update(z.detach(), labels_t[rows_t])
                for name, value in parts.items():
                    sums[name] += float(value.detach())
                sums["total"] += float(total.detach())
                total_steps += 1
            done = max(1, steps)
            epoch_terms = {name: value / done for name, value in sums.items()}
            term_log.append(epoch_terms)
            losses.append(epoch_terms["total"])
            if progress and hasattr(epochs, "set_postfix"):
                epochs.set_postfix(loss=f"{epoch_terms['total']:.4f}")

        state = model.cpu().to_state()
    return TrainResult(
        adapter_state=state,
        losses_per_epoch=losses,
        seconds=time.perf_counter() - started,
        terms_per_epoch=term_log,
        steps=total_steps,
        device=str(device),
    )


def _embed_all(model: Adapter, x: Tensor, batch_size: int = 16_384) -> Tensor:
    return torch.cat([model(x[s : s + batch_size]) for s in range(0, x.shape[0], batch_size)])


def _augment(x: Tensor, config: TrainConfig, gen: torch.Generator) -> Tensor:
    """Second view of frozen features: feature dropout + Gaussian noise, drawn from the seeded generator."""
    out = F.normalize(x, dim=1)
    if config.view_dropout > 0:
        keep = torch.rand(out.shape, generator=gen) >= config.view_dropout
        out = out * keep.to(out.device, out.dtype) / (1.0 - config.view_dropout)
    if config.view_noise > 0:
        out = out + config.view_noise * torch.randn(out.shape, generator=gen).to(out.device, out.dtype)
    return out
