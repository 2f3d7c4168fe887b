r"""H-score: how much of the feature covariance the class-conditional means explain.

Bao, Li, Huang, Zheng, "An Information-Theoretic Approach to Transferability in Task Transfer
Learning", ICIP 2019; the shrinkage ("regularised") form is from Ibrahim, Ponomareva, Mazumder,
"Newer is not always better: Rethinking transferability metrics, their peculiarities,
stability and performance", ECML-PKDD 2022 (https://arxiv.org/abs/2110.06893).

.. math::

    H(f) = \operatorname{tr}\big(\operatorname{cov}(f)^{-1}\operatorname{cov}(\mathbb{E}[f \mid y])\big)

``cov(E[f|y]) = sum_c p_c (mu_c - mu)(mu_c - mu)^T`` is the between-class covariance
(``p_c`` the class frequencies, ``mu_c`` the class means). Both covariances use ``1/n``.

The sample covariance of ``d``-dim features from ``n`` samples is singular when ``d >= n`` and
ill-conditioned well before that; its inverse then amplifies noise directions and the score
says more about ``d / n`` than about the features (Ibrahim et al. show the raw H-score
collapsing / exploding across model families for exactly this reason). Hence the default,
``shrinkage="ledoit-wolf"``: the Ledoit-Wolf (2004) estimate
``S_a = (1 - a) S + a mu I`` (``mu = tr(S) / d``, ``a`` in ``[0, 1]`` chosen in closed form to
minimise the expected Frobenius error), and the regularised score
``H_a = tr(S_a^-1 (1 - a) cov(E[f|y]))``, i.e. the between-class covariance shrunk by the same
factor. ``shrinkage=<float>`` fixes ``a``; ``shrinkage=None`` is the original score with the
Moore-Penrose pseudo-inverse (eigenvalues below ``rcond * max eigenvalue`` dropped).

Properties (tested): ``0 <= H <= C - 1`` for ``C`` classes (the between-class covariance has
rank ``<= C - 1`` and is dominated by the total covariance); invariant to translating the
features, to permuting the class labels, to scaling the features by a constant and to rotating
them (the shrinkage target ``mu I`` and the Ledoit-Wolf ``a`` are rotation invariant); with no
shrinkage also invariant to any invertible linear map of the features.

Small samples: with a few dozen samples Ledoit-Wolf can choose ``a = 1`` (the sample
covariance is judged pure noise), and ``H_a`` is then 0 whatever the features; rank candidates
on a few hundred samples or more, or fix ``shrinkage``.

Cost: one eigendecomposition of the smaller of ``X^T X`` (``d x d``) and ``X X^T`` (``n x n``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_lightning._checks import check_number
from tl_lightning.errors import ConfigurationError, DataError
from tl_lightning.transferability._inputs import as_features, as_labels, one_hot

__all__ = ["h_score", "ledoit_wolf_shrinkage", "check_shrinkage"]


def check_shrinkage(shrinkage: Any, name: str = "shrinkage") -> str | float | None:
    """``shrinkage`` if ``"ledoit-wolf"``, ``None`` or a number in ``[0, 1)``, else a ConfigurationError."""
    if isinstance(shrinkage, str):
        if shrinkage != "ledoit-wolf":
            raise ConfigurationError(
                f"{name} must be 'ledoit-wolf', a number in [0, 1) or None, got {shrinkage!r}"
            )
        return shrinkage
    if shrinkage is None:
        return None
    return check_number(name, shrinkage, low=0.0, high=1.0, high_open=True, hint="or 'ledoit-wolf' / None")


def ledoit_wolf_shrinkage(centered: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage intensity ``a`` in ``[0, 1]`` for the covariance of ``centered`` ``(n, d)`` rows.

    ``a = min(b2, d2) / d2`` with ``d2 = ||S - mu I||_F^2 / d`` (distance of the sample
    covariance ``S = X^T X / n`` to the target) and
    ``b2 = sum_i ||x_i x_i^T - S||_F^2 / (n^2 d) = (sum_i ||x_i||^4 / n - ||S||_F^2) / (n d)``
    (how noisy ``S`` is), the estimator of Ledoit & Wolf (2004), as in scikit-learn's
    ``ledoit_wolf_shrinkage``.
    """
    n, d = centered.shape
    small = centered.T @ centered if d <= n else centered @ centered.T
    s_frob2 = float((small**2).sum()) / n**2  # ||S||_F^2: X^T X and X X^T share their nonzero spectrum
    mu = float(np.trace(small)) / (n * d)
    d2 = (s_frob2 - d * mu**2) / d
    if d2 <= 0:  # S is already a multiple of the identity
        return 0.0
    b2 = (float(((centered**2).sum(axis=1) ** 2).sum()) / n - s_frob2) / (n * d)
    return float(min(max(b2, 0.0), d2) / d2)


