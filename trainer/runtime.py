"""Where and how torch runs: the device, a reduced inference precision only where it is safe, and
deterministic kernels with a chosen thread count for one training run."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "PRECISIONS",
    "DeviceUnavailableError",
    "choose_precision",
    "cpu_has_native_bf16",
    "deterministic",
    "resolve_device",
    "tensor_of",
]


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceUnavailableError(ValueError, RuntimeError):
    """A CUDA device was asked for on a machine where torch sees none: a bad setting (ValueError) for
    this machine (RuntimeError); callers catching either keep working."""


def tensor_of(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``array``: its memory when writable, else a copy.

    Why: features come as read-only memmaps (the embedding store, the registry); torch cannot share
    read-only memory safely and warns about it, so those are copied here, where torch needs them."""
    if not array.flags.writeable:
        array = np.array(array)
    return torch.from_numpy(np.ascontiguousarray(array))


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` or ``None`` -> CUDA when available, else CPU; a CUDA request without a GPU is an error
    that names the device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:n]', got {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"device={str(device)!r} was requested but torch sees no CUDA GPU; use 'auto' or 'cpu'"
        )
    return resolved


@contextmanager
def deterministic(num_threads: int | None = None) -> Iterator[None]:
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


def cpu_has_native_bf16() -> bool:
    """bf16 matmuls are only faster than fp32 on CPUs with AVX512-BF16 or AMX; elsewhere they are slower."""
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(
    model: torch.nn.Module,
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
    probe: torch.Tensor,
    precision: str,
    device: torch.device,
    min_cosine: float,
) -> tuple[torch.nn.Module, torch.dtype, str]:
    """Return (model, dtype, note): a reduced-precision copy only if it agrees with fp32 on ``probe``.

    Logs nothing: a fallback to fp32 is the expected outcome on many machines, not a problem, so the
    caller reports the choice and its reason (``note``) in one INFO line with the encoder it made."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model, torch.float32, "fp32 (requested)"
    if precision == "auto":
        if device.type == "cuda":
            candidate = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif cpu_has_native_bf16():
            candidate = "bf16"
        else:
            return model, torch.float32, "fp32 (this CPU has no native bf16)"
    else:
        candidate = precision
    dtype = _DTYPES[candidate]
    try:
        with torch.no_grad():
            ref = F.normalize(forward(model, probe.to(device)).float(), dim=1)
            reduced = copy.deepcopy(model).to(dtype)
            out = F.normalize(forward(reduced, probe.to(device, dtype)).float(), dim=1)
            cosine = float((ref * out).sum(dim=1).mean())
    except (RuntimeError, TypeError) as exc:
        return model, torch.float32, f"fp32 ({candidate} failed: {exc})"
    if not np.isfinite(cosine) or cosine < min_cosine:
        return model, torch.float32, f"fp32 ({candidate} probe mean cosine {cosine:.5f} < {min_cosine})"
    return reduced, dtype, f"{candidate} (probe mean cosine vs fp32 {cosine:.5f})"
