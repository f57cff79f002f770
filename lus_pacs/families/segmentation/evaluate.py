"""Measure paper 003's segmentation networks as its Table IV, and draw its Fig. 6.

Metrics (:func:`table_iv`) come from one pixel confusion matrix pooled over every evaluated frame
in model geometry (200 x 260), so that frames without a class do not give undefined Dice:

* ``accuracy``: the fraction of pixels labelled right, background included;
* ``union_dice``: Dice of the union of the pathological classes (scores 1, 2 and 3) against
  everything else, the paper's "Dice of the union of COVID-19 markers";
* ``categorical_dice``: the mean of the Dice of scores 0, 2 and 3 (the paper leaves score 1 out
  for its few annotations; so do we, to compare);
* ``dice_0`` .. ``dice_3``: each score's Dice.

Each member network is measured alone with dropout off and its own class bias, the ensemble as
the node computes its label map (the mean of the members' softmax with the ensemble's class bias,
see :class:`SegmentationEnsemble`), and the ensemble without bias.
:func:`border_and_inside_uncertainty` measures where Monte-Carlo dropout is unsure: on the
borders of the true structures against their inside, for the extent of the structures and for
their score.

Usage::

    lus-pacs evaluate segmentation --bundle models/segmentation --data DIR \\
        [--every K] [--figure PNG] [--samples N]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn.functional import softmax
from tqdm import tqdm

from lus_pacs.families.segmentation.data import (
    MaskedFrames,
    load_masked_frames,
    simulated_masked_cines,
)
from lus_pacs.families.segmentation.network import (
    BACKGROUND,
    CLASSES,
    SegmentationEnsemble,
    label_uncertainty,
    mc_dropout_predict,
)
from lus_pacs.training.simulated import find_simulated

if TYPE_CHECKING:
    from lus_pacs.families.segmentation.inference import SegmentationModel

ENSEMBLE = "ensemble"
UNCALIBRATED = "ensemble_without_bias"
PATHOLOGICAL = (1, 2, 3)
CATEGORICAL = (0, 2, 3)
"""The scores the paper's categorical Dice averages over."""
COLUMNS = ("accuracy", "union_dice", "categorical_dice", "dice_0", "dice_1", "dice_2", "dice_3")


def pixel_confusion(
    predicted: npt.NDArray[np.integer], truth: npt.NDArray[np.integer]
) -> npt.NDArray[np.int64]:
    """Counts ``[true class, predicted class]`` over all pixels of label maps of equal shape."""
    index = truth.astype(np.int64).ravel() * CLASSES + predicted.astype(np.int64).ravel()
    return np.bincount(index, minlength=CLASSES * CLASSES).reshape(CLASSES, CLASSES)


def _dice(overlap: float, predicted: float, true: float) -> float:
    total = predicted + true
    return float("nan") if total == 0 else 2 * overlap / total


def table_iv(confusion: npt.NDArray[np.int64]) -> dict[str, float]:
    """The paper's Table IV columns, plus each score's Dice, from a pooled pixel confusion."""
    c = confusion.astype(np.float64)
    sick = list(PATHOLOGICAL)
    dice = {
        k: _dice(c[k, k], c[:, k].sum(), c[k, :].sum()) for k in range(CLASSES) if k != BACKGROUND
    }
    return {
        "accuracy": float(np.trace(c) / c.sum()),
        "union_dice": _dice(c[np.ix_(sick, sick)].sum(), c[:, sick].sum(), c[sick, :].sum()),
        "categorical_dice": float(np.nanmean([dice[k] for k in CATEGORICAL])),
        **{f"dice_{k}": v for k, v in dice.items()},
    }


