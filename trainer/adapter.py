# Long on purpose: the adapter, its seeded training loop and the text head share one set of tensors.
"""Adapter training on frozen backbone features (ALGORITHMS.md §8).

A cycle never runs the backbone: it trains a small projection head on the cached features, then
re-embeds the pool through it. The head starts as the identity (``Adapter`` output = the normalised
input): the retraining cycle trains every candidate from there, and ``init_state`` continues from a
saved head (the fine-tuning tools and tests use it).

Training batches (trainer/training.py) are built so that every term sees signal even on a large pool:
anchors and one partner each (a human must-link partner, else a co-cluster member, else a random row).
A second "view" of every row is the frozen feature with feature dropout and Gaussian noise.

Terms (select with ``TrainConfig.terms``; see trainer/losses.py):
``cluster`` SpCL cluster-contrastive loss on the pseudo-labels, centroids re-extracted every epoch and
momentum-updated within it (outliers ``-1`` are **excluded** by
default — ``outliers="instance"`` gives each its own memory entry as SpCL does, at the cost of a memory
row per outlier); ``pair`` margin loss on the human pairs; ``ua`` seed 004 uncertainty-aware
contrastive loss (human must-links strong positives, co-cluster members weak positives, cannot-links
forced negatives); ``gm`` seed 004 group-wise matching loss with ``K`` sampled hard negatives.

Cost per cycle is bounded whatever the pool size: at most ``epochs x max_steps_per_epoch`` steps, and at
most ``max_clusters`` pseudo-identities (answered ones first) in the cluster memory every step scores
against; when that cap bites, anchors are drawn from the kept identities' rows only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from strategies.constraints import must_link_components
from strategies.validation import check_features, check_labels, check_pairs, check_per_item
from trainer.defaults import (
    ADAPTER_HIDDEN_DIM,
    GM_BETA,
    GM_HARD_NEGATIVES,
    MEMORY_MOMENTUM,
    PAIR_MARGIN,
    TRAIN_BATCH_SIZE,
    TRAIN_EPOCHS,
    TRAIN_LR,
    TRAIN_MAX_CLUSTERS,
    TRAIN_PAIRS_PER_BATCH,
    TRAIN_STEPS_PER_EPOCH_MAX,
    TRAIN_TEMPERATURE,
    TRAIN_TERMS,
    TRAIN_TEXT_TERMS,
    TRAIN_TEXT_WEIGHT,
    TRAIN_WEIGHT_DECAY,
    UA_ALPHA,
    UA_PAIRED_WEIGHT,
    VIEW_DROPOUT,
    VIEW_NOISE,
)
from trainer.losses import (
    ClusterContrastiveLoss,
    GroupMatchingLoss,
    ImageTextContrastiveLoss,
    PairContrastiveLoss,
    UncertaintyAwareContrastiveLoss,
)
from trainer.runtime import deterministic, resolve_device, tensor_of
from trainer.training import LOSS_TERMS, BatchBuilder, TermLog, check_training_settings, compact_labels

__all__ = [
    "ADAPTER_KINDS",
    "LOSS_TERMS",
    "STATE_FORMAT",
    "Adapter",
    "TrainConfig",
    "TrainReport",
    "TrainResult",
    "apply_adapter",
    "train_adapter",
]

ADAPTER_KINDS = ("residual_mlp", "linear")
TEXT_TERMS = ("ua", "gm")
STATE_FORMAT = "reid-al-adapter/1"


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


@dataclass
class TrainConfig:
    """Everything one adapter training run needs; defaults from trainer/defaults.py."""

    epochs: int = TRAIN_EPOCHS
    batch_size: int = TRAIN_BATCH_SIZE
    lr: float = TRAIN_LR
    weight_decay: float = TRAIN_WEIGHT_DECAY
    max_steps_per_epoch: int | None = TRAIN_STEPS_PER_EPOCH_MAX  # None: a full pass over the rows
    max_clusters: int | None = TRAIN_MAX_CLUSTERS  # None: learn from every pseudo-identity
    terms: tuple[str, ...] = TRAIN_TERMS
    # seed 004's terms across modalities, used only when text features are given ("ua", "gm")
    text_terms: tuple[str, ...] = TRAIN_TEXT_TERMS
    text_weight: float = TRAIN_TEXT_WEIGHT
    cluster_weight: float = 1.0
    pair_weight: float = 1.0
    ua_weight: float = 1.0
    gm_weight: float = GM_BETA  # β
    temperature: float = TRAIN_TEMPERATURE
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
        self.text_terms = tuple(self.text_terms)
        if any(t not in TEXT_TERMS for t in self.text_terms):
            raise ValueError(f"text_terms must be a subset of {TEXT_TERMS}, got {self.text_terms!r}")
        if not self.text_weight >= 0:
            raise ValueError(f"text_weight must be >= 0, got {self.text_weight!r}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        check_training_settings(self)
        if not 0.0 <= self.view_dropout < 1.0:
            raise ValueError(f"view_dropout must be in [0, 1), got {self.view_dropout!r}")
        if self.max_clusters is not None and self.max_clusters < 1:
            raise ValueError(f"max_clusters must be >= 1 or None, got {self.max_clusters!r}")
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
    clusters: int = 0  # pseudo-identities learned from (at most TrainConfig.max_clusters)
    text_dim: int = 0  # width of the text features the run learned from (0: none)


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
    x = check_features(features, unit_norm="any")
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
            chunk = tensor_of(x[start : start + batch_size]).to(dev)
            out[start : start + batch_size] = model(chunk).cpu().numpy()
    return out


def train_adapter(
    features: np.ndarray,
    pseudo_labels: np.ndarray,
    ml_pairs: Sequence[tuple[int, int]] | np.ndarray | None,
    cl_pairs: Sequence[tuple[int, int]] | np.ndarray | None,
    config: TrainConfig | None = None,
    *,
    init_state: dict[str, Any] | None = None,
    cameras: np.ndarray | None = None,
    text_features: np.ndarray | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train (or continue training, with ``init_state``) the adapter on frozen ``features``.

    ``pseudo_labels``: NP3-refined cluster ids per row, ``-1`` = outlier. ``ml_pairs``/``cl_pairs``: human
    must-link / cannot-link row pairs. ``cameras``: optional camera id per row, used to prefer
    cross-camera co-cluster partners. ``text_features``: optional caption/attribute embedding per row
    (zero rows: no text); with ``config.text_terms`` each image also learns against the distinct captions
    of its batch through a text head that starts as the identity when the widths match (CLIP's shared
    space) and is discarded after training. ``init_state``: a previous :meth:`Adapter.to_state` to continue
    from (its architecture wins over ``config.adapter`` / ``config.hidden_dim``). A fixed ``config.seed``
    gives bit-identical results on CPU (same thread count).
    """
    config = TrainConfig() if config is None else config
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    x_np = check_features(features, unit_norm="any", min_rows=2)
    n, d = x_np.shape
    labels = check_labels(pseudo_labels, "pseudo_labels", n)
    ml = check_pairs(ml_pairs, n, "ml_pairs")
    cl = check_pairs(cl_pairs, n, "cl_pairs")
    cams = check_per_item(cameras, n, "cameras")
    texts = None
    if text_features is not None:
        texts = check_features(text_features, "text_features", unit_norm="any", rows=n, allow_zero_rows=True)
        if not config.text_terms or not np.abs(texts).sum(axis=1).any():
            texts = None
    device = resolve_device(config.device)
    started = time.perf_counter()

    with deterministic(config.num_threads):
        gen = torch.Generator().manual_seed(int(config.seed))
        rng = np.random.default_rng(int(config.seed))
        if init_state is not None:
            model = Adapter.from_state(init_state)
            if model.in_dim != d:
                raise ValueError(f"init_state expects {model.in_dim}-d features, got {d}-d")
        else:
            model = Adapter(d, kind=config.adapter, hidden_dim=config.hidden_dim, random_state=config.seed)
        model = model.to(device).train()
        x = tensor_of(x_np).to(device)

        train_labels = compact_labels(labels, config.outliers)
        # rows an epoch walks as anchors: all of them, or only the kept identities' when capped
        anchor_rows: np.ndarray | None = None
        if config.max_clusters is not None and int(train_labels.max()) + 1 > config.max_clusters:
            train_labels = _keep_clusters(train_labels, np.concatenate([ml, cl]).ravel(),
                                          config.max_clusters, rng)
            anchor_rows = np.flatnonzero(train_labels >= 0)
        n_clusters = int(train_labels.max()) + 1
        builder = BatchBuilder(labels, must_link_components(ml, n), ml, cl, cams, rng)
        terms = set(config.terms)
        memory: ClusterContrastiveLoss | None = None
        labels_t = torch.from_numpy(train_labels).to(device)
        labelled_t = torch.from_numpy(np.flatnonzero(train_labels >= 0)).to(device)
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

        params = list(model.parameters())
        text_part: _TextPart | None = None
        if texts is not None:
            text_part = _TextPart(texts, model.out_dim, config, device)
            params += list(text_part.head.parameters())
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        n_anchor = max(1, config.batch_size // 2)
        n_walk = n if anchor_rows is None else anchor_rows.size
        steps = math.ceil(n_walk / n_anchor)
        if config.max_steps_per_epoch is not None:
            steps = min(steps, config.max_steps_per_epoch)
        term_log = TermLog()
        epochs: Any = range(config.epochs)
        if progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="adapter", unit="epoch")
        for _ in epochs:
            if memory is not None:
                # Cluster-Contrast style: centroids re-extracted with the current adapter every epoch,
                # momentum-updated within it (an epoch sees at most max_steps_per_epoch batches, so on a
                # large pool most centroids would otherwise go stale).
                # (only the labelled rows: an outlier's or a dropped identity's row adds nothing)
                with torch.no_grad():
                    memory.initialise(_embed_all(model, x[labelled_t]), labels_t[labelled_t])
            perm = rng.permutation(n) if anchor_rows is None else anchor_rows[rng.permutation(n_walk)]
            term_log.start_epoch((*config.terms, *(text_part.names if text_part else ())))
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
                if text_part is not None:
                    parts.update(text_part.losses(z, rows, builder, gm_loss, gen))
                total = sum(parts.values(), start=z.sum() * 0.0)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                if memory is not None:
                    memory.update(z.detach(), labels_t[rows_t])
                term_log.add(parts, total)
            term_log.end_epoch(steps, epochs)

        state = model.cpu().to_state()
    return TrainResult(
        adapter_state=state,
        losses_per_epoch=term_log.losses,
        seconds=time.perf_counter() - started,
        terms_per_epoch=term_log.epochs,
        steps=term_log.steps,
        device=str(device),
        clusters=n_clusters,
        text_dim=0 if texts is None else int(texts.shape[1]),
    )


