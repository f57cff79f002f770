"""A cine as the consolidation encoder sees it: a clip of evenly spaced frames of the tissue
region at a small fixed size, and the mapping of boxes between the clip and the source image."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt
import torch

from lus_pacs.domain import Cine
from lus_pacs.families.consolidation.network import CLIP_FRAMES, CLIP_SIZE

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) pixels, ends exclusive."""


def clip_frames(cine: Cine) -> npt.NDArray[np.uint8]:
    """The cine's tissue region, each frame resized to CLIP_SIZE x CLIP_SIZE."""
    return np.stack(
        [
            cv2.resize(frame, (CLIP_SIZE, CLIP_SIZE), interpolation=cv2.INTER_AREA)
            for frame in cine.tissue()
        ]
    )


def to_clip_box(box: Box, cine: Cine) -> Box:
    """A box in image pixels (x0, y0, x1, y1) as a box in clip pixels."""
    r = cine.region
    sx, sy = CLIP_SIZE / r.width, CLIP_SIZE / r.height
    x0, y0, x1, y1 = box
    return (
        max(0, math.floor((x0 - r.x0) * sx)),
        max(0, math.floor((y0 - r.y0) * sy)),
        min(CLIP_SIZE, math.ceil((x1 - r.x0) * sx)),
        min(CLIP_SIZE, math.ceil((y1 - r.y0) * sy)),
    )


def from_clip_box(box: Box, cine: Cine) -> Box:
    """A box in clip pixels as a box in the cine's image pixels."""
    r = cine.region
    sx, sy = r.width / CLIP_SIZE, r.height / CLIP_SIZE
    x0, y0, x1, y1 = box
    return (
        r.x0 + math.floor(x0 * sx),
        r.y0 + math.floor(y0 * sy),
        r.x0 + math.ceil(x1 * sx),
        r.y0 + math.ceil(y1 * sy),
    )


def frame_indices(n_frames: int, rng: np.random.Generator | None = None) -> npt.NDArray[np.int64]:
    """CLIP_FRAMES 0-based indices evenly spaced over the cine; with ``rng``, shifted by a
    random part of one step (training), else centred (inference)."""
    step = n_frames / CLIP_FRAMES
    offset = rng.uniform(0, step) if rng is not None else step / 2
    return np.minimum(np.floor(offset + step * np.arange(CLIP_FRAMES)), n_frames - 1).astype(
        np.int64
    )


def cine_indices(cine: Cine) -> npt.NDArray[np.int64]:
    """The frames a cine's clip is made of at inference: :func:`frame_indices` over its intact
    frames (a damaged frame, grey where its data ended, is not read as lung) unless none is."""
    intact = np.flatnonzero(cine.intact())
    if len(intact) == 0:
        return frame_indices(cine.n_frames)
    return intact[frame_indices(len(intact))].astype(np.int64)


def clip_tensor(frames: npt.NDArray[np.uint8], indices: npt.NDArray[np.int64]) -> torch.Tensor:
    """(1, T, H, W) float in [0, 1]."""
    return torch.from_numpy(frames[indices].astype(np.float32) / 255.0).unsqueeze(0)
