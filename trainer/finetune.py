"""Full fine-tuning of the encoder's visual tower (the GPU option; ALGORITHMS.md §8 losses).

Why it exists next to the adapter: the adapter (trainer/adapter.py) trains a small head on frozen cached
features, which is cheap enough for every cycle on a CPU. When a GPU is available, training the
backbone itself end to end on the images can move the embedding much further: the same objectives
(cluster-contrastive loss over the NP3 pseudo-labels with a momentum centroid memory, the margin loss on
the human must-link / cannot-link pairs, optionally seed 004's uncertainty-aware and group-matching
terms) are applied to features computed from decoded pixels, and gradients reach every layer of the
visual tower (open_clip: ``model.visual``; MobileNetV2: the whole backbone). The text tower and
``logit_scale`` of a CLIP are never touched, so captions still embed with the original text weights.

Consequences the caller must handle:
- **Re-embed the project afterwards.** The backbone changed, so every cached feature in the embedding
  store (and every registry version built on them) describes the *old* network. Save the checkpoint,
  point ``REID_AL_ENCODER_CHECKPOINT`` at it and re-extract the pool into a fresh store.
- **On a CPU this is slow** (a full forward + backward pass through the backbone per image and step);
  it runs there only so that it can be tested with a tiny model. The CPU default is the adapter.
- The encoder is trained **in place**: afterwards it runs in fp32 on the training device (a
  reduced-precision inference copy chosen by the encoder factory is replaced by fp32 master weights;
  mixed precision on CUDA is autocast during training only).

Batches are built like the adapter's (half anchors from a seeded permutation, half one partner per
anchor: a human must-link partner or a co-cluster member), plus ``pairs_per_batch`` human pairs. Images
are decoded by a ``DataLoader`` (``num_workers`` processes) from a batch list drawn in the main process,
so a seeded run on the CPU is reproducible whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from strategies.constraints import must_link_components
from strategies.validation import check_labels, check_pairs
from trainer.defaults import (
    CONTRAST_TEMPERATURE,
    FINETUNE_BATCH_SIZE,
    FINETUNE_EPOCHS,
    FINETUNE_LR,
    FINETUNE_MAX_GRAD_NORM,
    FINETUNE_NUM_WORKERS,
    FINETUNE_PAIRS_PER_BATCH,
    FINETUNE_STEPS_PER_EPOCH_MAX,
    FINETUNE_WEIGHT_DECAY,
    GM_BETA,
    GM_HARD_NEGATIVES,
    MEMORY_MOMENTUM,
    PAIR_MARGIN,
    UA_ALPHA,
)
from trainer.encoders import Encoder
from trainer.images import check_image_items, load_rgb
from trainer.losses import (
    ClusterContrastiveLoss,
    GroupMatchingLoss,
    PairContrastiveLoss,
    UncertaintyAwareContrastiveLoss,
)
from trainer.runtime import deterministic, resolve_device
from trainer.training import BatchBuilder, TermLog, check_training_settings, compact_labels

__all__ = [
    "DEFAULT_FINETUNE_TERMS",
    "FinetuneConfig",
    "FinetuneResult",
    "ImageDecodeError",
    "finetune_encoder",
    "save_checkpoint",
    "visual_tower",
]

DEFAULT_FINETUNE_TERMS = ("cluster", "pair")

log = logging.getLogger(__name__)


class ImageDecodeError(RuntimeError):
    """An image of ``items`` could not be decoded during fine-tuning (training cannot skip rows)."""


@dataclass
class FinetuneConfig:
    """One fine-tuning run; loss knobs default to the adapter's (trainer/defaults.py).

    ``terms``: any of ``cluster``, ``pair``, ``ua``, ``gm`` (see trainer/losses.py). ``ua``/``gm`` compare
    each image with a second augmented view (mirror + pixel noise). ``device="auto"``: CUDA when
    available. ``amp``: bf16 autocast on CUDA (fp16 + gradient scaling where bf16 is unsupported);
    ignored on the CPU, which always trains in fp32. ``freeze_batchnorm``: BatchNorm running statistics
    stay as pretrained (their affine weights still train): small fine-tuning batches would otherwise
    overwrite them with noisy batch statistics. ``num_threads``: CPU threads for the run (restored after).
    """

    epochs: int = FINETUNE_EPOCHS
    batch_size: int = FINETUNE_BATCH_SIZE
    lr: float = FINETUNE_LR
    weight_decay: float = FINETUNE_WEIGHT_DECAY
    max_steps_per_epoch: int | None = FINETUNE_STEPS_PER_EPOCH_MAX
    terms: tuple[str, ...] = DEFAULT_FINETUNE_TERMS
    cluster_weight: float = 1.0
    pair_weight: float = 1.0
    ua_weight: float = 1.0
    gm_weight: float = GM_BETA
    temperature: float = CONTRAST_TEMPERATURE
    momentum: float = MEMORY_MOMENTUM
    ua_alpha: float = UA_ALPHA
    ua_paired_weight: float = 1.0  # the second view is a real image augmentation here (paper's value)
    hard_negatives: int = GM_HARD_NEGATIVES
    pair_margin: float = PAIR_MARGIN
    pairs_per_batch: int = FINETUNE_PAIRS_PER_BATCH
    outliers: str = "exclude"
    flip: bool = True
    view_noise: float = 0.1
    max_grad_norm: float | None = FINETUNE_MAX_GRAD_NORM
    freeze_batchnorm: bool = True
    amp: bool = True
    device: str = "auto"
    seed: int = 0
    num_workers: int = FINETUNE_NUM_WORKERS
    num_threads: int | None = None

    def __post_init__(self) -> None:
        self.terms = tuple(self.terms)
        for name in ("epochs", "batch_size", "hard_negatives"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        check_training_settings(self)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm!r}")
        if not isinstance(self.num_workers, (int, np.integer)) or self.num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {self.num_workers!r}")


@dataclass
class FinetuneResult:
    """What a run returns. ``checkpoint``: the file written (when asked for), loadable by
    ``encoder_from_spec(spec, checkpoint=...)``; otherwise ``state_dict`` holds the CPU weights."""

    checkpoint: Path | None
    losses_per_epoch: list[float]
    seconds: float
    device: str
    precision: str
    steps: int = 0
    n_images: int = 0
    terms_per_epoch: list[dict[str, float]] = field(default_factory=list)
    state_dict: dict[str, Tensor] | None = None


# ------------------------------------------------------------------------------------------- helpers


def visual_tower(encoder: Encoder) -> nn.Module:
    """The module fine-tuning trains: open_clip's ``model.visual``; MobileNetV2's whole backbone."""
    model = getattr(encoder, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"encoder must be an Encoder with a torch model, got {type(encoder).__name__}")
    visual = getattr(model, "visual", None)
    if getattr(encoder, "has_text", False):
        if not isinstance(visual, nn.Module):
            raise TypeError(f"encoder: {encoder.name!r} has a text tower but no `visual` module")
        return visual
    return model


def save_checkpoint(encoder: Encoder, path: str | os.PathLike[str]) -> Path:
    """Write the encoder's full model ``state_dict`` (CPU tensors) atomically (temp file + rename).

    A plain state dict is what both loaders read: open_clip's ``load_checkpoint`` and the MobileNetV2
    ``weights`` file, i.e. ``encoder_from_spec(spec, checkpoint=path)`` / ``REID_AL_ENCODER_CHECKPOINT``.
    """
    model = getattr(encoder, "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"encoder must be an Encoder with a torch model, got {type(encoder).__name__}")
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"path: {target} is a directory; give a checkpoint file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def _image_paths(items: Sequence[tuple[str, str | os.PathLike[str]]]) -> list[str]:
    """The checked items' paths; training cannot skip a row, so every file must exist."""
    paths = [path for _, path in check_image_items(items)]
    for k, path in enumerate(paths):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"items[{k}]: image file {path!r} of {items[k][0]!r} does not exist")
    if len(paths) < 2:
        raise ValueError(f"items must hold at least 2 images to train on, got {len(paths)}")
    return paths


