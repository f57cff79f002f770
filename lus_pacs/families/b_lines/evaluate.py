"""Paper 001's measurements of a B-line network on simulated exams and on the real POCUS clips.

Simulated exams have frame-level truth, so everything of the paper is measured on them:

* ``window_*``: precision, recall, F1 and AUC of the network's own task, the one-second window
  (the paper's Table 1); a window is positive when any of its frames shows a B-line.
* ``clip_*``: the same for the whole cine as the node reports it (:func:`findings_from_windows`,
  probability = highest window probability).
* ``localisation_iou_0.1`` ... ``0.4`` (Table 2): on every cine with B-lines, the IoU of the
  node's B-line frames and the true B-line frames; the accuracy at a threshold is the fraction
  of those cines whose IoU reaches it. A missed cine (no frames reported) has IoU 0.
* ``key_frame_accuracy``: the fraction of cines with B-lines whose key frame is a true B-line
  frame; a missed cine counts as wrong. ``key_frame_accuracy_detected`` counts only the cines
  the network flagged, ``key_frame_accuracy_window`` the positive windows' highest-attention
  frame.
* ``*_mixed``: the same over the cines with B-lines in some frames but not all, the only ones
  where reporting every frame is wrong (``clips_mixed`` of them).

The POCUS clips only say whether a clip shows B-lines, so they get ``pocus_*`` clip-level
precision, recall, F1 and AUC; each clip goes through the network at its own frame rate.

Usage::

    lus-pacs evaluate b-lines --bundle models/b_lines --simulated DIR \\
        --pocus ../shared/data/pocus --pocus-cache /tmp/pocus-cache --plots DIR
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm import tqdm

from lus_pacs.domain import BLineFindings, ModelInfo
from lus_pacs.families.b_lines.data import Windows, load_windows
from lus_pacs.families.b_lines.inference import BLineModel, findings_from_windows
from lus_pacs.families.b_lines.plots import plot_attention
from lus_pacs.inference.transforms import b_line_windows
from lus_pacs.training.annotated import BLineCine
from lus_pacs.training.pocus import PocusClip, load_clip, read_labels
from lus_pacs.training.simulated import find_simulated

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4)
"""The paper's Table 2 thresholds (alpha)."""
THRESHOLD = 0.5
ATTENTION_THRESHOLD = 0.5
_EVALUATED = ModelInfo("b_lines", "evaluated", "B-line network under evaluation")

TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("Precision", "window_precision"),
    ("Recall", "window_recall"),
    ("F1", "window_f1"),
    ("AUC", "window_auc"),
    ("Clip F1", "clip_f1"),
    *((f"IoU α={t}", f"localisation_iou_{t}") for t in IOU_THRESHOLDS),
    ("Key frame", "key_frame_accuracy"),
    ("POCUS AUC", "pocus_auc"),
    ("POCUS F1", "pocus_f1"),
)
"""(header, metric key) of :func:`markdown_table`: the paper's Tables 1 and 2 side by side."""


