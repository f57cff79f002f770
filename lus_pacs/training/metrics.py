"""Multi-class metrics as paper 003 reports them: per-score precision, recall and F1, averaged
with weights (the share of instances having each score), and confusion matrices."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata


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
    # Mann-Whitney: the positives' mid-ranks among all scores (ties share their mean rank), in
    # O(n log n) memory and time, so that millions of pixels can be scored.
    ranks = rankdata(s)
    above = ranks[y].sum() - positives.size * (positives.size + 1) / 2
    return float(above / (positives.size * negatives.size))


def within_group_auc(scores: npt.ArrayLike, labels: npt.ArrayLike, groups: npt.ArrayLike) -> float:
    """AUC counting only pairs from the same group: the chance that a positive scores above a
    negative of its own source (device, site), ties half. Each group holding both classes
    weighs by its number of such pairs; NaN when no group holds both.

    Pooled :func:`roc_auc` over sources also rewards (or punishes) where each source's scores
    sit as a whole; a site running the node on one device sees only the order within it.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    g = np.asarray(groups)
    above = pairs = 0.0
    for group in np.unique(g):
        mine = g == group
        n_pos = int(y[mine].sum())
        n_neg = int(mine.sum()) - n_pos
        if n_pos and n_neg:
            above += roc_auc(s[mine], y[mine]) * n_pos * n_neg
            pairs += n_pos * n_neg
    return above / pairs if pairs else float("nan")


def quadratic_kappa(truth: npt.ArrayLike, predicted: npt.ArrayLike, n_classes: int) -> float:
    """Cohen's kappa with quadratic weights: 1 = perfect agreement, 0 = chance, <0 = worse.

    NaN when the truth and the predictions are each a single, equal class (no variation to
    agree on).
    """
    observed = confusion(truth, predicted, n_classes).astype(np.float64)
    n = observed.sum()
    if n == 0:
        return float("nan")
    classes = np.arange(n_classes)
    weights = (classes[:, None] - classes[None, :]) ** 2 / max(n_classes - 1, 1) ** 2
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / n
    chance = float((weights * expected).sum())
    if chance == 0:
        return float("nan")
    return 1.0 - float((weights * observed).sum()) / chance


def binary_metrics(
    scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float
) -> dict[str, float]:
    """AUC, and sensitivity, specificity and F1 of ``score >= threshold``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    called = s >= threshold
    tp = float((called & y).sum())
    fp = float((called & ~y).sum())
    fn = float((~called & y).sum())
    tn = float((~called & ~y).sum())
    nan = float("nan")
    return {
        "auc": roc_auc(s, y),
        "sensitivity": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else nan,
        "n": float(y.size),
        "positives": float(y.sum()),
    }


def exact_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion of ``k`` in ``n``: where every resample of a
    bootstrap gives the same 0 or 1 (0 of 4 found: [0.00, 0.00]), this says what the count
    allows ([0.00, 0.60])."""
    from scipy.stats import beta

    if n == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low = 0.0 if k == 0 else float(beta.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - tail, k + 1, n - k))
    return low, high


def source_bootstrap_interval(
    statistic: Callable[[npt.NDArray[np.intp], npt.NDArray[np.intp]], float],
    groups: npt.ArrayLike,
    *,
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices, sources)`` resampling whole
    sources (each case's in ``groups``) with replacement: clips of one source (one device,
    site, publisher) are alike, so resampling clips one by one understates how a figure moves
    with the sources drawn. ``sources`` numbers the drawn sources of each index, a source drawn
    twice under two numbers: a statistic over pairs within a source (:func:`within_group_auc`)
    must count its copies as two sources, not one source with four times the pairs. NaN when
    fewer than two sources; undefined resamples are dropped."""
    g = np.asarray(groups)
    members = [np.flatnonzero(g == name) for name in np.unique(g)]
    if len(members) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)

    def draw() -> float:
        chosen = rng.integers(0, len(members), len(members))
        indices = np.concatenate([members[k] for k in chosen])
        sources = np.repeat(np.arange(len(chosen)), [len(members[k]) for k in chosen])
        return statistic(indices, sources)

    return _percentiles([draw() for _ in range(rounds)], level)


def bootstrap_interval(
    statistic: Callable[[npt.NDArray[np.intp]], float],
    n: int,
    *,
    rounds: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` cases resampled with
    replacement; resamples where the statistic is undefined (NaN) are dropped."""
    rng = np.random.default_rng(seed)
    return _percentiles([statistic(rng.integers(0, n, n)) for _ in range(rounds)], level)


def _percentiles(drawn: list[float], level: float) -> tuple[float, float]:
    """The percentile interval of the resampled statistics, the undefined ones dropped."""
    values = np.array(drawn, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
