"""Training objectives for the adapter (ALGORITHMS.md §8).

Four terms, each a small ``nn.Module`` that returns a scalar and stays finite on degenerate batches
(one class, no positives, no valid row): a degenerate batch contributes an exact zero that is still
attached to the graph, so a weighted sum of terms can always be back-propagated.

- :class:`ClusterContrastiveLoss` — SpCL-style InfoNCE of each embedding against a momentum memory of
  cluster centroids (pseudo-labels from DBSCAN + NP3).
- :class:`PairContrastiveLoss` — margin loss on the human must-link / cannot-link pairs.
- :class:`UncertaintyAwareContrastiveLoss` — seed 004: weak positives are down-weighted by their
  pair-level uncertainty ``u_ij = max(0, s_ii - s_ij)``.
- :class:`GroupMatchingLoss` — seed 004: cross-entropy over a group of all same-identity candidates
  plus ``K`` hard negatives sampled ∝ ``softmax(s / τ)``.
- :class:`ImageTextContrastiveLoss` — seed 004's uncertainty-aware loss across modalities: each image
  against the distinct captions of its batch, its own caption the strong positive.

Embeddings passed in are expected to be L2-normalised (cosine similarity = dot product).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.defaults import (
    CONTRAST_TEMPERATURE,
    GM_HARD_NEGATIVES,
    MEMORY_MOMENTUM,
    PAIR_MARGIN,
    UA_ALPHA,
)

__all__ = [
    "ClusterContrastiveLoss",
    "GroupMatchingLoss",
    "ImageTextContrastiveLoss",
    "PairContrastiveLoss",
    "UncertaintyAwareContrastiveLoss",
    "zero_loss",
]


def zero_loss(reference: Tensor) -> Tensor:
    """An exact 0 that is part of ``reference``'s graph, so ``backward()`` works and gradients are 0."""
    return reference.sum() * 0.0


def _check_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _check_embeddings(name: str, x: Tensor) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) tensor, got shape {tuple(x.shape)}")


def _check_square_mask(name: str, mask: Tensor | None, n_rows: int, n_cols: int) -> None:
    if mask is not None and tuple(mask.shape) != (n_rows, n_cols):
        raise ValueError(f"{name} must have shape {(n_rows, n_cols)}, got {tuple(mask.shape)}")


class ClusterContrastiveLoss(nn.Module):
    """InfoNCE against a momentum memory of cluster centroids (SpCL / Cluster-Contrast).

    Why a memory: a batch rarely holds two members of one cluster when the pool is large, so the
    positives come from a centroid memory that is refreshed with a momentum after every step
    (``c <- μ c + (1 - μ) mean(batch members)``, re-normalised). Rows labelled ``-1`` are ignored
    here; the trainer decides whether outliers are excluded or become instance entries.
    """

    memory: Tensor

    def __init__(
        self,
        n_clusters: int,
        dim: int,
        *,
        temperature: float = CONTRAST_TEMPERATURE,
        momentum: float = MEMORY_MOMENTUM,
    ) -> None:
        super().__init__()
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters!r}")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        _check_positive("temperature", temperature)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        self.n_clusters = int(n_clusters)
        self.dim = int(dim)
        self.temperature = float(temperature)
        self.momentum = float(momentum)
        self.register_buffer("memory", torch.zeros(self.n_clusters, self.dim))

    def _check_labels(self, embeddings: Tensor, labels: Tensor) -> None:
        _check_embeddings("embeddings", embeddings)
        if embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must have {self.dim} columns, got {embeddings.shape[1]}")
        if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
            raise ValueError(
                f"labels must be 1-D with {embeddings.shape[0]} entries, got shape {tuple(labels.shape)}"
            )
        if labels.numel() and (int(labels.max()) >= self.n_clusters or int(labels.min()) < -1):
            raise ValueError(f"labels must be in -1..{self.n_clusters - 1}")

    @torch.no_grad()
    def initialise(self, embeddings: Tensor, labels: Tensor) -> None:
        """Set every centroid to the normalised mean of its members (clusters with none stay 0)."""
        self._check_labels(embeddings, labels)
        keep = labels >= 0
        sums = torch.zeros_like(self.memory)
        sums.index_add_(0, labels[keep], embeddings[keep].to(sums.dtype))
        self.memory.copy_(F.normalize(sums, dim=1))

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        self._check_labels(embeddings, labels)
        keep = labels >= 0
        if not bool(keep.any()):
            return zero_loss(embeddings)
        logits = embeddings[keep] @ self.memory.t() / self.temperature
        return F.cross_entropy(logits, labels[keep])

    @torch.no_grad()
    def update(self, embeddings: Tensor, labels: Tensor) -> None:
        """Momentum update of the centroids of the clusters present in the batch."""
        self._check_labels(embeddings, labels)
        keep = labels >= 0
        if not bool(keep.any()):
            return
        present, inverse = torch.unique(labels[keep], return_inverse=True)
        sums = torch.zeros(present.shape[0], self.dim, dtype=self.memory.dtype, device=self.memory.device)
        sums.index_add_(0, inverse, embeddings[keep].detach().to(sums.dtype))
        batch_centroids = F.normalize(sums, dim=1)
        mixed = self.momentum * self.memory[present] + (1.0 - self.momentum) * batch_centroids
        self.memory[present] = F.normalize(mixed, dim=1)


