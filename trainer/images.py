"""Decoding image files into the RGB pictures and tensors the encoders take.

One place for what a user's folder can hold (every PIL mode, 16-bit greys, transparency, EXIF rotation,
animated GIFs, huge JPEGs), shared by batch extraction, fine-tuning and /predict's on-the-fly embedding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from trainer.defaults import ENCODER_PROBE_IMAGES

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageNetTransform",
    "check_image_items",
    "load_rgb",
    "probe_images",
    "to_rgb",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image -> 8-bit RGB. Transparency is composited on ``background``; 16-bit/float greys are
    rescaled (a plain ``convert("RGB")`` would clip a 16-bit image to white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        if mode.startswith("I;16"):
            scale = 65535.0
        else:
            top = float(np.nanmax(arr)) if arr.size else 0.0
            scale = 255.0 if top <= 255.0 else (65535.0 if top <= 65535.0 else top)
        arr = np.clip(np.nan_to_num(arr) * (255.0 / scale), 0.0, 255.0).round().astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | os.PathLike[str], *, draft_size: int | None = None) -> Image.Image:
    """Decode an image file fully (first frame of animations, EXIF orientation applied) as RGB.

    ``draft_size``: the encoder's input side. JPEGs are then decoded at the smallest DCT scale
    (1/2, 1/4, 1/8) whose both sides stay >= it: a 4000x3000 camera-trap photo decodes ~10x faster
    for a 224 px model, while crops smaller than 2x the input are decoded exactly as without it.
    Raises whatever PIL raises for unreadable/truncated files; callers decide what to do.
    """
    with Image.open(path) as im:
        im.seek(0)
        if draft_size and im.format == "JPEG":
            im.draft("RGB", (draft_size, draft_size))
        im.load()
        oriented = ImageOps.exif_transpose(im)  # a new in-memory image: outlives the closed file
        return to_rgb(oriented if oriented is not None else im.copy())


class ImageNetTransform:
    """PIL image -> normalised CHW float tensor at a fixed square size (deep-sort's MobileNet recipe).

    A plain class (not a lambda/torchvision Compose) so that DataLoader worker processes can pickle it.
    The whole crop is squashed to a square rather than centre-cropped: Re-ID crops are tall and the
    feet/head matter.
    """

    def __init__(self, size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.size = size
        self.mean = tuple(mean)
        self.std = tuple(std)
        # (x / 255 - mean) / std == x * scale + bias: one fused pass (numpy's three float passes took
        # 10 ms per 224 px image and were the bottleneck of the decode workers)
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(3, 1, 1)
        self._bias = torch.tensor([-m / s for m, s in zip(self.mean, self.std, strict=True)]).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        img = to_rgb(image).resize((self.size, self.size), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return torch.addcmul(self._bias, pixels.float(), self._scale).contiguous()

    def __repr__(self) -> str:
        return f"ImageNetTransform(size={self.size}, mean={self.mean}, std={self.std})"


def probe_images(n: int = ENCODER_PROBE_IMAGES, size: int = 96, seed: int = 0) -> list[Image.Image]:
    """Deterministic smooth synthetic images (upsampled noise): image-like statistics, no files needed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
        out.append(Image.fromarray(small, "RGB").resize((size * 2 // 3, size), Image.Resampling.BICUBIC))
    return out


def check_image_items(items: Sequence[tuple[str, str | os.PathLike[str]]]) -> list[tuple[str, str]]:
    """``(image id, path)`` pairs with unique non-empty ids, as ``(str, str)``: what extraction and
    fine-tuning take. Whether the files exist is the caller's business (extraction reports missing ones)."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a sequence of (image id, path) pairs, got {type(items).__name__}")
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for k, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"items[{k}] must be an (image_id, path) pair, got {item!r}")
        image_id, path = item
        if not isinstance(image_id, str) or not image_id:
            raise ValueError(f"items[{k}]: image id must be a non-empty str, got {image_id!r}")
        if not isinstance(path, (str, Path, os.PathLike)):
            raise ValueError(f"items[{k}]: path must be a str or Path, got {type(path).__name__}")
        if image_id in seen:
            raise ValueError(f"items: duplicate image id {image_id!r} (items[{k}])")
        seen.add(image_id)
        out.append((image_id, os.fspath(path)))
    return out
