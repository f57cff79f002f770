"""Burned-in annotation a scanner draws outside the tissue region: text, depth scale, marker."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from lus_pacs.synth.geometry import ProbeGeometry

_TEXT = (230, 230, 120)  # the pale yellow most scanners use
_SCALE = (200, 200, 200)


def burn_in(
    frames: npt.NDArray[np.uint8], geom: ProbeGeometry, lines: list[str], zone: str
) -> npt.NDArray[np.uint8]:
    """RGB frames (frames, rows, cols, 3) with text, a depth scale and the probe marker drawn.

    The overlay is identical on every frame (it is what paper 004's static mask removes) and
    lies outside the field of view, as SequenceOfUltrasoundRegions promises.
    """
    layer = np.zeros((geom.rows, geom.cols, 3), np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.38 * geom.rows / 480
    y = round(0.03 * geom.rows) + 4
    for line in lines:
        cv2.putText(layer, line, (6, y), font, scale, _TEXT, 1, cv2.LINE_AA)
        y += round(0.035 * geom.rows)
    cv2.putText(layer, zone, (6, geom.rows - 10), font, 1.6 * scale, _TEXT, 1, cv2.LINE_AA)
    _depth_scale(layer, geom, font, scale)
    # The orientation marker beside the probe's left edge.
    left = int(np.nonzero(geom.fov_mask.any(axis=0))[0].min())
    cv2.circle(layer, (max(left - 14, 6), round(geom.top_px) - 4), 4, (80, 160, 255), -1)
    layer[geom.fov_mask] = 0
    drawn = layer.any(axis=2)
    rgb = np.repeat(frames[..., None], 3, axis=3)
    rgb[:, drawn] = layer[drawn]
    return rgb


def _depth_scale(
    layer: npt.NDArray[np.uint8], geom: ProbeGeometry, font: int, scale: float
) -> None:
    right = int(np.nonzero(geom.fov_mask.any(axis=0))[0].max())
    x = min(right + 10, geom.cols - 30)
    for cm in range(int(geom.depth_cm) + 1):
        _, row = geom.to_image(0.0, float(cm))
        row_i = round(row)
        if row_i >= geom.rows:
            break
        width = 7 if cm % 5 == 0 else 4
        cv2.line(layer, (x, row_i), (x + width, row_i), _SCALE, 1)
        if cm % 2 == 0 and cm > 0:
            cv2.putText(layer, str(cm), (x + 9, row_i + 4), font, scale, _SCALE, 1, cv2.LINE_AA)
