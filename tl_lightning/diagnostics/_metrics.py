"""Per-class precision / recall / F1 / support from predictions, in plain torch.

Conventions (those of scikit-learn's ``classification_report`` with ``zero_division=0``): a
class never predicted has precision 0, a class absent from the targets recall 0, and F1 is 0
when precision and recall are both 0. ``macro avg`` is the unweighted mean over classes,
``weighted avg`` the mean weighted by support; ``accuracy`` (multi-class) is the share of
correct predictions and sits in the F1 column, as in scikit-learn's report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["COLUMNS", "confusion_matrix", "multilabel_report", "report_from_confusion"]

#: columns of every report row
COLUMNS = ("label", "precision", "recall", "f1", "support")


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """``cm[t, p]``: how many examples of true class ``t`` were predicted as ``p`` (int64)."""
    preds, targets = preds.long().flatten(), targets.long().flatten()
    bad = (targets < 0) | (targets >= num_classes) | (preds < 0) | (preds >= num_classes)
    if bool(bad.any()):
        raise ValueError(f"class indices must be in [0, {num_classes}), got targets/preds outside it")
    return torch.bincount(targets * num_classes + preds, minlength=num_classes * num_classes).view(
        num_classes, num_classes
    )


def _prf(tp: Tensor, fp: Tensor, fn: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    tp, fp, fn = tp.double(), fp.double(), fn.double()
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0,
        2 * precision * recall / (precision + recall).clamp(min=1e-300),
        torch.zeros_like(tp),
    )
    return precision, recall, f1


def _rows(
    labels: Sequence[str], precision: Tensor, recall: Tensor, f1: Tensor, support: Tensor
) -> list[dict[str, Any]]:
    rows = [
        {"label": str(label), "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for label, p, r, f, s in zip(labels, precision, recall, f1, support)
    ]
    total = int(support.sum())
    weights = support.double() / total if total else torch.zeros_like(precision)
    rows.append(
        {
            "label": "macro avg",
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
            "support": total,
        }
    )
    rows.append(
        {
            "label": "weighted avg",
            "precision": float((precision * weights).sum()),
            "recall": float((recall * weights).sum()),
            "f1": float((f1 * weights).sum()),
            "support": total,
        }
    )
    return rows


def report_from_confusion(cm: Tensor, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the multi-class report: one per class, then ``accuracy``, ``macro avg``, ``weighted avg``.

    Example:
        >>> import torch
        >>> cm = confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2)
        >>> [round(r["f1"], 3) for r in report_from_confusion(cm, ["a", "b"])]
        [0.667, 0.667, 0.667, 0.667, 0.667]
    """
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    support = cm.sum(1)
    precision, recall, f1 = _prf(tp, fp, fn)
    rows = _rows(labels, precision, recall, f1, support)
    total = int(cm.sum())
    accuracy = float(tp.sum()) / total if total else 0.0
    rows.insert(
        len(labels),
        {"label": "accuracy", "precision": None, "recall": None, "f1": accuracy, "support": total},
    )
    return rows


def multilabel_report(preds: Tensor, targets: Tensor, labels: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the multi-label report: per label (with its 2x2 counts ``tp fp fn tn``), then the averages.

    ``support`` of a label is the number of examples that carry it.
    """
    p, t = preds.bool(), targets.bool()
    tp = (p & t).sum(0)
    fp = (p & ~t).sum(0)
    fn = (~p & t).sum(0)
    tn = (~p & ~t).sum(0)
    precision, recall, f1 = _prf(tp, fp, fn)
    rows = _rows(labels, precision, recall, f1, t.sum(0))
    for i, row in enumerate(rows[: len(labels)]):
        row.update(tp=int(tp[i]), fp=int(fp[i]), fn=int(fn[i]), tn=int(tn[i]))
    return rows
