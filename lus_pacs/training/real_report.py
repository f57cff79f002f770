"""Clip-level metrics on real clips with 95 % bootstrap intervals, as a markdown table and plots.

One :class:`Row` per family, task and protocol (leave-source-out on the trainable clips, or
external on the evaluation-only clips); :func:`binary_row`, :func:`severity_row` and
:func:`share_row` compute them, :func:`markdown` writes the table, :func:`plot_rocs`,
:func:`plot_confusions` and :func:`plot_calibration` the figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from lus_pacs.training.metrics import (
    binary_metrics,
    bootstrap_interval,
    confusion,
    exact_interval,
    quadratic_kappa,
    roc_auc,
    source_bootstrap_interval,
    weighted_metrics,
    within_group_auc,
)

SCORES = 4
"""Severity scores 0-3."""


@dataclass(frozen=True)
class Metric:
    value: float
    low: float
    high: float
    """The interval resampling clips."""
    source_low: float = float("nan")
    source_high: float = float("nan")
    """The interval resampling whole sources (NaN without sources): wider, and the one to
    read for another device or site, whose clips are alike as a source's are."""

    def __str__(self) -> str:
        if not np.isfinite(self.value):
            return "n/a"
        text = f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"
        if np.isfinite(self.source_low):
            text += f" (by source {self.source_low:.2f}, {self.source_high:.2f})"
        return text


@dataclass(frozen=True)
class Row:
    """One family's metrics on one task under one protocol."""

    family: str
    task: str
    protocol: str
    """``leave-source-out``, ``external`` or ``all real``."""
    n: int
    positives: int | None
    metrics: dict[str, Metric]
    extra: dict[str, object] = field(default_factory=dict)
    """Confusion matrix, curves: what the plots need."""