class _Images(Dataset):
    """Row index -> (preprocessed image tensor, row). Decoding errors name the row and file."""

    def __init__(self, paths: list[str], transform: Callable[[Any], Tensor], draft_size: int | None) -> None:
        self.paths = paths
        self.transform = transform
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[Tensor, int]:
        try:
            image = load_rgb(self.paths[row], draft_size=self.draft_size)
        except Exception as exc:  # any PIL/OS error: the file cannot be trained on
            raise ImageDecodeError(f"items[{row}]: cannot decode {self.paths[row]!r}: {exc}") from exc
        return self.transform(image), row


class _Batches:
    """The batch sampler: a list of row lists replaced by the main process before each pass."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def _loader(dataset: _Images, sampler: _Batches, num_workers: int, pin: bool) -> DataLoader:
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin,
                      persistent_workers=num_workers > 0)


def _set_train_mode(visual: nn.Module, freeze_batchnorm: bool) -> None:
    visual.train()
    if freeze_batchnorm:
        for module in visual.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _precision(device: torch.device, amp: bool) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None, description)."""
    if device.type != "cuda" or not amp:
        return None, "fp32"
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, "bf16 autocast (fp32 master weights)"
    return torch.float16, "fp16 autocast + gradient scaling (fp32 master weights)"


