"""A quick linear probe: multinomial logistic regression on frozen features, scored on held-out samples.

The most direct (and most expensive) of the transferability estimates: train the head that
feature extraction would train, and measure its accuracy. The fit is
:func:`tl_lightning.features.fit_logistic_regression` (the same L-BFGS fit that initialises heads
in cached-feature training and LP-FT): full-batch L-BFGS (strong-Wolfe line search) from a warm
start, in float32 by default (the cost is reading the feature matrix twice per evaluation, so
float32 halves it; ``dtype="float64"`` is there for exactness and gave the same accuracies in
our checks):

* the features are standardised with the fitting part's mean and standard deviation (so one L2
  grid suits every backbone, whatever the scale of its features; constant dims are left as 0);
* the loss is the mean cross-entropy plus ``l2 / 2 * ||W||^2`` (the bias is not penalised);
* each strength in ``l2_grid`` is fitted from the strongest to the weakest, each starting from
  the previous solution, and the one with the best validation accuracy is kept (ties go to the
  stronger regularisation).

Validation part: ``val_features`` / ``val_labels`` when given, otherwise a stratified
``val_fraction`` of the training samples (seeded; a class with a single sample stays in the
fitting part). The reported accuracy is measured on the same part that chose ``l2``, so it is
slightly optimistic (a maximum over ``len(l2_grid)`` fits); that bias is the same for every
candidate, which is what a ranking needs.

Deterministic: no random initialisation (zeros), a seeded split, full-batch on the CPU (same
inputs and thread count, same result). Small problems (under 2M feature entries x classes) run
on one torch thread, restored afterwards: there the threads only cost synchronisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from tl_lightning._checks import check_choice, check_int
from tl_lightning.errors import ConfigurationError, DataError
from tl_lightning.features.linear import (
    DEFAULT_L2_GRID,
    check_l2_grid,
    check_val_fraction,
    fit_logistic_regression,
    stratified_holdout,
)
from tl_lightning.transferability._inputs import _to_numpy, as_features, as_labels

__all__ = ["DEFAULT_L2_GRID", "LinearProbeResult", "linear_probe", "check_l2_grid", "check_val_fraction"]


@dataclass(frozen=True)
class LinearProbeResult:
    """Outcome of :func:`linear_probe`.

    Attributes:
        accuracy: Validation accuracy at the chosen ``l2``.
        l2: The chosen L2 strength.
        accuracy_per_l2: Validation accuracy of every strength tried.
        n_fit: Samples the probe was fitted on.
        n_val: Samples it was scored on.
        held_out: ``True`` when the validation part was split off the training samples,
            ``False`` when ``val_features`` were given.
    """

    accuracy: float
    l2: float
    accuracy_per_l2: dict[float, float]
    n_fit: int
    n_val: int
    held_out: bool


def _val_codes(val_labels: Any, n_val: int, classes: np.ndarray) -> np.ndarray:
    array = _to_numpy(val_labels, "val_labels")
    if array.ndim != 1 or len(array) != n_val:
        raise DataError(
            f"val_labels must be 1-D with one label per val_features row ({n_val}), "
            f"got shape {tuple(array.shape)}"
        )
    try:
        pos = np.searchsorted(classes, array)
        known = (pos < len(classes)) & (classes[np.minimum(pos, len(classes) - 1)] == array)
    except TypeError as err:  # e.g. string labels against integer classes
        raise DataError(
            f"val_labels ({array.dtype}) are not comparable with the training labels ({classes.dtype})"
        ) from err
    if not known.all():
        unseen = sorted({str(v) for v in array[~known]})[:5]
        raise DataError(
            f"val_labels contain classes not in the training labels: {unseen}; the probe can only predict "
            f"training classes {[str(c) for c in classes[:10]]}{' ...' if len(classes) > 10 else ''}"
        )
    return pos.astype(np.int64)


def linear_probe(
    features: Any,
    labels: Any,
    *,
    val_features: Any = None,
    val_labels: Any = None,
    val_fraction: float = 0.2,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    max_iter: int = 100,
    seed: int = 0,
    dtype: Literal["float32", "float64"] = "float32",
) -> LinearProbeResult:
    """Fit a logistic-regression probe on ``features`` and return its validation accuracy.

    Args:
        features: ``(n, d)`` training features.
        labels: ``(n,)`` training labels, at least 2 classes.
        val_features: Optional ``(m, d)`` validation features; without them a stratified
            ``val_fraction`` of the training samples is held out.
        val_labels: ``(m,)`` labels of ``val_features`` (classes seen in ``labels``).
        val_fraction: Share of each class held out when no validation features are given.
        l2_grid: L2 strengths to try (on standardised features, mean loss).
        max_iter: Most L-BFGS iterations per strength.
        seed: Seed of the held-out split.
        dtype: Precision of the fit (the standardisation is computed in float64 either way).

    Raises:
        ConfigurationError: Bad ``val_fraction`` / ``l2_grid`` / ``max_iter``, or only one of
            ``val_features`` and ``val_labels``.
        DataError: Mismatched shapes, non-finite features, a single class, unseen validation
            classes, or too few samples to hold any out.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> f = rng.normal(size=(300, 8)) + 2 * np.eye(8)[y]
        >>> linear_probe(f, y).accuracy > 0.8
        True
    """
    val_fraction = check_val_fraction(val_fraction)
    max_iter = check_int("max_iter", max_iter, low=1)
    seed = check_int("seed", seed, low=0)
    check_choice("dtype", dtype, ("float32", "float64"))
    grid = check_l2_grid(l2_grid)
    if (val_features is None) != (val_labels is None):
        raise ConfigurationError(
            "give both val_features and val_labels, or neither (then part of the training samples "
            "is held out)"
        )

    f = as_features(features)
    codes, classes = as_labels(labels, f.shape[0])
    if val_features is None:
        fit_idx, val_idx = stratified_holdout(codes, val_fraction, seed)
        if len(val_idx) == 0:
            raise DataError(
                f"{len(codes)} training samples in {len(classes)} classes leave none to hold out at "
                f"val_fraction={val_fraction:g}; raise val_fraction or pass val_features / val_labels"
            )
        x_fit, y_fit, x_val, y_val = f[fit_idx], codes[fit_idx], f[val_idx], codes[val_idx]
        held_out = True
    else:
        x_val = as_features(val_features, "val_features", min_rows=1)
        if x_val.shape[1] != f.shape[1]:
            raise DataError(
                f"val_features have {x_val.shape[1]} dims but the training features {f.shape[1]}; "
                "extract both with the same backbone and pooling"
            )
        y_val = _val_codes(val_labels, x_val.shape[0], classes)
        x_fit, y_fit = f, codes
        held_out = False

    fit = fit_logistic_regression(
        x_fit,
        y_fit,
        num_classes=len(classes),
        val_features=x_val,
        val_targets=y_val,
        l2_grid=grid,
        max_iter=max_iter,
        dtype=dtype,
    )
    return LinearProbeResult(
        accuracy=fit.accuracy,
        l2=fit.l2,
        accuracy_per_l2=fit.accuracy_per_l2,
        n_fit=len(y_fit),
        n_val=len(y_val),
        held_out=held_out,
    )
