"""Paper 002's measurements of a consolidation classifier on held-out clips.

:func:`scores`: accuracy (threshold 0.5), sensitivity, specificity and AUC of the clip
probability; :func:`box_scores`: how well the saliency boxes of the node
(:mod:`lus_pacs.families.consolidation.inference`) find the true consolidation boxes;
:func:`box_figure` draws both. :func:`sweep_table` and :func:`plot_sweep` give the paper's
label-fraction tables and Fig. 3 from the rows of
:func:`lus_pacs.families.consolidation.train.sweep`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lus_pacs.families.consolidation.clips import clip_tensor, frame_indices
from lus_pacs.families.consolidation.data import ClipSource
from lus_pacs.families.consolidation.network import ConsolidationClassifier
from lus_pacs.training.metrics import roc_auc


@torch.no_grad()
def predict(model: ConsolidationClassifier, sources: Sequence[ClipSource]) -> np.ndarray:
    """Probability of consolidation per clip: one centred clip of evenly spaced frames."""
    model.eval()
    out = []
    for start in range(0, len(sources), 32):
        clips = torch.stack(
            [clip_tensor(s.frames, frame_indices(s.n_frames)) for s in sources[start : start + 32]]
        )
        out.append(torch.sigmoid(model(clips)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def scores(model: ConsolidationClassifier, sources: Sequence[ClipSource]) -> dict[str, float]:
    """Accuracy (threshold 0.5), sensitivity, specificity and AUC on the labelled sources."""
    labelled = [s for s in sources if s.label is not None]
    labels = np.array([bool(s.label) for s in labelled])
    probs = predict(model, labelled)
    chosen = probs >= 0.5
    tp, tn = int((chosen & labels).sum()), int((~chosen & ~labels).sum())
    return {
        "n": len(labelled),
        "accuracy": float((chosen == labels).mean()) if len(labels) else float("nan"),
        "sensitivity": tp / max(1, int(labels.sum())),
        "specificity": tn / max(1, int((~labels).sum())),
        "auc": roc_auc(probs, labels),
    }


def sweep_table(rows: Sequence[dict[str, Any]], test: str) -> str:
    """Markdown: one row per variant (and pre-training), AUC / accuracy per label fraction."""
    fractions = sorted({r["fraction"] for r in rows})
    head = "| variant | " + " | ".join(f"{100 * f:g} %" for f in fractions) + " |"
    lines = [head, "|---" * (len(fractions) + 1) + "|"]
    for variant, pretraining in sorted({(r["variant"], r["pretraining"]) for r in rows}):
        cells = []
        for f in fractions:
            match = [
                r
                for r in rows
                if r["test"] == test
                and r["variant"] == variant
                and r["pretraining"] == pretraining
                and r["fraction"] == f
            ]
            cells.append(f"{match[0]['auc']:.2f} / {match[0]['accuracy']:.2f}" if match else "-")
        name = variant if pretraining in ("none", "byol") else f"{variant} ({pretraining})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path, test: str) -> None:
    """The paper's Fig. 3: accuracy and AUC against the label fraction, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    lines = sorted({(r["variant"], r["pretraining"]) for r in rows if r["test"] == test})
    for variant, pretraining in lines:
        chosen = sorted(
            (
                r
                for r in rows
                if r["test"] == test and r["variant"] == variant and r["pretraining"] == pretraining
            ),
            key=lambda r: r["fraction"],
        )
        label = variant if pretraining in ("none", "byol") else f"{variant} ({pretraining})"
        style = "--" if pretraining.endswith("no_temporal") else "-"
        for ax, key in zip(axes, ("accuracy", "auc"), strict=True):
            ax.plot(
                [100 * r["fraction"] for r in chosen],
                [r[key] for r in chosen],
                style,
                marker="o",
                label=label,
            )
    for ax, key in zip(axes, ("accuracy", "AUC"), strict=True):
        ax.set_xscale("log")
        ax.set_xticks([5, 10, 30, 50, 100], ["5", "10", "30", "50", "100"])
        ax.set_xlabel("labelled training clips (%)")
        ax.set_ylabel(key)
        ax.set_ylim(0.4, 1.0)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Consolidation, held-out {test} (research software, simulated data)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def box_scores(
    model: ConsolidationClassifier,
    sources: Sequence[ClipSource],
    frames: int = 2,
    method: str = "gradient",
) -> dict[str, float]:
    """Weighted IoU of the saliency boxes against the true boxes, on the ``frames`` most
    salient clip frames of every held-out cine that has a consolidation (clip pixels), and the
    hit rate: the share of those frames on which a box overlaps a true box."""
    from lus_pacs.families.consolidation.inference import boxes_of, iou, saliency, weighted_iou

    values = []
    hits = []
    for source in sources:
        if not source.label or not source.boxes:
            continue
        indices = frame_indices(source.n_frames)
        maps = saliency(model, clip_tensor(source.frames, indices), method)
        strongest = np.argsort(-maps.reshape(len(indices), -1).max(axis=1))[:frames]
        for t in strongest:
            truth = source.boxes.get(int(indices[t]), ())
            found = boxes_of(maps[t])
            values.append(weighted_iou(found, truth))
            hits.append(any(iou(b, true) > 0 for b in found for true in truth))
    return {
        "frames": len(values),
        "weighted_iou": float(np.mean(values)) if values else float("nan"),
        "hit_rate": float(np.mean(hits)) if hits else float("nan"),
    }


def box_figure(
    model: ConsolidationClassifier, sources: Sequence[ClipSource], path: Path, count: int = 4
) -> None:
    """Frames of held-out cines with a consolidation: true boxes green, saliency boxes red."""
    from PIL import Image, ImageDraw

    from lus_pacs.families.consolidation.inference import boxes_of, saliency

    chosen = [s for s in sources if s.label and s.boxes][:count]
    scale = 4
    tiles = []
    for source in chosen:
        indices = frame_indices(source.n_frames)
        maps = saliency(model, clip_tensor(source.frames, indices))
        t = int(np.argmax(maps.reshape(len(indices), -1).max(axis=1)))
        frame = source.frames[int(indices[t])]
        tile = (
            Image.fromarray(frame)
            .convert("RGB")
            .resize((frame.shape[1] * scale, frame.shape[0] * scale))
        )
        draw = ImageDraw.Draw(tile)
        for x0, y0, x1, y1 in source.boxes.get(int(indices[t]), ()):
            draw.rectangle(
                (x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1),
                outline=(0, 200, 0),
                width=2,
            )
        for x0, y0, x1, y1 in boxes_of(maps[t]):
            draw.rectangle(
                (x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1),
                outline=(230, 30, 30),
                width=2,
            )
        draw.text((4, 4), f"{source.name} frame {int(indices[t]) + 1}", fill=(255, 255, 0))
        tiles.append(tile)
    if not tiles:
        return
    width = sum(t.width for t in tiles)
    figure = Image.new("RGB", (width, tiles[0].height), "black")
    x = 0
    for tile in tiles:
        figure.paste(tile, (x, 0))
        x += tile.width
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
