"""Import shims for third-party packages whose wheels do not match our CPU-only torch.

PyPI's torchvision (pulled in by open_clip/timm) is a CUDA build. On the CPU torch wheel its compiled
extension does not load, so ``import torchvision`` dies in ``_meta_registrations`` with
"operator torchvision::nms does not exist" before open_clip can even be imported. The operators are
only *declared* here (schema, no kernel) so that the import succeeds; open_clip never calls them.
Where the real extension loads (a matching torchvision, e.g. on a GPU host) nothing is touched.
"""

from __future__ import annotations

import importlib
import logging
import sys
import threading
from types import ModuleType

import torch

log = logging.getLogger(__name__)

# Schemas copied from torchvision/csrc/ops/nms.cpp and quantized/cpu/qnms_kernel.cpp.
_TORCHVISION_SCHEMAS: dict[str, str] = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor qdets, Tensor scores, float iou_threshold, float scale, int zero_point) -> Tensor",
}

_lock = threading.Lock()
# The Library object owns the registrations: if it were garbage collected they would vanish again.
_libraries: list[torch.library.Library] = []


def _has_schema(qualified_name: str) -> bool:
    return bool(torch._C._jit_get_schemas_for_operator(qualified_name))


def missing_torchvision_ops() -> list[str]:
    """Names of the torchvision operators torchvision's import needs but nobody has declared."""
    return [name for name in _TORCHVISION_SCHEMAS if not _has_schema(f"torchvision::{name}")]


def _declare_torchvision_ops() -> list[str]:
    missing = missing_torchvision_ops()
    if missing:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            lib.define(_TORCHVISION_SCHEMAS[name])
        _libraries.append(lib)
    return missing


def _purge(prefix: str) -> None:
    # A failed import leaves half-initialised submodules behind; the retry must start clean.
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """Import torchvision, declaring the operator schemas a mismatched (CUDA) wheel fails to register.

    Idempotent and thread-safe. Raises the original error when the failure is something else.
    """
    with _lock:
        if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "transforms"):
            return sys.modules["torchvision"]
        try:
            return importlib.import_module("torchvision")
        except RuntimeError as exc:
            if "torchvision::" not in str(exc):
                raise
            _purge("torchvision")
            declared = _declare_torchvision_ops()
            if not declared:
                raise
            log.info(
                "torchvision's compiled ops did not load (%s); declared %s so that the import succeeds",
                exc,
                ", ".join(declared),
            )
            return importlib.import_module("torchvision")


def import_open_clip() -> ModuleType:
    """Import and return ``open_clip``, after making torchvision importable on a CPU-only torch."""
    import_torchvision()
    return importlib.import_module("open_clip")
