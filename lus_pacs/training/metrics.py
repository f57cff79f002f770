"""Multi-class metrics as paper 003 reports them: per-score precision, recall and F1, averaged
with weights (the share of instances having each score), and confusion matrices."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def confusion(
    truth: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int
) -> npt.NDArray[np.int64]:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    t = np.asarray(truth, dtype=np.intp)
    p = np.asarray(predicted, dtype=np.intp)
    if t.shape != p.shape:
        raise ValueError(f"truth {t.shape} and predictions {p.shape} differ in shape.")
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (t, p), 1)
    return matrix


def weighted_metrics(
    truth: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int
) -> dict[str, float]:
    """Weighted precision, recall (= accuracy) and F1, and the macro F1 over present classes.

    A class never predicted has precision 0 (scikit-learn's ``zero_division=0``); classes
    absent from the truth weigh nothing in the weighted means and are left out of the macro F1.
    """
    matrix = confusion(truth, predicted, n_classes).astype(np.float64)
    support = matrix.sum(axis=1)
    n = support.sum()
    if n == 0:
        nan = float("nan")
        return {"precision": nan, "recall": nan, "f1": nan, "macro_f1": nan, "n": 0.0}
    hits = np.diag(matrix)
    predicted_count = matrix.sum(axis=0)
    precision = np.divide(hits, predicted_count, out=np.zeros(n_classes), where=predicted_count > 0)
    recall = np.divide(hits, support, out=np.zeros(n_classes), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(
        2 * precision * recall, denominator, out=np.zeros(n_classes), where=denominator > 0
    )
    weights = support / n
    present = support > 0
    return {
        "precision": round(float((weights * precision).sum()), 4),
        "recall": round(float((weights * recall).sum()), 4),
        "f1": round(float((weights * f1).sum()), 4),
        "macro_f1": round(float(f1[present].mean()), 4),
        "n": float(n),
    }


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative (ties count half); NaN when either class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    positives, negatives = s[y], s[~y]
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((greater + 0.5 * ties) / (positives.size * negatives.size))
