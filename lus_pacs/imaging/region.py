"""The tissue region of a cine found from its pixels, for files without an ultrasound region.

Exported videos and many secondary captures carry no ``SequenceOfUltrasoundRegions`` but do
carry the scanner's screen: burned-in text, a depth scale, markers, sometimes a crop. Live tissue
changes from frame to frame (speckle, breathing, lung sliding, codec noise) while everything the
scanner draws stays the same, so the temporal range of each pixel separates the two. The static
bright pixels around the tissue are paper 004's static mask, found instead of drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import cv2
import numpy as np
import numpy.typing as npt

from lus_pacs.domain import GreyFrames, Region, RegionSource

MAX_SAMPLES = 32
"""Frames compared, spread evenly over the loop: enough to see motion, cheap on long loops."""
LIVE_RANGE = 10
"""Temporal range (grey levels) above which a pixel surely is live tissue."""
STATIC_RANGE = 3
"""Temporal range at or below which a pixel counts as constant: codec flicker of a static
picture stays within it (lossy codecs blur text edges)."""
BRIGHT_LEVEL = 48
"""Darkest grey of a burned-in overlay pixel, well above the black-level noise of exported
videos (up to about 20)."""
BLACK_LEVEL = 8
"""Brightest grey of the black screen around the scan area, for a single frame."""
MIN_FRACTION = 0.10
"""Smallest tissue area, as a fraction of the image, that is believed."""
PART_FRACTION = 0.10
"""A separate live component this large relative to the largest belongs to the same image
(an anechoic band can split the scan area in two)."""


class FoundTissue(NamedTuple):
    """What :func:`find_tissue_region` found."""

    region: Region
    overlay: npt.NDArray[np.bool_]
    moving: bool
    """Whether the region is the tissue seen moving; False for the largest non-black area of
    a cine that does not move (a single frame), and for the whole image."""


def find_tissue_region(
    frames: GreyFrames, usable: Sequence[int] | npt.NDArray[np.intp] | None = None
) -> FoundTissue:
    """Find the tissue region and the burned-in overlay of a cine from its pixels.

    The region is the bounding box of the tissue: pixels whose grey level changes by more than
    ``LIVE_RANGE`` over up to ``MAX_SAMPLES`` frames (after a morphological opening and closing,
    the largest component and those at least a tenth of its size), grown into the pixels that
    change by more than ``STATIC_RANGE`` and touch them. A single frame or a loop that does not
    move gives no such evidence: then the largest non-black blob (the sector or rectangle of the
    scan) is taken instead.

    Parameters
    ----------
    frames:
        Luminance frames, shape (frames, rows, columns).
    usable:
        The (0-based) frames to sample, when not all: a damaged frame (grey or garbage where
        its data was lost) would read as moving tissue or hide the still overlay.

    Returns
    -------
    region:
        ``RegionSource.IMAGE`` with ends exclusive and no calibration, or the whole image with
        ``RegionSource.WHOLE`` when no area of at least 10 % of the image is found.
    overlay_mask:
        Full-image mask of burned-in text and markers: pixels at least ``BRIGHT_LEVEL`` bright
        that stay constant over the loop, outside the moving tissue (still tissue near the
        probe looks the same; a marker drawn over the tissue is therefore not in the mask).
        Empty when the loop does not move: a static image cannot tell overlay from content.
    """
    if frames.ndim != 3 or frames.shape[0] == 0 or frames.dtype != np.uint8:
        raise ValueError(
            "find_tissue_region needs uint8 frames of shape (frames, rows, columns) with at "
            f"least one frame; got {frames.dtype} {frames.shape}."
        )
    n, rows, cols = frames.shape
    pool = np.arange(n) if usable is None or len(usable) == 0 else np.asarray(usable, np.intp)
    spread = np.linspace(0, len(pool) - 1, min(len(pool), MAX_SAMPLES)).round().astype(np.intp)
    picks = pool[np.unique(spread)]
    brightest, darkest = frames[picks[0]].copy(), frames[picks[0]].copy()
    for i in picks[1:]:
        cv2.max(brightest, frames[i], dst=brightest)
        cv2.min(darkest, frames[i], dst=darkest)
    span = cv2.subtract(brightest, darkest)
    min_area = MIN_FRACTION * rows * cols
    speck = _disc(3)
    # Gaps in the tissue (shadows, dark speckle) narrower than 2 % of the image get bridged.
    gap = _disc(max(3, round(0.02 * min(rows, cols)) | 1))

    live = _largest_parts(_clean(span > LIVE_RANGE, speck, gap), min_area)
    if live is not None:
        # Hysteresis: dark tissue (far field, shadows at low gain) changes only a little; it
        # belongs to the scan area where it touches what surely moves.
        tissue = live | _touching(_clean(span > STATIC_RANGE, speck, gap), live)
        # Tissue near the probe can be as still as text; inside the tissue it is tissue.
        overlay = (span <= STATIC_RANGE) & (darkest >= BRIGHT_LEVEL) & ~tissue
        return FoundTissue(_region(tissue, RegionSource.IMAGE), overlay, moving=True)
    no_overlay = np.zeros((rows, cols), np.bool_)
    # The wider opening detaches text and scale marks drawn against the scan area.
    blob = _largest_parts(_clean(brightest > BLACK_LEVEL, gap, gap), min_area)
    if blob is None or blob.all():
        return FoundTissue(Region(0, 0, cols, rows, RegionSource.WHOLE), no_overlay, moving=False)
    return FoundTissue(_region(blob, RegionSource.IMAGE), no_overlay, moving=False)


def _disc(diameter: int) -> npt.NDArray[np.uint8]:
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter)), np.uint8)


def _clean(
    mask: npt.NDArray[np.bool_],
    opening: npt.NDArray[np.uint8],
    closing: npt.NDArray[np.uint8],
) -> npt.NDArray[np.uint8]:
    """Drop what is thinner than ``opening``, then bridge gaps narrower than ``closing``."""
    out = cv2.morphologyEx(mask.view(np.uint8), cv2.MORPH_OPEN, opening)
    return np.asarray(cv2.morphologyEx(out, cv2.MORPH_CLOSE, closing), np.uint8)


def _largest_parts(mask: npt.NDArray[np.uint8], min_area: float) -> npt.NDArray[np.bool_] | None:
    """The largest component and those at least ``PART_FRACTION`` of it; None if too small."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count < 2:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(areas.max())
    if largest < min_area:
        return None
    keep = np.zeros(count, np.bool_)
    keep[1:] = areas >= PART_FRACTION * largest
    return keep[labels]