def member_probabilities(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax ``(B, CLASSES, H, W)`` of a network with dropout off."""
    network.eval()
    with torch.inference_mode():
        return softmax(network(x.float()), dim=1)


@dataclass(frozen=True)
class Evaluation:
    """Table IV rows by network name (members, :data:`ENSEMBLE` and :data:`UNCALIBRATED`) and
    their confusions."""

    rows: dict[str, dict[str, float]]
    confusions: dict[str, npt.NDArray[np.int64]]
    frames: int


def log_probabilities(
    ensemble: SegmentationEnsemble, frames: MaskedFrames, batch_size: int = 8, progress: bool = True
) -> dict[str, torch.Tensor]:
    """Log softmax ``(frames, CLASSES, H, W)`` (float16) of every member, dropout off, and of the
    ensemble mean before its bias (:data:`UNCALIBRATED`): what the biases are fitted on."""
    names = [*ensemble.members, UNCALIBRATED]
    out: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for first in tqdm(
        range(0, len(frames), batch_size), desc="segment", unit="batch", disable=not progress
    ):
        x = frames.x[first : first + batch_size]
        members = [member_probabilities(n, x) for n in ensemble.members.values()]
        for name, p in zip(ensemble.members, members, strict=True):
            out[name].append(p.clamp_min(1e-12).log().half())
        out[UNCALIBRATED].append(torch.stack(members).mean(dim=0).clamp_min(1e-12).log().half())
    return {name: torch.cat(parts) for name, parts in out.items()}


def confusion_with_bias(
    log_p: torch.Tensor, truth: torch.Tensor, bias: torch.Tensor, batch_size: int = 64
) -> npt.NDArray[np.int64]:
    """Pixel confusion of the argmax of ``log_p + bias`` against ``truth``."""
    total = np.zeros((CLASSES, CLASSES), np.int64)
    shift = bias.view(1, -1, 1, 1)
    for first in range(0, len(log_p), batch_size):
        predicted = (log_p[first : first + batch_size].float() + shift).argmax(dim=1)
        total += pixel_confusion(predicted.numpy(), truth[first : first + batch_size].numpy())
    return total


def evaluate(
    ensemble: SegmentationEnsemble,
    frames: MaskedFrames,
    batch_size: int = 8,
    progress: bool = True,
) -> Evaluation:
    """Table IV on ``frames`` of every member (with its own bias), of the ensemble as the node
    runs it (with its bias) and of the ensemble without bias."""
    log_p = log_probabilities(ensemble, frames, batch_size, progress)
    biases = {name: ensemble.member_bias[i] for i, name in enumerate(ensemble.members)}
    biases[UNCALIBRATED] = torch.zeros(CLASSES)
    confusions = {name: confusion_with_bias(log_p[name], frames.y, biases[name]) for name in log_p}
    confusions[ENSEMBLE] = confusion_with_bias(log_p[UNCALIBRATED], frames.y, ensemble.class_bias)
    return Evaluation(
        rows={name: table_iv(c) for name, c in confusions.items()},
        confusions=confusions,
        frames=len(frames),
    )


def structure_borders(
    truth: npt.NDArray[np.uint8], width: int = 1
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Borders and insides of the structures (any score) of a label map ``(H, W)``.

    A border pixel lies within ``width`` pixels of the edge between structure and background;
    an inside pixel is a structure pixel more than ``3 * width`` pixels from that edge.
    """
    structure = (truth != BACKGROUND).astype(np.uint8)

    def square(radius: int) -> npt.NDArray[np.uint8]:
        return np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)

    border = cv2.dilate(structure, square(width)) != cv2.erode(structure, square(width))
    inside = cv2.erode(structure, square(3 * width)).astype(bool)
    return np.asarray(border), inside


def border_and_inside_uncertainty(
    ensemble: SegmentationEnsemble, frames: MaskedFrames, samples: int, progress: bool = True
) -> dict[str, float]:
    """Mean MC-dropout uncertainty on the borders of the true structures and inside them, of two
    kinds: ``extent``, the standard deviation of the background probability (is this pixel part
    of a structure at all?), and ``label``, that of the chosen class's probability (which score?),
    what the node reports."""
    sums = dict.fromkeys(("extent_border", "extent_inside", "label_border", "label_inside"), 0.0)
    border_n = inside_n = 0
    for i in tqdm(range(len(frames)), desc="mc dropout", unit="frame", disable=not progress):
        x = frames.x[i : i + 1].float()
        _, std = mc_dropout_predict(list(ensemble.members.values()), x, samples)
        with torch.inference_mode():
            labels = ensemble.eval()(x)
        maps = {
            "extent": std[0, BACKGROUND].numpy(),
            "label": label_uncertainty(labels, std)[0].numpy(),
        }
        border, inside = structure_borders(frames.y[i].numpy())
        for kind, u in maps.items():
            sums[f"{kind}_border"] += float(u[border].sum())
            sums[f"{kind}_inside"] += float(u[inside].sum())
        border_n += int(border.sum())
        inside_n += int(inside.sum())
    out = {
        key: value / max(border_n if key.endswith("border") else inside_n, 1)
        for key, value in sums.items()
    }
    return {**out, "border_pixels": float(border_n), "inside_pixels": float(inside_n)}