class _TextPart:
    """The text side of a run: the head that maps captions into the adapter's space and the seed-004
    terms between each image of a batch and the batch's distinct captions."""

    def __init__(self, texts: np.ndarray, out_dim: int, config: TrainConfig, device: torch.device) -> None:
        self.has_text = np.abs(texts).sum(axis=1) > 0
        # identical rows are one caption: a copy of an image's own caption is never its negative
        self.caption = _row_ids(texts)
        t = texts.shape[1]
        head = nn.Linear(t, out_dim, bias=False)
        with torch.no_grad():
            if t == out_dim:
                head.weight.copy_(torch.eye(out_dim))
            else:
                gen = torch.Generator().manual_seed(int(config.seed) + 1)
                head.weight.copy_(torch.randn(head.weight.shape, generator=gen) / math.sqrt(t))
        self.head = head.to(device).train()
        self.texts = tensor_of(texts).to(device)
        self.device = device
        self.config = config
        self.names = tuple(f"text_{term}" for term in config.text_terms)
        self.contrast = ImageTextContrastiveLoss(config.temperature, config.ua_alpha)

    def losses(self, z: Tensor, rows: np.ndarray, builder: BatchBuilder, gm_loss: GroupMatchingLoss,
               gen: torch.Generator) -> dict[str, Tensor]:
        sel = np.flatnonzero(self.has_text[rows])
        if sel.size == 0:
            return {}
        image_rows = rows[sel]
        caps, first, own = np.unique(self.caption[image_rows], return_index=True, return_inverse=True)
        first_rows = torch.from_numpy(image_rows[first]).to(self.device)
        captions = F.normalize(self.head(self.texts[first_rows]), dim=1)
        strong, weak, negative = builder.masks(image_rows)
        onehot = np.zeros((sel.size, caps.size), dtype=np.int64)
        onehot[np.arange(sel.size), own] = 1
        same = ((strong | weak) & ~negative).astype(np.int64) @ onehot > 0
        forced = (negative.astype(np.int64) @ onehot > 0) & ~same
        zi = z[torch.from_numpy(sel).to(self.device)]
        own_t = torch.from_numpy(own.reshape(-1)).to(self.device)
        cfg = self.config
        out: dict[str, Tensor] = {}
        if "ua" in cfg.text_terms:
            weak_t = torch.from_numpy(same).to(self.device)
            out["text_ua"] = cfg.text_weight * cfg.ua_weight * self.contrast(zi, captions, own_t, weak_t)
        if "gm" in cfg.text_terms:
            same_t = torch.from_numpy(same | (onehot > 0)).to(self.device)
            forced_t = torch.from_numpy(forced).to(self.device)
            gm = gm_loss(zi, captions, same_t, forced_t, generator=gen)
            out["text_gm"] = cfg.text_weight * cfg.gm_weight * gm
        return out