def h_score(
    features: Any,
    labels: Any,
    *,
    shrinkage: str | float | None = "ledoit-wolf",
    rcond: float = 1e-10,
) -> float:
    """H-score of ``features`` for ``labels`` (higher: classes separate better along the feature covariance).

    Args:
        features: ``(n, d)`` features of the target training split.
        labels: ``(n,)`` class labels, at least 2 classes.
        shrinkage: ``"ledoit-wolf"`` (default, Ibrahim et al.'s regularised H-score), a fixed
            shrinkage ``a`` in ``[0, 1)``, or ``None`` for the original score with a
            pseudo-inverse.
        rcond: With ``shrinkage=None``, eigenvalues below ``rcond * max eigenvalue`` count as 0.

    Raises:
        ConfigurationError: An unknown ``shrinkage``.
        DataError: Mismatched shapes, a single class, non-finite or constant features,
            ``shrinkage=0`` with a singular covariance.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> f = rng.normal(size=(300, 8)) + 3 * np.eye(8)[y]
        >>> 0 < h_score(rng.normal(size=(300, 8)), y) < 0.1 < 1 < h_score(f, y) <= 2
        True
    """
    shrinkage = check_shrinkage(shrinkage)
    rcond = check_number("rcond", rcond, low=0.0, low_open=True)
    f = as_features(features)
    codes, classes = as_labels(labels, f.shape[0])
    n, d = f.shape
    x = f - f.mean(axis=0)
    onehot = one_hot(codes, len(classes))
    counts = onehot.sum(axis=0)
    # Rows sqrt(p_c) (mu_c - mu): between = G^T G, with cov(f) = X^T X / n.
    g = (onehot.T @ x) / counts[:, None] * np.sqrt(counts / n)[:, None]

    if d <= n:
        eigvals, eigvecs = np.linalg.eigh(x.T @ x / n)
    else:
        # The d x d covariance has at most n nonzero eigenvalues: get them and their eigenvectors
        # from the n x n Gram matrix; the class means lie in the span of the rows, so G has no
        # component outside it.
        eigvals, u = np.linalg.eigh(x @ x.T / n)
        keep = eigvals > eigvals.max() * 1e-12
        eigvals, u = eigvals[keep], u[:, keep]
        eigvecs = x.T @ u / np.sqrt(n * eigvals)[None, :]
    top = float(eigvals.max())
    # Centering features that are constant leaves rounding noise of relative size ~1e-16.
    if top <= 1e-20 * float(np.mean(f**2)):
        raise DataError("features are constant across samples; the H-score needs features that vary")
    eigvals = np.maximum(eigvals, 0.0)
    between = ((g @ eigvecs) ** 2).sum(axis=0)  # diag of V^T G^T G V

    if shrinkage is None:
        kept = eigvals > rcond * top
        return float((between[kept] / eigvals[kept]).sum())
    a = ledoit_wolf_shrinkage(x) if shrinkage == "ledoit-wolf" else float(shrinkage)
    rank = int((eigvals > top * 1e-12).sum())  # the n x n route keeps only these
    if a == 0 and rank < d:
        how = "the Ledoit-Wolf shrinkage is 0" if shrinkage == "ledoit-wolf" else "shrinkage=0"
        raise DataError(
            f"the feature covariance is singular (rank {rank} < {d} dims, from {n} samples) and "
            f"{how}, which does not regularise it; use shrinkage='ledoit-wolf', a number in (0, 1) or None"
        )
    mu = float((x**2).sum()) / (n * d)
    shrunk = (1 - a) * eigvals + a * mu
    return float((1 - a) * (between / shrunk).sum())
