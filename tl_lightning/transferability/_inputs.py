"""Input checks shared by the estimators: every estimator sees float64 numpy arrays and integer label codes.

A bad input gets one :class:`~tl_lightning.errors.DataError` line naming the argument, what is
wrong with it and the fix. Features and probabilities may come as numpy arrays, torch tensors
(any dtype, any device) or nested lists; labels may be integers or strings (any hashable that
numpy can sort), they are recoded to ``0 .. C-1`` in sorted order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tl_lightning.errors import DataError

__all__ = ["as_features", "as_labels", "as_probabilities", "one_hot"]


def _to_numpy(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        # bf16 / fp16 tensors have no numpy dtype: go through float64 on the CPU.
        return value.detach().to("cpu", torch.float64).numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as err:  # ragged lists
        raise DataError(
            f"{name} could not be read as an array ({err}); pass a numpy array or a torch tensor"
        ) from err


def as_features(value: Any, name: str = "features", *, min_rows: int = 2) -> np.ndarray:
    """``value`` as a finite float64 matrix ``(n, d)`` with at least ``min_rows`` rows."""
    array = _to_numpy(value, name)
    if array.ndim != 2:
        raise DataError(
            f"{name} must be a 2-D array (samples x feature dims), got shape {tuple(array.shape)}; "
            "flatten or pool the backbone output to one vector per sample"
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise DataError(f"{name} must hold numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    n, d = array.shape
    if n < min_rows or d < 1:
        raise DataError(f"{name} has shape {(n, d)}; need at least {min_rows} samples and 1 feature dim")
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DataError(
            f"{name} has {int(bad.sum())} non-finite values (NaN/inf) in {len(rows)} of {n} samples, "
            f"first at row {int(rows[0])}; fix the feature extraction (e.g. fp16 overflow: extract in fp32)"
        )
    return array


def as_labels(
    value: Any, n: int, name: str = "labels", *, against: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes, classes)``: ``codes[i]`` indexes ``classes`` (sorted), for ``n`` samples and >= 2 classes.

    ``against`` names the array whose ``n`` rows the labels must match (for the message).
    """
    array = _to_numpy(value, name)
    if array.ndim != 1:
        raise DataError(
            f"{name} must be a 1-D array of class labels (one per sample), got shape {tuple(array.shape)}; "
            "pass class indices, not one-hot rows"
        )
    if len(array) != n:
        raise DataError(
            f"{name} has {len(array)} entries but {against} has {n} rows; they must match, one per sample"
        )
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.all(array == np.round(array)):
            raise DataError(f"{name} must be class labels (integers or strings), got non-integer floats")
        array = array.astype(np.int64)
    classes, codes = np.unique(array, return_inverse=True)
    if len(classes) < 2:
        raise DataError(
            f"{name} hold a single class ({classes[0]!r} for all {n} samples); transferability needs "
            "at least 2 classes"
        )
    return codes.astype(np.int64).reshape(-1), classes


def as_probabilities(value: Any, name: str = "source_probs", *, atol: float = 1e-3) -> np.ndarray:
    """``value`` as an ``(n, Z)`` float64 matrix of probability rows (non-negative, summing to 1)."""
    probs = as_features(value, name, min_rows=1)
    if probs.shape[1] < 2:
        raise DataError(
            f"{name} has {probs.shape[1]} source class; need the source classifier's >= 2 outputs"
        )
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if probs.min() < 0 or abs(sums[worst] - 1.0) > atol:
        raise DataError(
            f"{name} rows must be probabilities (non-negative, summing to 1); row {worst} sums to "
            f"{sums[worst]:.4g} (min entry {probs.min():.4g}); pass softmax(logits, dim=1), not the logits"
        )
    # Rows from float32 softmax sum to 1 only to ~1e-7: renormalise so the estimators are exact.
    return probs / sums[:, None]


def one_hot(codes: np.ndarray, num_classes: int) -> np.ndarray:
    """``(n, C)`` float64 one-hot matrix of integer ``codes``."""
    out = np.zeros((len(codes), num_classes), dtype=np.float64)
    out[np.arange(len(codes)), codes] = 1.0
    return out
