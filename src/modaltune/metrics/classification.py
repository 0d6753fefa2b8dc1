"""Accuracy, top-k accuracy, F1, per-class scores and the confusion matrix, through torchmetrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from modaltune.metrics.common import _r, rank_scores

#: Top-k accuracies reported next to (top-1) ``accuracy`` when scores are given, each where k < classes.
TOP_K = (5,)


def classification_metrics(
    preds: Sequence[int] | None,
    targets: Sequence[int],
    labels: list[str],
    *,
    scores: torch.Tensor | None = None,
    top_k: Sequence[int] = TOP_K,
) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix.

    ``preds`` and ``targets`` are class indices into ``labels``. ``scores`` (examples × classes,
    e.g. logits) adds ``top{k}_accuracy`` for each ``k`` in ``top_k`` below the number of classes:
    the share of examples whose true class is among the k best scores, ranked by ``rank_scores``
    (ties: the higher class index first), which is scikit-learn's ``top_k_accuracy_score``, ties
    included. With ``scores``, ``preds`` may be None (the top-ranked class) and must otherwise be
    that class, so that ``accuracy`` is top-1 accuracy under the same rule. The confusion matrix
    has true classes as rows and predicted classes as columns.

    Zero-division conventions (those of torchmetrics, pinned by the tests):

    * precision of a class that is never predicted, recall of a class with no support and
      their F1 are 0.0;
    * macro-F1 averages only over classes that occur in ``targets`` or ``preds``. A class absent
      from both (e.g. a label list longer than a small eval set) says nothing about the model,
      so it neither pulls the mean down (as 0) nor up (as 1). A class that is predicted but has
      no support does count, with F1 0: those predictions are plain mistakes.
    """
    num_classes = len(labels)
    ranked = None
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu()
        if scores.ndim != 2 or scores.shape != (len(targets), num_classes):
            raise ValueError(f"scores must be examples × classes ({len(targets)} × {num_classes}), "
                             f"got {tuple(scores.shape)}")
        ranked = rank_scores(scores)
        top1 = ranked[:, 0].tolist()
        if preds is None:
            preds = top1
        elif list(preds) != top1:
            raise ValueError("preds are not the top-ranked classes of scores (rank them with rank_scores)")
    elif preds is None:
        raise ValueError("need preds or scores")
    p, t = _class_tensors(preds, targets, num_classes)

    accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")(p, t)
    macro_f1 = MulticlassF1Score(num_classes=num_classes, average="macro", zero_division=0)(p, t)
    precision = MulticlassPrecision(num_classes=num_classes, average=None, zero_division=0)(p, t)
    recall = MulticlassRecall(num_classes=num_classes, average=None, zero_division=0)(p, t)
    f1 = MulticlassF1Score(num_classes=num_classes, average=None, zero_division=0)(p, t)
    confusion = MulticlassConfusionMatrix(num_classes=num_classes)(p, t)
    support = confusion.sum(dim=1)  # row sums: how many examples of each true class

    per_class = {
        label: {
            "precision": _r(precision[c]),
            "recall": _r(recall[c]),
            "f1": _r(f1[c]),
            "support": int(support[c]),
        }
        for c, label in enumerate(labels)
    }
    top = {}
    if ranked is not None:
        for k in sorted({int(k) for k in top_k}):
            if 1 <= k < num_classes:
                top[f"top{k}_accuracy"] = _r((ranked[:, :k] == t.unsqueeze(1)).any(dim=1).double().mean())
    return {
        "accuracy": _r(accuracy),
        **top,
        "macro_f1": _r(macro_f1),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


def _class_tensors(
    preds: Sequence[int], targets: Sequence[int], num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    # Checked here because torchmetrics' own messages for these cases do not say which input is wrong.
    if num_classes < 1:
        raise ValueError("labels must name at least one class")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions for {len(targets)} targets")
    if len(targets) == 0:
        raise ValueError("cannot compute classification metrics over zero examples")
    p = torch.as_tensor(list(preds), dtype=torch.long)
    t = torch.as_tensor(list(targets), dtype=torch.long)
    for name, x in (("preds", p), ("targets", t)):
        if int(x.min()) < 0 or int(x.max()) >= num_classes:
            raise ValueError(f"{name} must be class indices in [0, {num_classes}), got {x.tolist()[:10]}...")
    return p, t