def binary_row(
    family: str,
    task: str,
    protocol: str,
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    threshold: float,
    *,
    groups: Sequence[str] | None = None,
    rounds: int = 1000,
    seed: int = 0,
) -> Row:
    """AUC, and sensitivity, specificity and F1 at ``threshold``, each with its interval; with
    each clip's source in ``groups``, also the AUC within sources (:func:`within_group_auc`,
    ``auc_within_source``)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    g = None if groups is None else np.asarray(groups)
    if g is not None and len(g) != len(s):
        raise ValueError(f"binary_row: {len(g)} groups for {len(s)} clips.")

    def stats(i: npt.NDArray[np.intp], sources: npt.NDArray[np.generic] | None) -> dict[str, float]:
        found = binary_metrics(s[i], y[i], threshold)
        if sources is not None:
            found["auc_within_source"] = within_group_auc(s[i], y[i], sources)
        return found

    keys = ("auc", "sensitivity", "specificity", "f1")
    metrics = _with_intervals(
        stats, keys if g is None else (*keys, "auc_within_source"), len(s), rounds, seed, g
    )
    called = s >= threshold
    for key, hits, of in (
        ("sensitivity", int((called & y).sum()), int(y.sum())),
        ("specificity", int((~called & ~y).sum()), int((~y).sum())),
    ):
        metrics[key] = _exact_where_degenerate(metrics[key], hits, of)
    return Row(
        family,
        task,
        protocol,
        len(s),
        int(y.sum()),
        metrics,
        {"scores": s.tolist(), "labels": y.tolist(), "threshold": threshold},
    )


def severity_row(
    family: str,
    protocol: str,
    predicted: npt.ArrayLike,
    truth: npt.ArrayLike,
    *,
    rounds: int = 1000,
    seed: int = 0,
    task: str = "severity 0-3",
    groups: Sequence[str] | None = None,
) -> Row:
    """Accuracy, weighted F1 and quadratic-weighted kappa with intervals (also by source with
    each clip's source in ``groups``); the confusion."""
    p = np.asarray(predicted, np.intp)
    t = np.asarray(truth, np.intp)
    g = None if groups is None else np.asarray(groups)

    def stats(i: npt.NDArray[np.intp], _sources: object) -> dict[str, float]:
        return {
            "accuracy": float((p[i] == t[i]).mean()) if i.size else float("nan"),
            "weighted_f1": weighted_metrics(t[i], p[i], SCORES)["f1"],
            "kappa": quadratic_kappa(t[i], p[i], SCORES),
        }

    keys = ("accuracy", "weighted_f1", "kappa")
    metrics = _with_intervals(stats, keys, len(p), rounds, seed, g)
    return Row(
        family,
        task,
        protocol,
        len(p),
        None,
        metrics,
        {"confusion": confusion(t, p, SCORES).tolist()},
    )


def _with_intervals(
    stats: Callable[[npt.NDArray[np.intp], npt.NDArray[np.generic] | None], dict[str, float]],
    keys: tuple[str, ...],
    n: int,
    rounds: int,
    seed: int,
    groups: npt.NDArray[np.generic] | None = None,
) -> dict[str, Metric]:
    """Each of ``keys`` of ``stats(indices, sources)`` on all ``n`` cases, with its bootstrap
    interval over clips and, with each case's source in ``groups``, over sources (``sources``:
    the source of each index, None without ``groups``)."""
    point = stats(np.arange(n), groups)
    metrics = {}
    for key in keys:

        def by_clip(i: npt.NDArray[np.intp], key: str = key) -> float:
            return stats(i, None if groups is None else groups[i])[key]

        def by_source(
            i: npt.NDArray[np.intp], sources: npt.NDArray[np.intp], key: str = key
        ) -> float:
            return stats(i, sources)[key]

        low, high = bootstrap_interval(by_clip, n, rounds=rounds, seed=seed)
        source_interval = (float("nan"), float("nan"))
        if groups is not None:
            source_interval = source_bootstrap_interval(by_source, groups, rounds=rounds, seed=seed)
        metrics[key] = Metric(point[key], low, high, *source_interval)
    return metrics


def share_row(
    family: str, task: str, protocol: str, flags: npt.ArrayLike, *, rounds: int = 1000
) -> Row:
    """The share of clips for which ``flags`` is true, with its interval."""
    f = np.asarray(flags, bool)
    point = float(f.mean()) if f.size else float("nan")
    low, high = bootstrap_interval(lambda i: float(f[i].mean()), len(f), rounds=rounds)
    share = _exact_where_degenerate(Metric(point, low, high), int(f.sum()), len(f))
    return Row(family, task, protocol, len(f), int(f.sum()), {"share": share})


def _exact_where_degenerate(metric: Metric, k: int, n: int) -> Metric:
    """``metric`` (a proportion of ``k`` in ``n``) with the exact interval in place of a
    bootstrap interval of no width: at 0 or 1 every resample agrees, and 7 of 7 printed
    [1.00, 1.00] where the count allows [0.59, 1.00]."""
    if not n:
        return metric
    low, high = exact_interval(k, n)
    if np.isfinite(metric.low) and metric.low == metric.high:
        metric = replace(metric, low=low, high=high)
    if np.isfinite(metric.source_low) and metric.source_low == metric.source_high:
        metric = replace(metric, source_low=low, source_high=high)
    return metric


def markdown(rows: Sequence[Row]) -> str:
    """The table: one line per row, metrics as ``value [low, high]`` (resampling clips) and,
    where the clips' sources are known, ``(by source low, high)`` (resampling sources)."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row.metrics if k not in keys)
    head = ["family", "task", "protocol", "clips", "positives", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row.family,
            row.task,
            row.protocol,
            str(row.n),
            "" if row.positives is None else str(row.positives),
            *(str(row.metrics[k]) if k in row.metrics else "" for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def roc_curve(
    scores: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """False and true positive rates over every threshold, from (0, 0) to (1, 1)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[distinct]
    fp = np.cumsum(~y)[distinct]
    tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
    fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
    return fpr, tpr


def plot_rocs(rows: Sequence[Row], path: Path) -> None:
    """ROC curves of every binary row, one panel."""

    def curve(scores: list[float], labels: list[bool]) -> tuple[Any, Any, str]:
        fpr, tpr = roc_curve(scores, labels)
        return fpr, tpr, f" (AUC {roc_auc(scores, labels):.2f})"

    _binary_panel(rows, path, curve, ("1 - specificity", "sensitivity"), "lower right")


def _binary_panel(
    rows: Sequence[Row],
    path: Path,
    curve: Callable[[list[float], list[bool]], tuple[Any, Any, str]],
    axes: tuple[str, str],
    legend: Literal["lower right", "upper left"],
) -> None:
    """One line per binary row (``curve`` gives x, y and a label suffix) over the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    for row in rows:
        if "scores" not in row.extra:
            continue
        x, y, suffix = curve(row.extra["scores"], row.extra["labels"])  # type: ignore[arg-type]
        ax.plot(x, y, marker=".", label=f"{row.family} {row.task}, {row.protocol}{suffix}")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.legend(fontsize=6, loc=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_confusions(rows: Sequence[Row], path: Path) -> None:
    """The confusion matrix of every severity row, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in rows if "confusion" in r.extra]
    if not chosen:
        return
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.4 * len(chosen), 3.4), squeeze=False)
    for ax, row in zip(axes[0], chosen, strict=True):
        matrix = np.asarray(row.extra["confusion"])
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", fontsize=8)
        ax.set_title(f"{row.family}, {row.protocol}", fontsize=8)
        ax.set_xlabel("predicted score")
        ax.set_ylabel("true score")
        ax.set_xticks(range(SCORES))
        ax.set_yticks(range(SCORES))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def calibration(
    scores: npt.ArrayLike, labels: npt.ArrayLike, bins: int = 5
) -> list[tuple[float, float, int]]:
    """(mean predicted probability, observed share, clips) per probability bin that holds
    clips; bins of equal width over [0, 1]."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    which = np.minimum((s * bins).astype(np.intp), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            out.append((float(s[inside].mean()), float(y[inside].mean()), int(inside.sum())))
    return out


def plot_calibration(rows: Sequence[Row], path: Path) -> None:
    """Observed share against predicted probability for every binary row."""

    def curve(scores: list[float], labels: list[bool]) -> tuple[Any, Any, str]:
        points = calibration(scores, labels)
        return [p[0] for p in points], [p[1] for p in points], ""

    _binary_panel(rows, path, curve, ("predicted probability", "observed share"), "upper left")