@dataclass(frozen=True)
class PassesRow:
    """How the label uncertainty of ``passes`` Monte-Carlo dropout passes flags the pixels the
    label map gets wrong (:func:`uncertainty_by_passes`)."""

    passes: int
    error_auc: float
    """AUC of the uncertainty as a score for wrongly labelled pixels (0.5: no better than
    chance)."""
    error_rate_by_bin: tuple[float, ...]
    """Share of wrong pixels in each uncertainty bin (bins fixed by the reference's quantiles)."""
    agreement: float
    """Pearson correlation of the per-pixel uncertainty with the reference's."""
    seconds_per_frame: float


def uncertainty_by_passes(
    model: SegmentationModel,
    frames: MaskedFrames,
    passes: Sequence[int],
    quantiles: Sequence[float] = (0.5, 0.9, 0.95, 0.99),
    progress: bool = True,
) -> list[PassesRow]:
    """For each number of ``passes`` (the largest is the reference), how well the node's label
    uncertainty tells wrong pixels from right ones on ``frames`` (true masks known): the error
    AUC, the error rate in each uncertainty bin, the bins' edges the reference's ``quantiles``
    (calibration: how often a pixel that uncertain is wrong), the correlation with
    the reference uncertainty and the seconds per frame. Each frame's masks are seeded by its
    index, as the node seeds them by cine and frame."""
    import time

    from lus_pacs.training.metrics import roc_auc

    reference = max(passes)
    uncertainty: dict[int, list[npt.NDArray[np.float32]]] = {n: [] for n in passes}
    seconds = dict.fromkeys(passes, 0.0)
    wrong = []
    for i in tqdm(range(len(frames)), desc="passes", unit="frame", disable=not progress):
        x = frames.x[i : i + 1].float()
        label = None
        for n in passes:
            model.samples = n
            start = time.perf_counter()
            probabilities, u = model.probabilities(x, torch.Generator().manual_seed(i))
            seconds[n] += time.perf_counter() - start
            assert u is not None
            uncertainty[n].append(u[0].numpy().ravel())
            label = probabilities.argmax(dim=1)[0].numpy().ravel()
        wrong.append(label != frames.y[i].numpy().ravel())
    errors = np.concatenate(wrong)
    ref = np.concatenate(uncertainty[reference])
    edges = np.quantile(ref, quantiles)
    rows = []
    for n in passes:
        values = np.concatenate(uncertainty[n])
        which = np.digitize(values, edges)
        rates = tuple(
            float(errors[which == b].mean()) if (which == b).any() else float("nan")
            for b in range(len(edges) + 1)
        )
        rows.append(
            PassesRow(
                passes=n,
                error_auc=roc_auc(values, errors),
                error_rate_by_bin=rates,
                agreement=float(np.corrcoef(values, ref)[0, 1]),
                seconds_per_frame=seconds[n] / max(len(frames), 1),
            )
        )
    return rows


CLASS_COLOURS = np.array(
    [(31, 119, 180), (255, 215, 0), (255, 127, 14), (214, 39, 40), (0, 0, 0)], np.uint8
)
"""Score 0 blue, 1 yellow, 2 orange, 3 red, background black."""


def _heat(values: npt.NDArray[np.floating], top: float) -> npt.NDArray[np.uint8]:
    """A black-red-yellow-white ramp of ``values`` in [0, top]."""
    t = np.clip(values / max(top, 1e-9), 0, 1)[..., None]
    ramp = np.array([(0, 0, 0), (180, 0, 30), (255, 200, 0), (255, 255, 255)], np.float64)
    position = t * (len(ramp) - 1)
    low = np.floor(position).astype(int).clip(0, len(ramp) - 2)
    frac = position - low
    rgb = ramp[low[..., 0]] * (1 - frac) + ramp[low[..., 0] + 1] * frac
    return rgb.astype(np.uint8)


