"""Linear CKA: how similar two representations of the same examples are (Kornblith et al., 2019).

For activations ``X`` (n examples x p features) and ``Y`` (n x q), linear CKA compares the
example-by-example similarity structures ``K = X X^T`` and ``L = Y Y^T``:

    CKA = HSIC(K, L) / sqrt(HSIC(K, K) * HSIC(L, L))

It is 1 for identical representations (and for ones that differ by a rotation or an isotropic
scaling), and near 0 for unrelated ones. Only the ``n x n`` Gram matrices are needed, so a
reference representation is kept as its Gram matrix, whatever its width.

The plain estimator is biased upwards when there are more features than examples (two unrelated
wide representations score high); the *debiased* estimator (unbiased HSIC, Song et al., 2012;
as in Nguyen, Raghu & Kornblith, 2021) removes that bias and is what the forgetting monitor
uses. It needs at least 4 examples and can be slightly negative for unrelated representations.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gram", "gram_cka", "linear_cka"]


def gram(x: Tensor) -> Tensor:
    """``X X^T`` (float64) of activations ``x`` flattened to ``(n, features)``."""
    flat = x.detach().reshape(x.shape[0], -1).float()
    return (flat @ flat.T).double()


def _center(k: Tensor) -> Tensor:
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def _hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:
    n = k.shape[0]
    k = k.clone()
    l = l.clone()
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    term = (k * l).sum()
    term = term + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    term = term - 2.0 / (n - 2) * (ones @ k @ l @ ones)
    return term / (n * (n - 3))


def gram_cka(k: Tensor, l: Tensor, debiased: bool = True) -> float:
    """Linear CKA from two Gram matrices of the same ``n`` examples.

    Args:
        k: ``X X^T`` (``n x n``).
        l: ``Y Y^T`` (``n x n``).
        debiased: Unbiased HSIC estimator (needs ``n >= 4``); else the plain (biased) one.

    Returns:
        The CKA; ``nan`` when a representation is constant over the examples.
    """
    if k.shape != l.shape or k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(
            f"Gram matrices must be square and of the same size, got {tuple(k.shape)} and {tuple(l.shape)}"
        )
    k, l = k.double(), l.to(device=k.device, dtype=torch.float64)
    if debiased:
        if k.shape[0] < 4:
            raise ValueError(f"debiased CKA needs at least 4 examples, got {k.shape[0]}; use debiased=False")
        kl, kk, ll = _hsic_unbiased(k, l), _hsic_unbiased(k, k), _hsic_unbiased(l, l)
    else:
        kc, lc = _center(k), _center(l)
        kl, kk, ll = (kc * lc).sum(), (kc * kc).sum(), (lc * lc).sum()
    denom = kk * ll
    if not bool(denom > 0):
        return float("nan")
    return float(kl / denom.sqrt())


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> float:
    """Linear CKA between activations of the same examples (first dimension), any feature shapes.

    Example:
        >>> import torch
        >>> x = torch.randn(50, 20)
        >>> round(linear_cka(x, x), 6)
        1.0
        >>> round(linear_cka(x, 3 * x @ torch.linalg.qr(torch.randn(20, 20))[0]), 6)  # rotation + scale
        1.0
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same examples, got {x.shape[0]} and {y.shape[0]} rows")
    return gram_cka(gram(x), gram(y), debiased=debiased)