class PairContrastiveLoss(nn.Module):
    """Margin loss on human pairs: pull must-links to cosine 1, push cannot-links below ``margin``.

    ``L = mean( same·(1 - s) + (1 - same)·max(0, s - margin) )``: linear terms keep a constant pull on
    the few human pairs we have instead of fading as they approach their target.
    """

    def __init__(self, margin: float = PAIR_MARGIN) -> None:
        super().__init__()
        if not -1.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [-1, 1), got {margin!r}")
        self.margin = float(margin)

    def forward(self, emb_a: Tensor, emb_b: Tensor, same: Tensor) -> Tensor:
        _check_embeddings("emb_a", emb_a)
        _check_embeddings("emb_b", emb_b)
        if emb_a.shape != emb_b.shape:
            raise ValueError(f"emb_a and emb_b must have the same shape, got {emb_a.shape} and {emb_b.shape}")
        if same.ndim != 1 or same.shape[0] != emb_a.shape[0]:
            raise ValueError(f"same must be 1-D with {emb_a.shape[0]} entries, got shape {tuple(same.shape)}")
        if emb_a.shape[0] == 0:
            return zero_loss(emb_a) + zero_loss(emb_b)
        sim = (emb_a * emb_b).sum(dim=1)
        same_f = same.to(sim.dtype)
        per_pair = same_f * (1.0 - sim) + (1.0 - same_f) * F.relu(sim - self.margin)
        return per_pair.mean()


