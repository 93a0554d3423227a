"""What adapter training (trainer/adapter.py) and full fine-tuning (trainer/finetune.py) share: the check
of their optimiser and loss fields, the label compaction, and the seeded anchor/partner batch builder.

Batches: half of a batch are anchors (an epoch walks a seeded permutation of all rows), the other half
one partner per anchor: a human must-link partner (probability 1/2 when the anchor has one), else a
co-cluster member (from another camera when cameras are known and one is drawn), else a random row.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "LOSS_TERMS", "OUTLIER_MODES", "BatchBuilder", "TermLog", "check_training_settings", "compact_labels",
]

LOSS_TERMS = ("cluster", "pair", "ua", "gm")
OUTLIER_MODES = ("exclude", "instance")


class TermLog:
    """Each epoch's mean loss terms, summed step by step; both trainings report it as
    ``terms_per_epoch`` (and its totals as ``losses_per_epoch``), so they keep it the same way."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.steps = 0
        self._sums: dict[str, float] = {}

    def start_epoch(self, terms: Any) -> None:
        self._sums = dict.fromkeys((*terms, "total"), 0.0)

    def add(self, parts: dict[str, Any], total: Any) -> None:
        """One step's weighted terms and their sum (tensors; detached here)."""
        for name, value in parts.items():
            self._sums[name] += float(value.detach())
        self._sums["total"] += float(total.detach())
        self.steps += 1

    def end_epoch(self, steps: int, bar: Any = None) -> None:
        """Close the epoch as the mean over its ``steps`` planned steps; ``bar``: a progress bar to show
        the epoch's loss on (anything without ``set_postfix`` is ignored)."""
        done = max(1, steps)
        self.epochs.append({name: value / done for name, value in self._sums.items()})
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{self.epochs[-1]['total']:.4f}")

    @property
    def losses(self) -> list[float]:
        return [terms["total"] for terms in self.epochs]


def check_training_settings(config: Any) -> None:
    """The optimiser and loss fields that TrainConfig and FinetuneConfig share, checked once here so
    the two configs cannot drift apart; each message names the field."""
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


def compact_labels(labels: np.ndarray, outliers: str) -> np.ndarray:
    """Labels -> 0..c-1; outliers stay -1 (``exclude``) or get one fresh id each (``instance``)."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    inliers = labels >= 0
    if inliers.any():
        _, out[inliers] = np.unique(labels[inliers], return_inverse=True)
    if outliers == "instance" and (~inliers).any():
        start = int(out.max()) + 1 if inliers.any() else 0
        out[~inliers] = start + np.arange(int((~inliers).sum()))
    return out


class BatchBuilder:
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
