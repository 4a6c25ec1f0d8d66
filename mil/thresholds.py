"""Per-class decision thresholds fitted on held-out predictions to maximise each class's F1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hpa_cells.atomic_files import write_json_atomic

DEFAULT_THRESHOLD = 0.5


def fit_thresholds(probabilities: np.ndarray, targets: np.ndarray, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """`K` thresholds from `N,K` validation (or out-of-fold) probabilities and binary targets.

    For each class, every midpoint between consecutive distinct probabilities is a candidate; the one with the
    best F1 wins (ties: the higher threshold, which predicts fewer positives). A class without positives in
    the validation data keeps `default`.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets).astype(bool)
    if probabilities.shape != targets.shape or probabilities.ndim != 2:
        raise ValueError(f"probabilities and targets must both be N,K; got {probabilities.shape}, {targets.shape}")
    thresholds = np.full(probabilities.shape[1], default, dtype=np.float64)
    for k in range(probabilities.shape[1]):
        y, p = targets[:, k], probabilities[:, k]
        if not y.any():
            continue
        order = np.argsort(-p, kind="stable")
        p_sorted, y_sorted = p[order], y[order]
        tp = np.cumsum(y_sorted)
        fp = np.cumsum(~y_sorted)
        f1 = 2 * tp / (tp + fp + y.sum())
        cut = np.r_[p_sorted[1:] != p_sorted[:-1], True]  # thresholds only between distinct values
        best = int(np.flatnonzero(cut)[np.argmax(f1[cut])])
        below = p_sorted[best + 1] if best + 1 < p_sorted.size else 0.0
        thresholds[k] = 0.5 * (p_sorted[best] + below)
    return thresholds


def save_thresholds(path: Path, thresholds: np.ndarray, class_names: tuple[str, ...]) -> None:
    record = {"thresholds": [float(t) for t in thresholds], "classes": list(class_names)}
    write_json_atomic(path, record)


def load_thresholds(path: Path, num_classes: int) -> np.ndarray:
    """The `num_classes` thresholds saved by `save_thresholds`; ValueError naming the file otherwise."""
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    raw = record.get("thresholds") if isinstance(record, dict) else None
    if not isinstance(raw, list):
        raise ValueError(f"{path}: no 'thresholds' list")
    try:
        values = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: thresholds are not numbers ({err})") from err
    if values.shape != (num_classes,):
        raise ValueError(f"{path}: expected {num_classes} thresholds, found {len(raw)}")
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: thresholds must be finite numbers")
    return values