def uncertainty_figure(
    ensemble: SegmentationEnsemble,
    frames: MaskedFrames,
    indices: Sequence[int],
    samples: int,
    path: Path,
) -> None:
    """The paper's Fig. 6 as a PNG: per example frame (one row) the B-mode image, the true mask,
    the ensemble's mask and its MC-dropout uncertainty of extent (standard deviation of the
    background probability) and of the label (of the chosen class's probability), each black at
    0 to white at the row's maximum."""
    from PIL import Image, ImageDraw

    rows_px, cols_px = frames.x.shape[-2:]
    gap, title = 6, 16
    sheet = Image.new(
        "RGB",
        (5 * cols_px + 4 * gap, len(indices) * (rows_px + title + gap) + title),
        "white",
    )
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (2, 2),
        "score 0 blue, 1 yellow, 2 orange, 3 red; uncertainty black (0) to white (row max)",
        fill="black",
    )
    for row, i in enumerate(indices):
        x = frames.x[i : i + 1].float()
        _, std = mc_dropout_predict(list(ensemble.members.values()), x, samples)
        with torch.inference_mode():
            mean = ensemble.eval()(x)
        u = label_uncertainty(mean, std)[0].numpy()
        extent = std[0, BACKGROUND].numpy()
        top_u = float(max(u.max(), extent.max()))
        grey = ((x[0, 0].numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
        panels = (
            ("B-mode", np.repeat(grey[..., None], 3, axis=2)),
            ("true mask", CLASS_COLOURS[frames.y[i].numpy()]),
            ("ensemble", CLASS_COLOURS[mean.argmax(dim=1)[0].numpy()]),
            (f"extent std ({samples} passes)", _heat(extent, top_u)),
            (f"label std, row max {top_u:.2f}", _heat(u, top_u)),
        )
        top = title + row * (rows_px + title + gap)
        for column, (name, image) in enumerate(panels):
            left = column * (cols_px + gap)
            draw.text((left + 2, top + 2), name, fill="black")
            sheet.paste(Image.fromarray(image), (left, top + title))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")


def format_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """Table IV as Markdown, one row per network."""
    lines = [
        "| network | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def _figure_examples(frames: MaskedFrames, count: int = 3) -> list[int]:
    """Frames showing the most different scores (then the most pathological pixels), from
    different patients."""
    flat = frames.y.flatten(1).long()
    kinds = torch.stack([(flat == k).any(dim=1) for k in range(BACKGROUND)]).sum(dim=0)
    sick = ((flat >= 1) & (flat <= 3)).sum(dim=1)
    order = sorted(range(len(frames)), key=lambda i: (-int(kinds[i]), -int(sick[i])))
    chosen: list[int] = []
    for i in order:
        if all(frames.patient[i] != frames.patient[j] for j in chosen):
            chosen.append(i)
        if len(chosen) == count:
            break
    return chosen


@dataclass(frozen=True)
class BundleEvaluation:
    """What :func:`evaluate_bundle` measured."""

    result: Evaluation
    uncertainty: dict[str, float]
    """:func:`border_and_inside_uncertainty` on the frames with pathology measured."""
    uncertainty_frames: int
    """How many frames with pathology were measured with MC dropout."""
    by_passes: list[PassesRow]
    """:func:`uncertainty_by_passes` on those frames, when passes were asked for."""


def evaluate_bundle(
    bundle: Path,
    data_root: Path,
    *,
    every: int = 5,
    samples: int = 40,
    uncertainty_frames: int = 24,
    figure: Path | None = None,
    passes: Sequence[int] = (),
) -> BundleEvaluation:
    """Table IV of a segmentation bundle on every ``every``-th frame of the simulated exams
    under ``data_root``; the MC-dropout uncertainty (``samples`` passes) at structure borders and
    insides on ``uncertainty_frames`` frames with pathology spread over the set; with ``figure``,
    the uncertainty figure (the paper's Fig. 6) written there; with ``passes``, how the
    uncertainty of each number of passes flags wrong pixels (:func:`uncertainty_by_passes`)."""
    from lus_pacs.families.segmentation.inference import SegmentationModel

    model = SegmentationModel.load(bundle)
    frames = load_masked_frames(simulated_masked_cines(find_simulated(data_root), every=every))
    result = evaluate(model.ensemble, frames)
    picked = pathology_frames(frames, uncertainty_frames)
    borders = border_and_inside_uncertainty(model.ensemble, picked, samples)
    if figure:
        uncertainty_figure(model.ensemble, frames, _figure_examples(frames), samples, figure)
    by_passes = uncertainty_by_passes(model, picked, passes) if passes else []
    return BundleEvaluation(result, borders, len(picked), by_passes)


def pathology_frames(frames: MaskedFrames, n: int) -> MaskedFrames:
    """``n`` of the frames with pathology (a score 1-3 pixel), spread evenly over the set."""
    sick = np.flatnonzero(((frames.y >= 1) & (frames.y <= 3)).flatten(1).any(dim=1).numpy())
    step = max(1, len(sick) // max(n, 1))
    subset = sick[::step][:n].tolist()
    return MaskedFrames(
        x=frames.x[subset],
        y=frames.y[subset],
        patient=tuple(frames.patient[i] for i in subset),
        score=frames.score[subset],
    )
