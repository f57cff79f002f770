"""What a cine's header says: frame timing, the calibrated tissue region and the lung zone."""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from lus_pacs.domain import FrameTiming, Region, RegionSource
from lus_pacs.settings import DEFAULT_ZONE_RULES, ZoneRule

log = logging.getLogger(__name__)

_FRAME_TIME = Tag(0x0018, 0x1063)
_FRAME_TIME_VECTOR = Tag(0x0018, 0x1065)
_CM = 3
"""PhysicalUnitsXDirection value for centimetres."""


FPS_RANGE = (1.0, 1000.0)
"""Frame rates believed from a header; a value outside (FrameTime written in seconds instead of
milliseconds: 30,000 frames a second; a stray 0.001 ms: a million) is skipped for the next
attribute. The models' one-second windows are as long as the rate says: at a million frames
a second one window alone would take 16 GB."""


def frame_timing(ds: Dataset) -> FrameTiming:
    """The frame rate, from the attribute the file points at first, then the fallbacks.

    Order: what ``FrameIncrementPointer`` names (``FrameTimeVector`` or ``FrameTime``), then
    ``FrameTime``, ``CineRate``, ``RecommendedDisplayFrameRate``, ``ActualFrameDuration``. A
    value that is missing, zero,
    unreadable or a rate outside :data:`FPS_RANGE` is skipped (logged); ``fps`` is None when no
    attribute gives a rate.
    """
    pointers = _as_list(ds.get("FrameIncrementPointer"))
    candidates = [Tag(p) for p in pointers if Tag(p) in (_FRAME_TIME, _FRAME_TIME_VECTOR)]
    candidates += [t for t in (_FRAME_TIME, _FRAME_TIME_VECTOR) if t not in candidates]
    rates = [
        ("FrameTimeVector" if tag == _FRAME_TIME_VECTOR else "FrameTime", _fps_from_times(ds, tag))
        for tag in candidates
    ]
    rates += [(k, _positive(ds.get(k))) for k in ("CineRate", "RecommendedDisplayFrameRate")]
    duration = _positive(ds.get("ActualFrameDuration"))  # ms a frame was acquired over
    rates.append(("ActualFrameDuration", None if duration is None else 1000.0 / duration))
    for source, fps in rates:
        if fps is None:
            continue
        if FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
            return FrameTiming(fps, source)
        log.warning("%s gives %.4g frames a second: not believed", source, fps)
    return FrameTiming(None, "none")


def _fps_from_times(ds: Dataset, tag: Any) -> float | None:
    if tag not in ds:
        return None
    values = _as_list(ds[tag].value)
    if tag == _FRAME_TIME_VECTOR:
        every = [_positive(v) or 0.0 for v in values]
        rising = all(b > a for a, b in itertools.pairwise(every[1:]))
        span = every[-1] - every[0]
        if len(every) >= 4 and rising and every[-1] >= 2 * every[1] and span > 0:
            # Times that grow with the frame: each frame's time since the first (PS3.3 says
            # since the frame before), as some scanners write them.
            return 1000.0 * (len(every) - 1) / span
        # The first entry is the time of the first frame since itself: zero.
        values = values[1:]
    times = [t for t in (_positive(v) for v in values) if t is not None]
    if not times:
        return None
    return 1000.0 / (sum(times) / len(times))


def ultrasound_region(
    ds: Dataset, rows: int, cols: int, moving: Region | None = None
) -> Region | None:
    """The 2D tissue region from ``SequenceOfUltrasoundRegions``, ends exclusive.

    Takes, of the regions with RegionSpatialFormat 1 (2D) and RegionDataType 1 (tissue), the
    one that overlaps most the ``moving`` tissue found in the pixels (when given), then the
    largest, clipped to the image; a region reaching past the image by more than
    :data:`_OVERHANG` pixels describes another image and is not taken. None when the file has
    no such region.
    """
    best: Region | None = None
    for item in ds.get("SequenceOfUltrasoundRegions", ()):
        if item.get("RegionSpatialFormat") != 1 or item.get("RegionDataType") != 1:
            continue
        try:
            x0 = max(0, int(item.RegionLocationMinX0))
            y0 = max(0, int(item.RegionLocationMinY0))
            x1, y1 = int(item.RegionLocationMaxX1) + 1, int(item.RegionLocationMaxY1) + 1
        except (AttributeError, TypeError, ValueError):
            continue
        if x1 > cols + _OVERHANG or y1 > rows + _OVERHANG:
            # Coordinates of another image (one scaled down after its regions were written):
            # clipped, they cut the sector; the region is found from the pixels instead.
            continue
        x1, y1 = min(cols, x1), min(rows, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        region = Region(
            x0,
            y0,
            x1,
            y1,
            RegionSource.DICOM,
            cm_per_pixel_x=_cm_per_pixel(item, "X"),
            cm_per_pixel_y=_cm_per_pixel(item, "Y"),
        )
        if best is None or _rank(region, moving) > _rank(best, moving):
            best = region
    return best


def _rank(region: Region, moving: Region | None) -> tuple[int, int]:
    """How a declared tissue region ranks among a file's: by its overlap with the ``moving``
    tissue found in the pixels, then by its area. A dual view may declare a frozen reference
    image beside the live one, as large: the live one is read."""
    overlap = 0
    if moving is not None:
        width = min(region.x1, moving.x1) - max(region.x0, moving.x0)
        height = min(region.y1, moving.y1) - max(region.y0, moving.y0)
        overlap = max(0, width) * max(0, height)
    return overlap, region.width * region.height


_OVERHANG = 2
"""Pixels a declared region may reach past the image (an off-by-one of its writer)."""


def _cm_per_pixel(item: Dataset, axis: str) -> float | None:
    if item.get(f"PhysicalUnits{axis}Direction") != _CM:
        return None
    return _positive(item.get(f"PhysicalDelta{axis}"))


def lung_zone(ds: Dataset, rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES) -> str | None:
    """The zone label (R1, L3, ...) found by the first rule whose attribute matches, upper-cased."""
    for rule in rules:
        element = ds.get(rule.tag)
        if element is None or element.value is None:
            continue
        value = element.value
        # A private element of an implicit VR file is bytes (VR UN).
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        match = re.search(rule.pattern, text)
        if match:
            # One label per zone: "r01" and "R1" are the same zone, not two in the LUS total.
            return re.sub(r"(?<=[A-Z])0+(?=\d)", "", match["zone"].upper())
    return None


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def budget_pixels(header: Dataset, file_bytes: int) -> int:
    """Frames x rows x columns of a stored instance as its header says, for a pixel budget
    (the node's workers, a re-processing run's). Without a Number of Frames the decoder reads
    every frame the Pixel Data holds: then the file's size in bytes (``file_bytes``) stands in
    when larger (native pixels take at least a byte each). 0 when its counts are not numbers:
    processing then fails on it with the reason."""
    try:
        frame = int(header.get("Rows") or 0) * int(header.get("Columns") or 0)
        frames = int(header.get("NumberOfFrames") or 0)
    except (TypeError, ValueError):
        return 0
    return frames * frame if frames >= 1 else max(frame, file_bytes)