def _touching(mask: npt.NDArray[np.uint8], seeds: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The components of ``mask`` that overlap ``seeds``."""
    count, labels = cv2.connectedComponents(mask, connectivity=8)
    keep = np.bincount(labels[seeds], minlength=count) > 0
    keep[0] = False
    return keep[labels]


def _region(mask: npt.NDArray[np.bool_], source: RegionSource) -> Region:
    x, y, w, h = cv2.boundingRect(mask.view(np.uint8))
    return Region(x, y, x + w, y + h, source)


BLANK_LEVEL = 16
"""Grey level under which a pixel holds no echo (a black screen's codec noise is a few levels;
the assessment's ``min_level`` for a whole cine is the same)."""


def blank_frames(
    frames: npt.NDArray[np.uint8], region: Region, overlay: npt.NDArray[np.bool_]
) -> frozenset[int]:
    """Frames (1-based) of ``frames`` with no echo in ``region``: fewer than 1 % of its pixels
    at :data:`BLANK_LEVEL` or brighter, the burned-in ``overlay`` (full-image mask, from
    :func:`find_tissue_region`) aside: text over a black frame leaves it a black frame."""
    tissue = frames[:, region.y0 : region.y1, region.x0 : region.x1]
    if tissue.size == 0:
        return frozenset()
    content = ~overlay[region.y0 : region.y1, region.x0 : region.x1]
    limit = 0.01 * tissue.shape[1] * tissue.shape[2]
    return frozenset(
        i + 1
        for i, frame in enumerate(tissue)
        if np.count_nonzero((frame >= BLANK_LEVEL) & content) < limit
    )
