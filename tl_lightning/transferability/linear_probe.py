"""A quick linear probe: multinomial logistic regression on frozen features, scored on held-out samples.

The most direct (and most expensive) of the transferability estimates: train the head that
feature extraction would train, and measure its accuracy. It is kept fast by fitting full-batch
with L-BFGS (strong-Wolfe line search) from a warm start, in float32 by default (the cost is
reading the feature matrix twice per evaluation, so float32 halves it; ``dtype="float64"`` is
there for exactness and gave the same accuracies in our checks):

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

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from tl_lightning._checks import check_choice, check_int, check_number
from tl_lightning.errors import ConfigurationError, DataError
from tl_lightning.transferability._inputs import _to_numpy, as_features, as_labels

__all__ = ["DEFAULT_L2_GRID", "LinearProbeResult", "linear_probe", "check_l2_grid", "check_val_fraction"]

DEFAULT_L2_GRID: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


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


def check_l2_grid(l2_grid: Any) -> list[float]:
    """``l2_grid`` as a non-empty list of numbers >= 0, else a ConfigurationError."""
    if isinstance(l2_grid, (str, bytes)) or not isinstance(l2_grid, Sequence):
        raise ConfigurationError(
            f"l2_grid must be a list of L2 strengths >= 0, e.g. {list(DEFAULT_L2_GRID)}, got {l2_grid!r}"
        )
    grid = [check_number(f"l2_grid[{i}]", v, low=0.0) for i, v in enumerate(l2_grid)]
    if not grid:
        raise ConfigurationError(
            f"l2_grid is empty; give at least one L2 strength, e.g. {list(DEFAULT_L2_GRID)}"
        )
    return grid


def check_val_fraction(val_fraction: Any) -> float:
    """``val_fraction`` in ``(0, 1)``, else a ConfigurationError."""
    return check_number("val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)


def _stratified_split(codes: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val_parts = []
    for c in range(int(codes.max()) + 1):
        members = rng.permutation(np.flatnonzero(codes == c))
        take = min(int(round(fraction * len(members))), len(members) - 1)
        val_parts.append(members[:take])
    val = np.sort(np.concatenate(val_parts))
    fit = np.setdiff1d(np.arange(len(codes)), val)
    return fit, val


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


# Below this many feature-matrix entries x classes one evaluation takes about a millisecond on one
# core, and torch's intra-op threads only add synchronisation: on a loaded 2-core machine a
# 180 x 10 probe took 10 s with 2 threads and 0.2 s with 1.
_SINGLE_THREAD_WORK = 2_000_000


@contextmanager
def _threads_for(work: int) -> Iterator[None]:
    """Run small fits on one torch thread (restored afterwards); large ones as configured."""
    before = torch.get_num_threads()
    if work >= _SINGLE_THREAD_WORK or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fit_softmax_regression(
    x: torch.Tensor, x_t: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, l2: float, max_iter: int
) -> torch.Tensor:
    """Minimise mean CE + l2/2 ||W||^2 from ``weights`` ((d + 1, C), last row the bias) with L-BFGS.

    The gradient is written out (``X^T (P - Y) / n``) with a contiguous ``X^T`` (``x_t``): BLAS on
    the transposed view autograd would use is 2-3x slower on CPU, and this is the whole cost.
    """
    w = weights.clone()
    n = x.shape[0]
    rows = torch.arange(n)
    optimizer = torch.optim.LBFGS(
        [w],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        # Stop at the dtype's resolution of an O(1) loss: iterating below it only burns time.
        tolerance_grad=1e-5 if x.dtype == torch.float32 else 1e-7,
        tolerance_change=1e-7 if x.dtype == torch.float32 else 1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        log_p = torch.log_softmax(x @ w[:-1] + w[-1], dim=1)
        loss = -log_p[rows, y].mean() + 0.5 * l2 * (w[:-1] ** 2).sum()
        residual = log_p.exp()
        residual[rows, y] -= 1.0
        residual /= n
        w.grad = torch.cat([x_t @ residual + l2 * w[:-1], residual.sum(dim=0, keepdim=True)])
        return loss

    with torch.no_grad():
        optimizer.step(closure)
    return w


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
    dtypes = {"float32": torch.float32, "float64": torch.float64}
    torch_dtype = dtypes[check_choice("dtype", dtype, list(dtypes))]
    grid = check_l2_grid(l2_grid)
    if (val_features is None) != (val_labels is None):
        raise ConfigurationError(
            "give both val_features and val_labels, or neither (then part of the training samples "
            "is held out)"
        )

    f = as_features(features)
    codes, classes = as_labels(labels, f.shape[0])
    if val_features is None:
        fit_idx, val_idx = _stratified_split(codes, val_fraction, seed)
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

    mean = x_fit.mean(axis=0)
    std = x_fit.std(axis=0)
    std = np.where(std > 1e-12 * max(float(std.max()), 1e-300), std, 1.0)
    xf = torch.from_numpy((x_fit - mean) / std).to(torch_dtype)
    xf_t = xf.T.contiguous()
    xv = torch.from_numpy((x_val - mean) / std).to(torch_dtype)
    yf = torch.from_numpy(y_fit)
    yv = torch.from_numpy(y_val)

    weights = torch.zeros(f.shape[1] + 1, len(classes), dtype=torch_dtype)
    accuracy_per_l2: dict[float, float] = {}
    best_l2, best_acc = None, -1.0
    with _threads_for(x_fit.size * len(classes)):
        for l2 in sorted(set(grid), reverse=True):
            weights = _fit_softmax_regression(xf, xf_t, yf, weights, l2, max_iter)
            with torch.no_grad():
                acc = float(((xv @ weights[:-1] + weights[-1]).argmax(dim=1) == yv).double().mean())
            accuracy_per_l2[l2] = acc
            if acc > best_acc:
                best_l2, best_acc = l2, acc
    assert best_l2 is not None  # the grid is non-empty
    return LinearProbeResult(
        accuracy=best_acc,
        l2=best_l2,
        accuracy_per_l2=dict(sorted(accuracy_per_l2.items())),
        n_fit=len(y_fit),
        n_val=len(y_val),
        held_out=held_out,
    )