def _augment(x: Tensor, config: FinetuneConfig, gen: torch.Generator, *, view: bool) -> Tensor:
    """Random horizontal flip per image (training batches); ``view=True``: the mirrored image plus
    seeded pixel noise, the second view of the ``ua``/``gm`` terms. Randomness comes from ``gen``."""
    n = x.shape[0]
    if view:
        out = torch.flip(x, dims=[3])
        if config.view_noise > 0:
            noise = torch.randn(x.shape, generator=gen) * config.view_noise
            out = out + noise.to(out.device, out.dtype)
        return out
    if not config.flip:
        return x
    mask = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(mask.view(n, 1, 1, 1), torch.flip(x, dims=[3]), x)


# ---------------------------------------------------------------------------------------- training


def finetune_encoder(
    encoder: Encoder,
    items: Sequence[tuple[str, str | os.PathLike[str]]],
    pseudo_labels: np.ndarray,
    ml_pairs: Sequence[tuple[int, int]] | np.ndarray | None,
    cl_pairs: Sequence[tuple[int, int]] | np.ndarray | None,
    config: FinetuneConfig | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> FinetuneResult:
    """Fine-tune ``encoder``'s visual tower in place on the images of ``items`` and return the run.

    ``items[r] = (image id, path)`` is row ``r``; ``pseudo_labels[r]`` its cluster id (``-1`` outlier);
    ``ml_pairs``/``cl_pairs`` human must-link / cannot-link row pairs. With ``checkpoint`` the fine-tuned
    weights are written there (load them with ``encoder_from_spec(spec, checkpoint=path)`` or
    ``REID_AL_ENCODER_CHECKPOINT``); otherwise ``result.state_dict`` holds them.

    After fine-tuning the project **must be re-embedded**: the backbone changed, so the cached features
    in the embedding store are stale. On a CPU this is slow — the CPU default is the adapter
    (trainer/adapter.py); this path is meant for a GPU (``device="auto"`` picks CUDA when available).
    A fixed ``config.seed`` gives identical results on the CPU (same thread count).
    """
    config = FinetuneConfig() if config is None else config
    if not isinstance(config, FinetuneConfig):
        raise TypeError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    if not isinstance(encoder, Encoder):
        raise TypeError(f"encoder must be a trainer.encoders.Encoder, got {type(encoder).__name__}")
    visual = visual_tower(encoder)
    paths = _image_paths(items)
    n = len(paths)
    labels = check_labels(pseudo_labels, "pseudo_labels", n)
    ml = check_pairs(ml_pairs, n, "ml_pairs")
    cl = check_pairs(cl_pairs, n, "cl_pairs")
    train_labels = compact_labels(labels, config.outliers)
    n_clusters = int(train_labels.max()) + 1
    terms = set(config.terms)
    pairs = np.concatenate([ml, cl])
    same = np.concatenate([np.ones(ml.shape[0], bool), np.zeros(cl.shape[0], bool)])
    use_cluster = "cluster" in terms and n_clusters >= 1
    use_pairs = "pair" in terms and pairs.shape[0] > 0 and config.pairs_per_batch > 0
    need_view = bool(terms & {"ua", "gm"})
    if not (use_cluster or use_pairs or need_view):
        raise ValueError(
            f"pseudo_labels/ml_pairs/cl_pairs: nothing to train on with terms {config.terms}: no cluster "
            "in pseudo_labels (all -1) and no human pair")
    if checkpoint is not None and Path(checkpoint).expanduser().is_dir():
        raise ValueError(f"checkpoint: {checkpoint} is a directory; give a checkpoint file name")
    device = resolve_device(config.device)
    autocast_dtype, precision = _precision(device, config.amp)
    started = time.perf_counter()

    # fp32 master weights on the training device; the text tower stays frozen.
    model: nn.Module = encoder.model  # type: ignore[attr-defined]
    if encoder.dtype != torch.float32:
        log.warning("encoder %s runs in %s: its weights were rounded to it before fine-tuning; build it "
                    "with precision='fp32' to fine-tune the exact pretrained weights", encoder.name,
                    encoder.dtype)
    model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)
    encoder.device, encoder.dtype = device, torch.float32
    encoder.precision_note = f"fp32 (fine-tuned visual tower, trained with {precision})"
    visual.requires_grad_(True)
    params = [p for p in visual.parameters() if p.requires_grad]

    dataset = _Images(paths, encoder.preprocess, getattr(encoder, "input_size", None))
    train_batches, eval_batches = _Batches(), _Batches()
    pin = device.type == "cuda"
    n_anchor = max(1, config.batch_size // 2)
    steps = math.ceil(n / n_anchor)
    if config.max_steps_per_epoch is not None:
        steps = min(steps, config.max_steps_per_epoch)
    eval_batches.batches = [list(range(s, min(n, s + config.batch_size)))
                            for s in range(0, n, config.batch_size)]

    term_log = TermLog()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with deterministic(config.num_threads), torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(int(config.seed))
        gen = torch.Generator().manual_seed(int(config.seed))
        rng = np.random.default_rng(int(config.seed))
        builder = BatchBuilder(labels, must_link_components(ml, n), ml, cl, None, rng)
        labels_t = torch.from_numpy(train_labels).to(device)
        memory = (ClusterContrastiveLoss(n_clusters, encoder.dim, temperature=config.temperature,
                                         momentum=config.momentum).to(device) if use_cluster else None)
        pair_loss = PairContrastiveLoss(config.pair_margin)
        ua_loss = UncertaintyAwareContrastiveLoss(config.temperature, config.ua_alpha,
                                                  paired_weight=config.ua_paired_weight)
        gm_loss = GroupMatchingLoss(config.hard_negatives, config.temperature)
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
        train_loader = _loader(dataset, train_batches, config.num_workers, pin)
        eval_loader = _loader(dataset, eval_batches, config.num_workers, pin) if memory is not None else None

        def embed(x: Tensor) -> Tensor:
            amp_ctx = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                       else contextlib.nullcontext())
            with amp_ctx:
                feats = encoder._forward_images(x)
            return F.normalize(feats.float(), dim=1)

        epochs: Any = range(config.epochs)
        if progress:
            from tqdm.auto import tqdm

            epochs = tqdm(epochs, desc="finetune", unit="epoch")
        for _ in epochs:
            if memory is not None and eval_loader is not None:
                # Cluster-Contrast: centroids re-extracted with the current backbone every epoch.
                visual.eval()
                feats = torch.empty(n, encoder.dim, device=device)
                with torch.no_grad():
                    for images, rows in eval_loader:
                        feats[rows.to(device)] = embed(images.to(device, non_blocking=True))
                memory.initialise(feats, labels_t)
            _set_train_mode(visual, config.freeze_batchnorm)
            perm = rng.permutation(n)
            batches: list[list[int]] = []
            takes: list[np.ndarray] = []
            for step in range(steps):
                anchors = perm[step * n_anchor : (step + 1) * n_anchor]
                if anchors.size == 0:
                    break
                rows = np.concatenate([anchors, builder.partners(anchors)])
                take = np.zeros(0, dtype=np.int64)
                if use_pairs:
                    take = rng.choice(pairs.shape[0], size=min(config.pairs_per_batch, pairs.shape[0]),
                                      replace=False)
                    rows = np.concatenate([rows, pairs[take, 0], pairs[take, 1]])
                batches.append(rows.tolist())
                takes.append(take)
            train_batches.batches = batches
            term_log.start_epoch(config.terms)
            for step, (images, rows_t) in enumerate(train_loader):
                take = takes[step]
                k = take.shape[0]
                n_rows = rows_t.shape[0] - 2 * k
                images = images.to(device, non_blocking=True)
                z_all = embed(_augment(images, config, gen, view=False))
                z = z_all[:n_rows]
                rows_main = rows_t[:n_rows].to(device)
                parts: dict[str, Tensor] = {}
                if memory is not None:
                    parts["cluster"] = config.cluster_weight * memory(z, labels_t[rows_main])
                if use_pairs and k:
                    same_t = torch.from_numpy(same[take]).to(device)
                    parts["pair"] = config.pair_weight * pair_loss(z_all[n_rows : n_rows + k],
                                                                   z_all[n_rows + k :], same_t)
                if need_view:
                    view = embed(_augment(images[:n_rows], config, gen, view=True))
                    masks = builder.masks(rows_t[:n_rows].numpy())
                    strong, weak, negative = (torch.from_numpy(m).to(device) for m in masks)
                    if "ua" in terms:
                        parts["ua"] = config.ua_weight * ua_loss(z, view, strong, weak, negative)
                    if "gm" in terms:
                        parts["gm"] = config.gm_weight * gm_loss(z, view, strong | weak, negative,
                                                                 generator=gen)
                total = sum(parts.values(), start=z.sum() * 0.0)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(total).backward()
                    scaler.unscale_(optimizer)
                else:
                    total.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if memory is not None:
                    memory.update(z.detach(), labels_t[rows_main])
                term_log.add(parts, total)
            term_log.end_epoch(len(batches), epochs)
        del train_loader, eval_loader

    model.eval().requires_grad_(False)
    saved: Path | None = None
    state: dict[str, Tensor] | None = None
    if checkpoint is not None:
        saved = save_checkpoint(encoder, checkpoint)
    else:
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return FinetuneResult(
        checkpoint=saved,
        losses_per_epoch=term_log.losses,
        seconds=time.perf_counter() - started,
        device=str(device),
        precision=precision,
        steps=term_log.steps,
        n_images=n,
        terms_per_epoch=term_log.epochs,
        state_dict=state,
    )
