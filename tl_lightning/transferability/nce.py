r"""NCE: the negative conditional entropy of the target labels given the source model's labels.

Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised Classification Tasks",
ICCV 2019 (https://arxiv.org/abs/1908.08142).

Each target sample gets a source label ``z_i`` (the source classifier's hard prediction, the
argmax of its outputs); with the empirical joint ``P(y, z) = #{i: y_i = y, z_i = z} / n``

.. math::

    \mathrm{NCE} = -H(Y \mid Z) = \sum_{y, z} \hat P(y, z) \log \frac{\hat P(y, z)}{\hat P(z)} .

Properties (from the definition of conditional entropy): ``-log C <= NCE <= 0`` for ``C``
target classes; ``NCE = 0`` exactly when the target label is a function of the source label
(every source class maps to one target class); it does not depend on how either label set is
numbered. Higher means the source classifier's decisions say more about the target labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tl_lightning.errors import DataError
from tl_lightning.transferability._inputs import _to_numpy, as_features, as_labels

__all__ = ["nce", "source_labels_of"]


def source_labels_of(source: Any, name: str = "source_probs") -> np.ndarray:
    """Integer source labels: the argmax of ``(n, Z)`` outputs, or ``(n,)`` labels recoded to ``0 .. Z-1``.

    The argmax is the same for probabilities and logits; ties go to the lowest class index.
    """
    array = _to_numpy(source, name)
    if array.ndim == 2:
        return np.argmax(as_features(array, name, min_rows=1), axis=1).astype(np.int64)
    if array.ndim == 1:
        return np.unique(array, return_inverse=True)[1].astype(np.int64).reshape(-1)
    raise DataError(
        f"{name} must be the source classifier's (n, Z) outputs or its (n,) hard labels, "
        f"got shape {tuple(array.shape)}"
    )


def nce(source: Any, labels: Any) -> float:
    """NCE score (``<= 0``; higher: the source labels predict the target labels better).

    Args:
        source: ``(n, Z)`` outputs of the source classifier on the target training samples
            (probabilities or logits: only the argmax is used), or its ``(n,)`` hard labels.
        labels: ``(n,)`` target class labels, at least 2 classes.

    Raises:
        DataError: Mismatched lengths, non-finite outputs, a single target class.

    Example:
        >>> nce([0, 0, 1, 1], ["cat", "cat", "dog", "dog"])  # target is a function of source
        0.0
    """
    z = source_labels_of(source)
    y, classes = as_labels(labels, len(z), against="source_probs")
    n = len(y)
    counts = np.zeros((len(classes), int(z.max()) + 1))
    np.add.at(counts, (y, z), 1.0)
    per_source = counts.sum(axis=0, keepdims=True)
    # Cells with no sample contribute 0 log 0 = 0.
    ratio = np.divide(counts, per_source, out=np.ones_like(counts), where=counts > 0)
    return float((counts * np.log(ratio)).sum() / n) + 0.0  # + 0.0 turns -0.0 into 0.0