class UncertaintyAwareContrastiveLoss(nn.Module):
    """Seed 004's uncertainty-aware contrastive loss, adapted to image-only Re-ID (ALGORITHMS.md §8).

    Row ``i`` of ``anchors`` and row ``i`` of ``views`` are two views of one image (the "paired view",
    always a strong positive). ``strong[i, j]`` marks further strong positives (human must-links),
    ``weak[i, j]`` weak positives (co-cluster members), ``negatives[i, j]`` forced negatives (cannot-links:
    never a positive, whatever the masks say). With ``s = anchors @ views.T``:

    - ``u_ij = max(0, s_ii - s_ij)`` for weak positives, weight ``w_ij = exp(-u_ij)`` (detached); strong
      positives weigh 1;
    - ``L_i = -Σ_j w_ij log softmax_j(s_i / τ) / Σ_j w_ij`` (multi-positive InfoNCE over all views);
    - plus ``α · mean(u_ij)`` over weak positives. **[ours]** ``s_ii`` is detached inside the regulariser,
      so it pulls weak positives towards the paired-view similarity and never pushes the two views apart.

    ``paired_weight`` weighs the paired view as a positive (1 = the paper's strong pair). **[ours]** On
    frozen features the second view is only feature noise, so that positive is trivial and mostly
    teaches instance discrimination (spreading each identity); ``paired_weight=0`` keeps ``s_ii`` as the
    uncertainty reference but drops the paired view from the softmax, and anchors left without a
    positive are skipped.
    """

    def __init__(
        self, temperature: float = CONTRAST_TEMPERATURE, alpha: float = UA_ALPHA, paired_weight: float = 1.0
    ) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if paired_weight < 0:
            raise ValueError(f"paired_weight must be >= 0, got {paired_weight!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.paired_weight = float(paired_weight)

    def forward(
        self,
        anchors: Tensor,
        views: Tensor,
        strong: Tensor | None = None,
        weak: Tensor | None = None,
        negatives: Tensor | None = None,
    ) -> Tensor:
        _check_embeddings("anchors", anchors)
        _check_embeddings("views", views)
        if anchors.shape != views.shape:
            raise ValueError(
                f"anchors and views must have the same shape, got {anchors.shape} and {views.shape}"
            )
        n = anchors.shape[0]
        for name, mask in (("strong", strong), ("weak", weak), ("negatives", negatives)):
            _check_square_mask(name, mask, n, n)
        if n == 0:
            return zero_loss(anchors) + zero_loss(views)
        eye = torch.eye(n, dtype=torch.bool, device=anchors.device)
        strong_m = eye if strong is None else (strong.bool() | eye)
        weak_m = torch.zeros_like(eye) if weak is None else weak.bool()
        if negatives is not None:
            forced = negatives.bool() & ~eye
            strong_m = strong_m & ~forced
            weak_m = weak_m & ~forced
        weak_m = weak_m & ~strong_m

        sim = anchors @ views.t()
        diag = sim.diagonal().unsqueeze(1)
        uncertainty = F.relu(diag - sim)
        weights = torch.where(strong_m, torch.ones_like(sim), torch.exp(-uncertainty).detach())
        weights = weights * (strong_m | weak_m).to(sim.dtype)
        weights = torch.where(eye, torch.full_like(sim, self.paired_weight), weights)
        logits = sim / self.temperature
        if self.paired_weight == 0:
            logits = logits.masked_fill(eye, float("-inf"))
        valid = weights.sum(dim=1) > 0
        if not bool(valid.any()):
            return zero_loss(anchors) + zero_loss(views)
        log_prob = F.log_softmax(logits[valid], dim=1)
        w = weights[valid]
        terms = torch.where(w > 0, w * log_prob, torch.zeros_like(log_prob))
        loss = (-terms.sum(dim=1) / w.sum(dim=1)).mean()
        if self.alpha > 0 and bool(weak_m.any()):
            reg = F.relu(diag.detach() - sim)[weak_m].mean()
            loss = loss + self.alpha * reg
        return loss


class GroupMatchingLoss(nn.Module):
    """Seed 004's group-wise matching loss with sampled hard negatives (ALGORITHMS.md §8).

    For anchor ``i`` the group is every candidate ``j`` with ``same[i, j]`` (label 1) plus ``K`` hard
    negatives drawn without replacement ∝ ``softmax(s_ij / τ)`` over the candidates of other identities
    (label 0), plus every forced negative (cannot-link) present. The loss is the cross-entropy of the
    softmax over the group, averaged over its positives. Sampling uses Gumbel top-k keys from the
    caller's ``generator``, so a seeded run draws the same negatives. Anchors with no positive or no
    negative in their group carry no signal and are skipped.
    """

    def __init__(
        self, hard_negatives: int = GM_HARD_NEGATIVES, temperature: float = CONTRAST_TEMPERATURE
    ) -> None:
        super().__init__()
        if hard_negatives < 1:
            raise ValueError(f"hard_negatives must be >= 1, got {hard_negatives!r}")
        _check_positive("temperature", temperature)
        self.hard_negatives = int(hard_negatives)
        self.temperature = float(temperature)

    def sample_negatives(self, sim: Tensor, same: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Boolean mask of the sampled hard negatives (at most ``K`` per row, only among ``~same``)."""
        n_rows, n_cols = sim.shape
        allowed = ~same
        k = min(self.hard_negatives, n_cols)
        if k == 0 or n_rows == 0:
            return torch.zeros_like(allowed)
        uniform = torch.rand(sim.shape, generator=generator, dtype=torch.float64, device="cpu")
        gumbel = (-torch.log(-torch.log(uniform.clamp_min(1e-300)))).to(sim.device)
        keys = sim.detach().double() / self.temperature + gumbel
        keys = keys.masked_fill(~allowed, float("-inf"))
        top = keys.topk(k, dim=1).indices
        picked = torch.zeros_like(allowed)
        picked.scatter_(1, top, True)
        return picked & allowed

    def forward(
        self,
        anchors: Tensor,
        candidates: Tensor,
        same: Tensor,
        negatives: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        _check_embeddings("anchors", anchors)
        _check_embeddings("candidates", candidates)
        if anchors.shape[1] != candidates.shape[1]:
            raise ValueError(
                "anchors and candidates must have the same width, "
                f"got {anchors.shape[1]} and {candidates.shape[1]}"
            )
        n_rows, n_cols = anchors.shape[0], candidates.shape[0]
        _check_square_mask("same", same, n_rows, n_cols)
        _check_square_mask("negatives", negatives, n_rows, n_cols)
        if n_rows == 0 or n_cols == 0:
            return zero_loss(anchors) + zero_loss(candidates)
        same_m = same.bool()
        forced = torch.zeros_like(same_m) if negatives is None else negatives.bool()
        same_m = same_m & ~forced
        sim = anchors @ candidates.t()
        group_neg = self.sample_negatives(sim, same_m | forced, generator) | forced
        group = same_m | group_neg
        valid = same_m.any(dim=1) & group_neg.any(dim=1)
        if not bool(valid.any()):
            return zero_loss(anchors) + zero_loss(candidates)
        logits = (sim / self.temperature).masked_fill(~group, float("-inf"))
        log_prob = F.log_softmax(logits[valid], dim=1)
        pos = same_m[valid]
        per_anchor = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / pos.sum(dim=1)
        return per_anchor.mean()


class ImageTextContrastiveLoss(nn.Module):
    """Seed 004's uncertainty-aware contrastive loss between images and captions (ALGORITHMS.md §8).

    ``captions`` are the *distinct* caption embeddings of a batch: attribute captions ("red jacket,
    backpack") are shared by many individuals, so a copy of an image's own caption must not count as a
    negative of it. ``own[i]`` indexes image ``i``'s caption (the strong positive); ``weak[i, c]`` marks
    captions of images believed to be the same individual (weight ``exp(-u_ic)``, ``u_ic = max(0,
    s_i,own - s_ic)``, detached, plus ``α · mean(u)``); every other caption is a negative.
    """

    def __init__(self, temperature: float = CONTRAST_TEMPERATURE, alpha: float = UA_ALPHA) -> None:
        super().__init__()
        _check_positive("temperature", temperature)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.temperature = float(temperature)
        self.alpha = float(alpha)

    def forward(self, images: Tensor, captions: Tensor, own: Tensor, weak: Tensor | None = None) -> Tensor:
        _check_embeddings("images", images)
        _check_embeddings("captions", captions)
        if images.shape[1] != captions.shape[1]:
            raise ValueError(f"images and captions must have the same width, got {images.shape[1]} and "
                             f"{captions.shape[1]}")
        n, m = images.shape[0], captions.shape[0]
        if own.shape != (n,) or (n and (int(own.min()) < 0 or int(own.max()) >= m)):
            raise ValueError(f"own must hold one caption index in [0, {m}) per image")
        _check_square_mask("weak", weak, n, m)
        if n == 0:
            return zero_loss(images) + zero_loss(captions)
        strong = torch.zeros(n, m, dtype=torch.bool, device=images.device)
        strong[torch.arange(n, device=images.device), own] = True
        weak_m = torch.zeros_like(strong) if weak is None else weak.bool() & ~strong
        sim = images @ captions.t()
        paired = sim.gather(1, own.unsqueeze(1))
        uncertainty = F.relu(paired - sim)
        weights = torch.where(strong, torch.ones_like(sim), torch.exp(-uncertainty).detach())
        weights = weights * (strong | weak_m).to(sim.dtype)
        log_prob = F.log_softmax(sim / self.temperature, dim=1)
        loss = (-(weights * log_prob).sum(dim=1) / weights.sum(dim=1)).mean()
        if self.alpha > 0 and bool(weak_m.any()):
            loss = loss + self.alpha * F.relu(paired.detach() - sim)[weak_m].mean()
        return loss
