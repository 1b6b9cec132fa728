"""Classification metrics of a trained head on one split, as plain JSON-ready values."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def topk_accuracy(logits: Tensor, y: Tensor, k: int) -> float:
    """Fraction of rows whose true label is among the k highest scores (k capped at C)."""
    if len(y) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1)
    return float(hits.float().mean())


def confusion_matrix(pred: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """(C, C) counts; row = true label, column = predicted label."""
    flat = y * n_classes + pred
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_report(logits: Tensor, y: Tensor, labels: list[str]) -> dict[str, Any]:
    """top-1/top-5, per-class precision/recall/support and the confusion matrix.

    Precision of a label never predicted, and recall of a label absent from the split, are 0.0
    (as scikit-learn's zero_division=0), so the result is always valid JSON.
    """
    n_classes = len(labels)
    pred = logits.argmax(dim=1)
    cm = confusion_matrix(pred, y, n_classes)
    tp = cm.diag().float()
    predicted = cm.sum(dim=0).float()
    support = cm.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1).float(), torch.zeros_like(tp))
    return {
        "top1": topk_accuracy(logits, y, 1),
        "top5": topk_accuracy(logits, y, 5),
        "per_class": {
            label: {
                "precision": round(float(precision[i]), 6),
                "recall": round(float(recall[i]), 6),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
    }
