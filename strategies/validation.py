"""Input checks for the public entry points of strategies/ and trainer/ (scikit-learn's utils.validation).

Data is checked once, where it enters a public function or object; what those call internally trusts
its arguments. Every message starts with the argument's name, so a caller sees which input is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from strategies.defaults import NORM_TOLERANCE

__all__ = [
    "UNIT_NORM_MODES",
    "InvalidParameterError",
    "check_counts",
    "check_features",
    "check_int",
    "check_labels",
    "check_pairs",
    "check_per_item",
    "check_random_state",
    "check_unit_interval",
]

# "require": rows must already be L2-normalised; "normalise": rows that are not are divided by their norm
# (into a new array); "any": rows may have any length.
UNIT_NORM_MODES = ("require", "normalise", "any")
# |norm - 1| up to this is "already unit length" for "normalise" (no new array is made)
_RENORMALISE_ATOL = 1e-3


class InvalidParameterError(ValueError, TypeError):
    """A parameter of the wrong type or out of range. Both a ValueError and a TypeError (as in
    scikit-learn), so callers catching either keep working."""


def check_features(
    features: Any,
    name: str = "features",
    *,
    unit_norm: str = "require",
    dtype: type | None = np.float32,
    min_rows: int = 1,
    rows: int | None = None,
    allow_zero_rows: bool = False,
) -> np.ndarray:
    """A validated ``(n, d)`` matrix of finite numbers, C-contiguous in ``dtype`` (``None``: the input's).

    ``unit_norm`` is one of UNIT_NORM_MODES; ``rows`` demands exactly that many rows (one per item);
    ``allow_zero_rows`` lets "normalise" keep all-zero rows (e.g. items without a caption) as they are.
    The caller's array is never modified.
    """
    if features is None:
        raise ValueError(f"{name} is None; expected a 2-D (n, d) array")
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {x.shape}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"{name} must have one row per item ({rows}), got shape {x.shape}")
    if x.shape[0] < min_rows:
        rows_word = "row" if min_rows == 1 else "rows"
        raise ValueError(f"{name} must have at least {min_rows} {rows_word}, got shape {x.shape}")
    if x.shape[1] < 1:
        raise ValueError(f"{name} must have at least 1 column, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if dtype is not None:
        x = np.ascontiguousarray(x, dtype=dtype)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if unit_norm == "any":
        return x
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # float32 is ample for these tolerances
    if unit_norm == "require":
        bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
        if bad.size:
            raise ValueError(
                f"{name} rows must be L2-normalised (cosine = dot product); row {int(bad[0])} has norm "
                f"{norms[bad[0]]:.6g} ({bad.size} rows off by more than {NORM_TOLERANCE})"
            )
        return x
    if unit_norm != "normalise":
        raise ValueError(f"unit_norm must be one of {UNIT_NORM_MODES}, got {unit_norm!r}")
    zero = norms <= 1e-12
    if zero.any() and not allow_zero_rows:
        raise ValueError(f"{name} has {int(zero.sum())} all-zero rows; cannot L2-normalise them")
    norms[zero] = 1.0
    if not np.allclose(norms, 1.0, atol=_RENORMALISE_ATOL):
        x = x / norms[:, None]
    return x


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an int (numpy integers accepted, bools refused), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InvalidParameterError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_counts(owner: Any, *names: str) -> None:
    """Each named parameter of ``owner`` is an integer >= 1 (numpy integers accepted, bools refused)."""
    for name in names:
        value = getattr(owner, name)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")


def check_unit_interval(value: Any, name: str, interval: str = "[0, 1]") -> None:
    """``value`` lies in the part of [0, 1] that ``interval`` writes ("[0, 1]", "(0, 1)", "[0, 1)" or
    "(0, 1]"); the same text names it in the message."""
    v = float(value)
    low_ok = v >= 0.0 if interval.startswith("[") else v > 0.0
    high_ok = v <= 1.0 if interval.endswith("]") else v < 1.0
    if not (low_ok and high_ok):
        raise ValueError(f"{name}: must be in {interval}, got {value!r}")


def check_random_state(random_state: int | None) -> np.random.Generator:
    """The generator a seeded algorithm draws from: ``None`` (fresh entropy) or a non-negative int."""
    if random_state is not None:
        check_int(random_state, "random_state", 0)
    return np.random.default_rng(random_state)


def check_per_item(values: Any, n: int, name: str) -> np.ndarray | None:
    """Optional side information with one entry per item (cameras, tracklets, ...): a 1-D array of ``n``."""
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array with one entry per item ({n}), got shape {arr.shape}")
    return arr


def check_labels(labels: Any, name: str = "labels", n: int | None = None) -> np.ndarray:
    """Cluster labels as int64, one per item when ``n`` is given; -1 marks an outlier, nothing lower."""
    arr = np.asarray(labels)
    if arr.ndim != 1 or (n is not None and arr.shape[0] != n):
        want = f"({n},)" if n is not None else "1-D"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer labels, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < -1:
        raise ValueError(f"{name} must be >= -1 (-1 marks an outlier); found {int(arr.min())}")
    return arr


def check_pairs(pairs: Any, n: int, name: str = "pairs") -> np.ndarray:
    """Row pairs as an ``(m, 2)`` int64 array of indices into ``0..n-1``, no ``(i, i)``."""
    if pairs is None or len(pairs) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    arr = np.asarray(pairs, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must be a sequence of (i, j) pairs, got shape {arr.shape}")
    if arr.min() < 0 or arr.max() >= n:
        raise ValueError(f"{name} contains a row index outside 0..{n - 1}")
    if np.any(arr[:, 0] == arr[:, 1]):
        raise ValueError(f"{name} contains a self pair (i == j)")
    return arr