def predict(
    network: nn.Module, x: torch.Tensor, batch_size: int = 20
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Window probabilities (windows,) and attention (windows, frames), network in eval mode."""
    network.eval()
    probabilities, attention = [], []
    with torch.inference_mode():
        for first in range(0, len(x), batch_size):
            out = network(x[first : first + batch_size])
            probabilities.append(torch.sigmoid(out.logit).double().numpy())
            attention.append(out.attention.double().numpy())
    if not probabilities:
        return np.zeros(0), np.zeros((0, x.shape[2] if x.ndim == 5 else 0))
    return np.concatenate(probabilities), np.concatenate(attention)


def frame_iou(predicted: Collection[int], truth: Collection[int]) -> float:
    """Intersection over union of two sets of frame numbers; 1.0 when both are empty."""
    p, t = set(predicted), set(truth)
    union = p | t
    return len(p & t) / len(union) if union else 1.0


def localisation_accuracy(
    ious: Sequence[float], thresholds: Iterable[float] = IOU_THRESHOLDS
) -> dict[float, float]:
    """Fraction of ``ious`` reaching each threshold (the paper's Table 2); NaN without IoUs."""
    values = np.asarray(ious, dtype=float)
    return {
        t: round(float((values >= t).mean()), 4) if len(values) else float("nan")
        for t in thresholds
    }


def binary_metrics(
    truth: npt.NDArray[np.bool_],
    probability: npt.NDArray[np.floating],
    threshold: float = THRESHOLD,
) -> dict[str, float]:
    """Precision, recall, F1 at ``threshold``, AUC, and the counts ``n`` and ``n_positive``."""
    predicted = probability >= threshold
    tp = float((predicted & truth).sum())
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "auc": round(auc(truth, probability), 4),
        "n": float(len(truth)),
        "n_positive": float(truth.sum()),
    }


def auc(truth: npt.NDArray[np.bool_], score: npt.NDArray[np.floating]) -> float:
    """Area under the ROC curve (Mann-Whitney; ties count a half); NaN without both classes."""
    pos, neg = score[truth], score[~truth]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def simulated_metrics(
    probabilities: npt.NDArray[np.float64],
    attention: npt.NDArray[np.float64],
    windows: Windows,
    cines: Sequence[BLineCine],
    *,
    threshold: float = THRESHOLD,
    attention_threshold: float = ATTENTION_THRESHOLD,
) -> tuple[dict[str, float], list[BLineFindings]]:
    """Window and cine metrics of predictions on ``windows`` (made from ``cines``).

    Returns the metrics (see the module docstring) and the findings of every cine, in order.
    """
    label = windows.label.numpy() > 0.5
    metrics = {f"window_{k}": v for k, v in binary_metrics(label, probabilities, threshold).items()}
    key = np.argmax(attention, axis=1)
    hit = windows.frame_truth[np.arange(len(key)), key]
    metrics["key_frame_accuracy_window"] = _mean(hit[label])

    findings, clip_truth, key_hits, detected_hits, ious, mixed = [], [], [], [], [], []
    for i, sim in enumerate(cines):
        rows = np.flatnonzero(windows.cine == i)
        found = findings_from_windows(
            probabilities[rows],
            attention[rows],
            [windows.starts[r] for r in rows],
            sim.n_frames,
            threshold=threshold,
            attention_threshold=attention_threshold,
            model=_EVALUATED,
        )
        findings.append(found)
        truth = set(sim.b_line_frames)
        clip_truth.append(bool(truth))
        if truth:
            mixed.append(len(truth) < sim.n_frames)
            ious.append(frame_iou(found.frames, truth))
            key_hits.append(found.key_frame in truth)
            if found.key_frame is not None:
                detected_hits.append(found.key_frame in truth)
    clip_prob = np.array([f.probability for f in findings])
    metrics.update(
        {
            f"clip_{k}": v
            for k, v in binary_metrics(np.array(clip_truth), clip_prob, threshold).items()
        }
    )
    for t, accuracy in localisation_accuracy(ious).items():
        metrics[f"localisation_iou_{t}"] = accuracy
    some = np.array(mixed, dtype=bool)
    for t, accuracy in localisation_accuracy(np.array(ious)[some].tolist()).items():
        metrics[f"localisation_mixed_iou_{t}"] = accuracy
    metrics["key_frame_accuracy_mixed"] = _mean(np.array(key_hits, dtype=bool)[some])
    metrics["clips_mixed"] = float(some.sum())
    metrics["clip_frame_iou"] = _mean(np.array(ious))
    metrics["key_frame_accuracy"] = _mean(np.array(key_hits, dtype=bool))
    metrics["key_frame_accuracy_detected"] = _mean(np.array(detected_hits, dtype=bool))
    return metrics, findings


def pocus_metrics(
    network: nn.Module,
    clips: Sequence[PocusClip],
    pocus_dir: Path,
    cache_dir: Path,
    *,
    threshold: float = THRESHOLD,
    batch_size: int = 20,
    progress: bool = True,
) -> dict[str, float]:
    """Clip-level ``pocus_*`` metrics on the clips with a recorded ``b_lines`` label.

    A clip's probability is its highest window probability, as in the node.
    """
    truth, probability = pocus_probabilities(
        network, clips, pocus_dir, cache_dir, batch_size=batch_size, progress=progress
    )
    result = binary_metrics(truth, probability, threshold)
    return {f"pocus_{k}": v for k, v in result.items()}


def pocus_probabilities(
    network: nn.Module,
    clips: Sequence[PocusClip],
    pocus_dir: Path,
    cache_dir: Path,
    *,
    batch_size: int = 20,
    progress: bool = True,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """The label and the probability (highest window's) of each clip with a ``b_lines`` label."""
    truth, probability = [], []
    labelled = [c for c in clips if c.b_lines is not None]
    for clip in tqdm(labelled, desc="pocus", unit="clip", disable=not progress):
        cine = load_clip(clip, pocus_dir, cache_dir)
        x, _ = b_line_windows(cine, default_fps=clip.fps)
        p, _ = predict(network, x, batch_size)
        truth.append(bool(clip.b_lines))
        probability.append(float(p.max()))
    return np.array(truth, dtype=bool), np.array(probability, dtype=np.float64)


def load_network(bundle_dir: Path) -> tuple[nn.Module, float, float]:
    """The network of a B-line bundle with its ``threshold`` and ``attention_threshold``.

    Raises
    ------
    ModelError
        The bundle is incomplete or a threshold is missing or outside [0, 1].
    """
    model = BLineModel.load(bundle_dir)
    return model.network, model.threshold, model.attention_threshold


def evaluate(
    network: nn.Module | Path,
    *,
    simulated_root: Path | None = None,
    pocus_dir: Path | None = None,
    pocus_cache: Path | None = None,
    pocus_groups: Collection[str] | None = None,
    threshold: float | None = None,
    attention_threshold: float | None = None,
    batch_size: int = 20,
    plots: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """The paper's metrics of a network (or a bundle folder) on held-out data.

    Parameters
    ----------
    network:
        A trained B-line network, or a bundle folder (its thresholds then are the defaults).
    simulated_root:
        Output of ``lus-pacs synth`` never trained on.
    pocus_dir, pocus_cache:
        The POCUS dataset (``labels.csv`` and videos) and the folder its DICOM imports are
        cached in; both or neither.
    pocus_groups:
        Only the clips of these :attr:`PocusClip.group` values (the held-out sources); all when
        None.
    threshold, attention_threshold:
        Decision thresholds; the bundle's (or 0.5) when None.
    plots:
        Folder for one attention-over-time PNG per simulated cine (:func:`plot_attention`).

    Returns
    -------
    dict
        Metric name to value, see the module docstring.
    """
    defaults = [THRESHOLD, ATTENTION_THRESHOLD]
    if isinstance(network, Path):
        network, *defaults = load_network(network)
    threshold = defaults[0] if threshold is None else threshold
    if attention_threshold is None:
        attention_threshold = defaults[1]
    if simulated_root is None and pocus_dir is None:
        raise ValueError("evaluate needs simulated_root, pocus_dir or both.")
    if (pocus_dir is None) != (pocus_cache is None):
        raise ValueError("Give pocus_dir and pocus_cache together (the cache may be empty).")
    metrics: dict[str, float] = {}
    if simulated_root is not None:
        cines = find_simulated(simulated_root)
        if not cines:
            raise FileNotFoundError(f"No simulated cines (*/*.truth.json) under {simulated_root}.")
        windows = load_windows(cines, progress)
        probabilities, attention = predict(network, windows.x, batch_size)
        found, findings = simulated_metrics(
            probabilities,
            attention,
            windows,
            cines,
            threshold=threshold,
            attention_threshold=attention_threshold,
        )
        metrics.update(found)
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            for sim, finding in zip(cines, findings, strict=True):
                name = f"{sim.patient_id}_{sim.zone}.png"
                plot_attention(finding, plots / name, sim.b_line_frames)
    if pocus_dir is not None and pocus_cache is not None:
        clips = read_labels(pocus_dir / "labels.csv")
        if pocus_groups is not None:
            clips = [c for c in clips if c.group in set(pocus_groups)]
        metrics.update(
            pocus_metrics(
                network,
                clips,
                pocus_dir,
                pocus_cache,
                threshold=threshold,
                batch_size=batch_size,
                progress=progress,
            )
        )
    return metrics


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """The paper's Tables 1 and 2 as one markdown table, a row per architecture.

    Metrics missing from a row (no POCUS clips, say) show as an em dash; localisation and
    key-frame accuracies are percentages as in the paper.
    """
    headers = ["Model", *(h for h, _ in TABLE_COLUMNS)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for name, metrics in rows.items():
        cells = [name]
        for _, key in TABLE_COLUMNS:
            value = metrics.get(key)
            if value is None or np.isnan(value):
                cells.append("—")
            elif key.startswith(("localisation", "key_frame")):
                cells.append(f"{100 * value:.1f}")
            else:
                cells.append(f"{value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _mean(values: npt.NDArray[np.bool_] | npt.NDArray[np.float64]) -> float:
    return round(float(values.mean()), 4) if len(values) else float("nan")