def _row_ids(rows: np.ndarray) -> np.ndarray:
    """Id of each row among the distinct rows, numbered in lexicographic order of the rows (as
    ``np.unique(rows, axis=0, return_inverse=True)`` numbers them, about 25 times faster at 400k rows:
    rows are compared as bytes first, and only the distinct ones are sorted by value)."""
    x = np.ascontiguousarray(rows + 0.0)  # -0.0 and 0.0 are one value
    keys = x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.lexsort(x[first].T[::-1])  # distinct rows by value, first column first
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank[inverse.reshape(-1)]


def _keep_clusters(labels: np.ndarray, answered: np.ndarray, max_clusters: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Compact labels keeping at most ``max_clusters`` clusters: those holding an end of a human answer
    first, then a seeded sample of the rest; rows of the others become ``-1``."""
    n_clusters = int(labels.max()) + 1
    touched = np.unique(labels[answered[labels[answered] >= 0]]) if answered.size else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(n_clusters), touched)
    if touched.size >= max_clusters:
        keep = rng.choice(touched, size=max_clusters, replace=False)
    else:
        keep = np.concatenate([touched, rng.choice(rest, size=max_clusters - touched.size, replace=False)])
    remap = np.full(n_clusters, -1, dtype=np.int64)
    remap[np.sort(keep)] = np.arange(keep.size)
    out = np.where(labels >= 0, remap[np.maximum(labels, 0)], -1)
    return out.astype(np.int64)


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
