"""Measure a severity bundle the way paper 003 does (Tables I-III) on held-out simulated exams.

* Frame scores: weighted F1, precision, recall over every frame with a known score
  (Setting 1) and without the frames near a change of true score (Setting 2,
  :data:`~lus_pacs.families.severity.train.TRANSITION_MARGIN` frames either side).
* Clip scores by the bundle's uninorm layer and by the two baselines (max_argmax, argmax_mean):
  weighted F1, precision, recall and confusion matrices.
* For a measured bundle (:class:`~lus_pacs.families.severity.measured.MeasuredSeverity`,
  the shipped kind) also the clip scores the node reports, from the real-data recipe on the
  cines' lung measurements (``clip_recipe_*``).
* The uninorm's neutral elements; a montage of the spatial transformer's crops (the paper's
  Fig. 4) when the frame scorer has one.

Usage::

    lus-pacs evaluate severity --bundle models/severity --simulated DIR [--plots DIR]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from lus_pacs.families.severity.aggregation import SCORES
from lus_pacs.families.severity.inference import SeverityModel
from lus_pacs.families.severity.measured import MeasuredSeverity
from lus_pacs.families.severity.network import theta_to_box
from lus_pacs.families.severity.train import (
    AGGREGATORS,
    aggregate,
    known_frame_metrics,
)
from lus_pacs.inference.lung_features import cine_features
from lus_pacs.inference.transforms import SEVERITY_SIZE, severity_frames
from lus_pacs.training.metrics import confusion, weighted_metrics
from lus_pacs.training.simulated import SimulatedCine, find_simulated

MONTAGE_FRAMES = 8
"""Frames in the crop montage: of the frames of true score 2 and 3, the most confident one of
each cine, from the most confident cines."""


def evaluate_severity(
    bundle: Path, simulated_root: Path, *, plots: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Frame and clip metrics of ``bundle`` on every cine under ``simulated_root``."""
    model = SeverityModel.load(bundle)
    cines = find_simulated(simulated_root)
    if not cines:
        raise FileNotFoundError(f"No simulated cines (*/*.truth.json) under {simulated_root}.")
    recipe: list[int] = []
    clip_probs: list[npt.NDArray[np.float64]] = []
    crops: list[tuple[float, SimulatedCine, int, torch.Tensor]] = []
    for sim in tqdm(cines, desc="severity", unit="cine", disable=not progress):
        cine = sim.load()
        probabilities, thetas = model.frame_outputs(cine)
        if isinstance(model.network, MeasuredSeverity):
            recipe.append(int(model.network.clip_scores(cine_features(cine)[1][None])[0][0]))
        p = probabilities.double().numpy()
        clip_probs.append(p)
        if thetas is not None:
            for f in sim.frames:
                if f.severity is not None and f.severity >= 2:
                    confidence = float(p[f.frame - 1, f.severity])
                    crops.append((confidence, sim, f.frame, thetas[f.frame - 1]))
    metrics: dict[str, Any] = {
        f"frame_{k}": v for k, v in known_frame_metrics(cines, clip_probs).items()
    }
    truth = [int(c.severity or 0) for c in cines]
    uninorm = model.paper_network.aggregator
    matrices = {}
    for name in AGGREGATORS:
        predicted = [aggregate(name, p, uninorm) for p in clip_probs]
        for k, v in weighted_metrics(truth, predicted, SCORES).items():
            metrics[f"clip_{name}_{k}"] = v
        matrices[name] = confusion(truth, predicted, SCORES).tolist()
    if recipe:
        for k, v in weighted_metrics(truth, recipe, SCORES).items():
            metrics[f"clip_recipe_{k}"] = v
        matrices["recipe"] = confusion(truth, recipe, SCORES).tolist()
    metrics["confusion"] = matrices
    metrics["neutral_elements"] = [round(float(e), 4) for e in uninorm.neutral_elements.detach()]
    if plots is not None and crops:
        plots.mkdir(parents=True, exist_ok=True)
        # The most confident frame of each cine, then the most confident cines.
        best: dict[str, tuple[float, SimulatedCine, int, torch.Tensor]] = {}
        for item in crops:
            key = str(item[1].dicom)
            if key not in best or item[0] > best[key][0]:
                best[key] = item
        chosen = sorted(best.values(), key=lambda c: -c[0])[:MONTAGE_FRAMES]
        crop_montage(
            [(sim, frame, theta) for _, sim, frame, theta in chosen], plots / "stn_crops.png"
        )
    return metrics


def crop_montage(
    items: Sequence[tuple[SimulatedCine, int, torch.Tensor]], path: Path, columns: int = 4
) -> None:
    """A PNG of the model's input frames, each with the spatial transformer's first crop drawn
    in red and labelled with patient, zone, frame and true score (the paper's Fig. 4)."""
    tile_h, tile_w = SEVERITY_SIZE
    rows = -(-len(items) // columns)
    sheet = Image.new("RGB", (columns * tile_w, rows * (tile_h + 14)), "white")
    for n, (sim, frame, theta) in enumerate(items):
        x = severity_frames(sim.load(), [frame])[0, 0].numpy()
        grey = np.clip((x + 1.0) * 127.5, 0, 255).astype(np.uint8)
        tile = Image.fromarray(grey).convert("RGB")
        draw = ImageDraw.Draw(tile)
        x0, y0, x1, y1 = (float(v) for v in theta_to_box(theta, tile_h, tile_w))
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 0, 0), width=2)
        left, top = (n % columns) * tile_w, (n // columns) * (tile_h + 14)
        sheet.paste(tile, (left, top + 14))
        label = f"{sim.patient_id} {sim.zone} f{frame} score {_true_score(sim, frame)}"
        ImageDraw.Draw(sheet).text((left + 2, top + 1), label, fill="black")
    sheet.save(path, format="PNG")


def _true_score(sim: SimulatedCine, frame: int) -> int | None:
    return sim.frames[frame - 1].severity


def markdown_tables(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The paper's Table I (frame F1, Settings 1 and 2) and Table II (clip weighted F1,
    precision, recall per aggregator), one row per evaluated bundle."""
    lines = [
        "| Frame scorer | F1 (Setting 1) | F1 (Setting 2) | Precision | Recall |",
        "|---|---|---|---|---|",
    ]
    for name, m in results.items():
        lines.append(
            f"| {name} | {_pct(m['frame_setting1_f1'])} | {_pct(m['frame_setting2_f1'])} "
            f"| {_pct(m['frame_setting1_precision'])} | {_pct(m['frame_setting1_recall'])} |"
        )
    lines += [
        "",
        "| Frame scorer | Aggregator | F1 | Precision | Recall |",
        "|---|---|---|---|---|",
    ]
    for name, m in results.items():
        for agg in AGGREGATORS:
            lines.append(
                f"| {name} | {agg} | {_pct(m[f'clip_{agg}_f1'])} "
                f"| {_pct(m[f'clip_{agg}_precision'])} | {_pct(m[f'clip_{agg}_recall'])} |"
            )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}"
