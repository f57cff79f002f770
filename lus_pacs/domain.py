"""Values that cross the seams of the pipeline: frozen dataclasses, one module.

Frames are numbered from 1 wherever a frame number leaves the process (DICOM's convention);
arrays are indexed from 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt

GreyFrames = npt.NDArray[np.uint8]
"""Luminance frames, shape (frames, rows, columns)."""


class RegionSource(StrEnum):
    DICOM = "dicom"
    """From SequenceOfUltrasoundRegions."""
    IMAGE = "image"
    """Found from the pixels (no calibration in the file)."""
    WHOLE = "whole"
    """Nothing better known: the whole image."""


@dataclass(frozen=True)
class Region:
    """The tissue region of the image, in pixels: columns x0..x1 and rows y0..y1, end exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int
    source: RegionSource
    cm_per_pixel_x: float | None = None
    cm_per_pixel_y: float | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.x0 < self.x1 and 0 <= self.y0 < self.y1):
            raise ValueError(
                f"Region ({self.x0}, {self.y0})-({self.x1}, {self.y1}) is empty or negative: "
                "x0 < x1 and y0 < y1 are required, ends exclusive."
            )

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class FrameTiming:
    """When each frame was acquired. ``fps`` is None when the file does not say."""

    fps: float | None
    source: str
    """The attribute the timing came from (FrameTimeVector, FrameTime, CineRate, ...) or "none"."""


@dataclass(frozen=True)
class SourceRef:
    """Where a cine came from: enough to reference it from every result object."""

    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    zone: str | None
    path: str | None = None


@dataclass(frozen=True, eq=False)
class Cine:
    """A decoded ultrasound cine loop, ready for preprocessing."""

    frames: GreyFrames
    timing: FrameTiming
    region: Region
    source: SourceRef
    overlay_mask: npt.NDArray[np.bool_] | None = field(default=None)
    """Pixels of burned-in text and markers (constant over the loop), full image size."""

    def __post_init__(self) -> None:
        if self.frames.ndim != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                "Cine.frames must be uint8 of shape (frames, rows, columns); "
                f"got {self.frames.dtype} {self.frames.shape}."
            )

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def tissue(self) -> GreyFrames:
        """The frames cropped to the tissue region."""
        r = self.region
        return self.frames[:, r.y0 : r.y1, r.x0 : r.x1]
