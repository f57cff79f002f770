"""Pictures of a model's output for a person to look at."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from PIL import Image, ImageDraw

from lus_pacs.domain import BLineFindings


def plot_attention(
    findings: BLineFindings,
    path: Path,
    truth_frames: Collection[int] = (),
    size: tuple[int, int] = (640, 240),
) -> None:
    """Write a PNG of the frame scores over time, as the paper's Fig. 1.

    True B-line frames (1-based; none when unknown, as in the node) are shaded grey, the frame
    scores are the blue line, the reported B-line frames are marked red on the axis and the key
    frame by a green bar.
    """
    width, height = size
    margin = 24
    n = len(findings.frame_scores)
    if n == 0:
        raise ValueError(f"{path}: the findings have no frame scores to plot.")
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    step = (width - 2 * margin) / n
    top, bottom = margin, height - margin

    def x_of(frame: int) -> float:
        return margin + (frame - 1) * step

    for frame in truth_frames:
        if 1 <= frame <= n:
            draw.rectangle([x_of(frame), top, x_of(frame) + step, bottom], fill=(210, 210, 210))
    for frame in findings.frames:
        draw.rectangle([x_of(frame), bottom + 3, x_of(frame) + step, bottom + 8], fill="red")
    if findings.key_frame is not None:
        x = x_of(findings.key_frame) + step / 2
        draw.line([x, top, x, bottom], fill=(0, 160, 0), width=2)
    points = [
        (x_of(i + 1) + step / 2, bottom - score * (bottom - top))
        for i, score in enumerate(findings.frame_scores)
    ]
    if len(points) > 1:
        draw.line(points, fill=(0, 70, 200), width=2)
    draw.rectangle([margin, top, width - margin, bottom], outline="black")
    draw.text(
        (margin, 4),
        f"p={findings.probability:.2f} key={findings.key_frame} frames={n}",
        fill="black",
    )
    image.save(path, format="PNG")
