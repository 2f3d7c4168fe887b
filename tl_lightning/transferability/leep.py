r"""LEEP: the log expected empirical prediction of the source classifier for the target labels.

Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate Transferability of
Learned Representations", ICML 2020 (https://arxiv.org/abs/2002.12462).

Given the source model's probabilities ``theta(x_i)`` over its ``Z`` source classes and the
target labels ``y_i`` of ``n`` target samples:

1. empirical joint ``P(y, z) = 1/n sum_{i: y_i = y} theta(x_i)_z``;
2. ``P(z) = sum_y P(y, z)`` and the empirical conditional ``P(y | z) = P(y, z) / P(z)``;
3. the "expected empirical predictor" ``p(y | x) = sum_z P(y | z) theta(x)_z``, and

.. math::

    \mathrm{LEEP} = \frac1n \sum_i \log \sum_z \hat P(y_i \mid z)\, \theta(x_i)_z .

LEEP is the average log-likelihood of a classifier, so it is ``<= 0``, and 0 only when that
classifier is certain and right on every sample; higher means the source classifier's
outputs say more about the target labels. It does not depend on how the source classes are
numbered. A source class that gets zero probability on every sample (``P(z) = 0``) adds
nothing to any sum and is skipped. With one-hot source outputs LEEP equals NCE (the paper's
Section 4; tested).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_lightning.transferability._inputs import as_labels, as_probabilities, one_hot

__all__ = ["leep"]


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP score (``<= 0``; higher: the source classifier should transfer better).

    Args:
        source_probs: ``(n, Z)`` softmax outputs of the source classifier on the target
            training samples (probabilities, not logits).
        labels: ``(n,)`` target class labels, at least 2 classes.

    Raises:
        DataError: Mismatched shapes, rows that are not probabilities, a single class.

    Example:
        >>> import numpy as np
        >>> probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
        >>> round(leep(probs, [0, 0, 1, 1]), 4)
        -0.2955
    """
    theta = as_probabilities(source_probs)
    codes, classes = as_labels(labels, theta.shape[0], against="source_probs")
    n = len(codes)
    joint = one_hot(codes, len(classes)).T @ theta / n  # (C, Z)
    p_z = joint.sum(axis=0)
    # P(z) = 0 means theta(x_i)_z = 0 for every i: the column's weight in the sum below is 0.
    conditional = np.divide(joint, p_z[None, :], out=np.zeros_like(joint), where=p_z[None, :] > 0)
    # p(y_i | x_i) = theta_i . P(y_i | .), one matrix-vector product per class: no second (n, Z)
    # array, which matters for 21k-class source heads.
    eep = np.empty(n)
    for c in range(len(classes)):
        members = codes == c
        eep[members] = theta[members] @ conditional[c]
    return float(np.mean(np.log(eep)))
