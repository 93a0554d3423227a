"""P(same) from a cosine similarity (ALGORITHMS.md §7 margin baseline; backend predictions).

Label Studio shows every pair with a proposed answer and its probability, and the margin sampler
ranks pairs by |P(same) - 0.5|, so similarities must become calibrated probabilities. With few
labels (or only one class) a fit would be noise, so a fixed prior curve - a logistic on cosine with
named centre and slope - is used until ``min_labels`` answers of both kinds exist. Every curve is
monotone non-decreasing in similarity: a more similar pair is never less likely to be "same".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from strategies.defaults import (
    CALIBRATION_LOGISTIC_C,
    CALIBRATION_METHOD,
    CALIBRATION_MIN_LABELS,
    CALIBRATION_MIN_PER_CLASS,
    CALIBRATION_PRIOR_CENTER,
    CALIBRATION_PRIOR_SLOPE,
)

__all__ = ["CALIBRATION_METHODS", "PSameCalibrator"]

CALIBRATION_METHODS = ("logistic", "isotonic")
_DICT_VERSION = 1


@dataclass(eq=False, repr=False)
class PSameCalibrator:
    """Maps cosine similarity to P(same identity); fitted on human-labelled pairs.

    Fitted attributes (set by `fit`): ``mode_`` ("prior", "logistic" or "isotonic"), ``n_labels_``,
    ``slope_``/``intercept_`` (logistic, also the prior's), ``thresholds_x_``/``thresholds_y_``
    (isotonic). Before `fit`, `predict` answers with the prior curve.
    """

    method: str = CALIBRATION_METHOD
    min_labels: int = CALIBRATION_MIN_LABELS
    min_per_class: int = CALIBRATION_MIN_PER_CLASS
    prior_center: float = CALIBRATION_PRIOR_CENTER
    prior_slope: float = CALIBRATION_PRIOR_SLOPE
    C: float = CALIBRATION_LOGISTIC_C

    # ------------------------------------------------------------------ fitting
    def fit(
        self, similarities: np.ndarray | Sequence[float], same: np.ndarray | Sequence[bool]
    ) -> PSameCalibrator:
        """Fit on answered pairs; falls back to the prior with fewer than ``min_labels`` answers or fewer
        than ``min_per_class`` of either kind (a logistic fit on one "same" among hundreds of "different"
        predicts P(same) near 0 for every pair, which is no calibration at all)."""
        self._check_params()
        x = _check_similarities(similarities, "similarities")
        y_raw = np.asarray(same)
        if y_raw.ndim != 1 or y_raw.shape[0] != x.shape[0]:
            raise ValueError(f"same: expected shape ({x.shape[0]},) to match similarities, got {y_raw.shape}")
        if y_raw.size and not np.isin(y_raw, (0, 1)).all():
            raise ValueError("same: expected booleans (or 0/1)")
        y = y_raw.astype(bool)
        self.n_labels_ = int(x.size)
        self.thresholds_x_ = np.zeros(0)
        self.thresholds_y_ = np.zeros(0)
        both_classes = min(int(y.sum()), int((~y).sum())) >= max(1, int(self.min_per_class))
        if x.size < self.min_labels or not both_classes:
            self._set_prior()
            return self
        if self.method == "logistic":
            model = LogisticRegression(C=float(self.C))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence chatter on perfectly separable data
                model.fit(x.reshape(-1, 1), y)
            slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
            if slope < 0:  # anti-correlated answers: stay monotone, predict the base rate
                slope, intercept = 0.0, _logit(float(y.mean()))
            self.mode_, self.slope_, self.intercept_ = "logistic", slope, intercept
        else:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
            iso.fit(x, y.astype(np.float64))
            self.mode_ = "isotonic"
            self.slope_, self.intercept_ = self._prior_coefficients()
            self.thresholds_x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
            self.thresholds_y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        return self

    def predict(self, similarities: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """P(same) in [0, 1] for each similarity (same shape as the input)."""
        self._check_params()
        x = np.asarray(similarities, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("similarities: contains NaN or infinity")
        mode = getattr(self, "mode_", "prior")
        if mode == "isotonic":
            return np.asarray(np.interp(x, self.thresholds_x_, self.thresholds_y_), dtype=np.float64)
        if mode == "logistic":
            slope, intercept = self.slope_, self.intercept_
        else:
            slope, intercept = self._prior_coefficients()
        return _sigmoid(slope * x + intercept)

    @property
    def is_prior(self) -> bool:
        """True while the fixed prior curve is in use (unfitted, too few labels, or one class)."""
        return getattr(self, "mode_", "prior") == "prior"

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters and fitted state."""
        mode = getattr(self, "mode_", None)
        return {
            "version": _DICT_VERSION,
            "method": self.method,
            "min_labels": int(self.min_labels),
            "min_per_class": int(self.min_per_class),
            "prior_center": float(self.prior_center),
            "prior_slope": float(self.prior_slope),
            "C": float(self.C),
            "mode": mode,
            "n_labels": getattr(self, "n_labels_", None),
            "slope": getattr(self, "slope_", None),
            "intercept": getattr(self, "intercept_", None),
            "thresholds_x": getattr(self, "thresholds_x_", np.zeros(0)).tolist(),
            "thresholds_y": getattr(self, "thresholds_y_", np.zeros(0)).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PSameCalibrator:
        if not isinstance(d, dict) or d.get("version") != _DICT_VERSION:
            raise ValueError(f"d: not a PSameCalibrator dict of version {_DICT_VERSION}")
        try:
            params = {"min_per_class": 1, **d}  # dicts written before min_per_class existed
            calibrator = cls(**{f.name: params[f.name] for f in fields(cls)})
            calibrator._check_params()
            mode = d["mode"]
            if mode is not None:
                if mode not in ("prior", *CALIBRATION_METHODS):
                    raise ValueError(f"d: unknown mode {mode!r}")
                calibrator.mode_ = mode
                calibrator.n_labels_ = int(d["n_labels"])
                calibrator.slope_ = float(d["slope"])
                calibrator.intercept_ = float(d["intercept"])
                calibrator.thresholds_x_ = np.asarray(d["thresholds_x"], dtype=np.float64)
                calibrator.thresholds_y_ = np.asarray(d["thresholds_y"], dtype=np.float64)
                if mode == "isotonic" and (
                    calibrator.thresholds_x_.size == 0
                    or calibrator.thresholds_x_.shape != calibrator.thresholds_y_.shape
                ):
                    raise ValueError("d: isotonic thresholds missing or of different lengths")
        except (KeyError, TypeError) as exc:
            raise ValueError(f"d: malformed PSameCalibrator dict ({exc!r})") from None
        return calibrator

    def __repr__(self) -> str:
        return (
            f"PSameCalibrator(method={self.method!r}, min_labels={self.min_labels}, "
            f"min_per_class={self.min_per_class}, "
            f"prior_center={self.prior_center}, prior_slope={self.prior_slope}, C={self.C})"
        )

    # ------------------------------------------------------------------ internals
    def _check_params(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(
                f"method: unknown calibration method {self.method!r}; one of {CALIBRATION_METHODS}"
            )
        if isinstance(self.min_labels, bool) or not isinstance(self.min_labels, int | np.integer):
            raise ValueError(f"min_labels: must be an int, got {self.min_labels!r}")
        if self.min_labels < 2:
            raise ValueError(f"min_labels: must be at least 2 (one label per class), got {self.min_labels}")
        if isinstance(self.min_per_class, bool) or not isinstance(self.min_per_class, int | np.integer):
            raise ValueError(f"min_per_class: must be an int, got {self.min_per_class!r}")
        if self.min_per_class < 1:
            raise ValueError(f"min_per_class: must be at least 1, got {self.min_per_class}")
        if not _is_finite_number(self.prior_center):
            raise ValueError(f"prior_center: must be a finite number, got {self.prior_center!r}")
        if not _is_finite_number(self.prior_slope) or self.prior_slope <= 0:
            raise ValueError(
                f"prior_slope: must be a positive number (monotone curve), got {self.prior_slope!r}"
            )
        if not _is_finite_number(self.C) or self.C <= 0:
            raise ValueError(f"C: must be a positive number, got {self.C!r}")

    def _prior_coefficients(self) -> tuple[float, float]:
        slope = float(self.prior_slope)
        return slope, -slope * float(self.prior_center)

    def _set_prior(self) -> None:
        self.mode_ = "prior"
        self.slope_, self.intercept_ = self._prior_coefficients()


def _check_similarities(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains NaN or infinity")
    return arr


def _is_finite_number(value: object) -> bool:
    return (
        isinstance(value, int | float | np.integer | np.floating)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(expit(z), dtype=np.float64)  # overflow-free and accurate in the tails


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))
