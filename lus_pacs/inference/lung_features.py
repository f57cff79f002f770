"""Image measurements of lung ultrasound that carry across devices, per frame and per clip.

The real-data models (B-lines, severity, consolidation) do not look at raw pixels: a network
trained on a few hundred clips from a dozen publishers learns their devices, not their lungs.
They read what a sonographer reads, measured on a view from which most device differences are
removed first:

* the tissue region only (:func:`view_region`: the file's declared region narrowed to the
  moving tissue found in it), resampled to ``VIEW_SIZE`` rows (depth) x columns, so depth and
  width become fractions of the image;
* intensities divided by the clip's 99th percentile inside the scan area (gain and dynamic
  range), the scan area being the pixels that are ever brighter than black (sector or rectangle);
* at most ``MAX_FRAMES`` frames spread evenly over the loop (frame rate and length).

Per frame (:data:`FRAME_FEATURES`): the pleural line (the brightest horizontal band in the upper
two thirds: its depth, brightness and continuity); below it the brightness of the far field
(white lung), bright vertical streaks that reach the bottom of the image (B-lines: columns much
brighter than their neighbours over the lower half), the balance of vertical to horizontal
edges (B-lines are vertical, A-lines horizontal), A-line repeats at twice the pleural depth,
dark areas (shadows, effusion) and tissue-like texture just below the pleura (consolidation).
Per clip (:func:`clip_features`): the mean and the 90th percentile of each frame measurement
over the frames, and how much the pleural band moves (lung sliding).
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from lus_pacs.domain import Cine, Region, RegionSource

FEATURE_VERSION = 2
"""Changes whenever a measurement changes: cached measurements of another version are redone.
2: the view of a declared region is cut to the moving tissue found in it (:func:`view_region`);
cines whose region was found from their pixels (every real clip measured so far) measure as in
1."""
VIEW_SIZE = (128, 128)
"""Rows (depth) and columns of the normalised view."""
MAX_FRAMES = 32
"""Frames measured per clip, spread evenly over the loop."""
_BLACK = 0.04
"""Normalised grey below which a pixel that never gets brighter is outside the scan area."""
_PLEURA_ROWS = (0.04, 0.67)
"""Depth range (fractions of the image) searched for the pleural line."""
_BAND = 0.04
"""Half height of the pleural band, as a fraction of the image."""
_FOUND_SHARE = 0.25
"""Smallest width and height of the tissue found inside a declared region, as a share of the
region's, that narrows the view to it (less: a moving marker, not the scan; the file is kept)."""

FRAME_FEATURES = (
    "pleura_depth",
    "pleura_brightness",
    "pleura_continuity",
    "far_field_brightness",
    "deep_brightness",
    "streak_contrast",
    "streak_width",
    "streak_reach",
    "vertical_edges",
    "a_line_repeat",
    "dark_fraction",
    "bright_fraction",
    "subpleural_texture",
    "subpleural_brightness",
    "far_field_spread",
)
"""What :func:`frame_features` measures, in column order."""

CLIP_FEATURES = (
    *(f"mean_{name}" for name in FRAME_FEATURES),
    *(f"p90_{name}" for name in FRAME_FEATURES),
    "pleura_motion",
    "far_field_motion",
)
"""What :func:`clip_features` returns, in order."""


@dataclass(frozen=True)
class LungView:
    """The normalised view of a clip and where its frames came from."""

    frames: npt.NDArray[np.float32]
    """(frames, rows, columns) in [0, 1]: tissue, resampled, gain normalised."""
    scan: npt.NDArray[np.bool_]
    """(rows, columns): the scan area (sector or rectangle) of the view."""
    picks: npt.NDArray[np.intp]
    """0-based source frame of each view frame."""
    level: float = 255.0
    """The grey level (0-255) the frames were divided by: the 99th percentile of the scan
    area before normalisation. A black screen's codec noise (a few grey levels) is stretched
    to full contrast by the normalisation; this says how bright the image really was."""


def view_region(cine: Cine) -> Region:
    """Where the view is cut from: the cine's region, narrowed to the moving tissue found in
    its pixels (:attr:`~lus_pacs.domain.Cine.found_region`) where the region is the file's
    declared one.

    A scanner's declared rectangle (``SequenceOfUltrasoundRegions``) may hold black margins
    around the sector, while the real clips the heads were fitted on had their regions found
    from the pixels: the same sector in a wider rectangle would fill less of the view and move
    every depth and column measurement (the trainable clips in a black margin of a quarter of
    their size on each side: the B-line head's logit +0.79 on average, external AUC 0.77 ->
    0.70). A region found from the pixels, or one with little moving tissue inside it, is
    kept as it is.
    """
    declared, found = cine.region, cine.found_region
    if declared.source is not RegionSource.DICOM or found is None:
        return declared
    x0, y0 = max(declared.x0, found.x0), max(declared.y0, found.y0)
    x1, y1 = min(declared.x1, found.x1), min(declared.y1, found.y1)
    if x1 - x0 < _FOUND_SHARE * declared.width or y1 - y0 < _FOUND_SHARE * declared.height:
        return declared
    return Region(x0, y0, x1, y1, declared.source, declared.cm_per_pixel_x, declared.cm_per_pixel_y)


def lung_view(cine: Cine, max_frames: int = MAX_FRAMES) -> LungView:
    """The clip's tissue (:func:`view_region`), resampled to ``VIEW_SIZE`` and gain
    normalised (see the module), from its intact frames (a damaged frame, grey where its
    data ended, would be measured as lung) unless none is."""
    intact = np.flatnonzero(cine.intact())
    usable = intact if len(intact) else np.arange(cine.n_frames)
    n = len(usable)
    picks = usable[np.unique(np.linspace(0, n - 1, min(n, max_frames)).round().astype(np.intp))]
    r = view_region(cine)
    tissue = cine.frames[:, r.y0 : r.y1, r.x0 : r.x1]
    rows, cols = VIEW_SIZE
    frames = np.stack(
        [
            cv2.resize(np.ascontiguousarray(tissue[i]), (cols, rows), interpolation=cv2.INTER_AREA)
            for i in picks
        ]
    ).astype(np.float32)
    brightest = frames.max(axis=0)
    scan = brightest > _BLACK * 255
    if scan.sum() < 0.1 * scan.size:
        scan = np.ones_like(scan)
    level = float(np.percentile(frames[:, scan], 99)) if scan.any() else 255.0
    frames = np.clip(frames / max(level, 1.0), 0.0, 1.0)
    return LungView(frames=frames, scan=scan, picks=picks, level=level)


def frame_features(view: LungView) -> npt.NDArray[np.float32]:
    """(frames, len(FRAME_FEATURES)) measurements of each frame of the view."""
    return np.stack([_measure(frame, view.scan) for frame in view.frames]).astype(np.float32)


def clip_features(view: LungView, per_frame: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(len(CLIP_FEATURES),): frame measurements pooled over the clip, and its motion."""
    mean = per_frame.mean(axis=0)
    p90 = np.percentile(per_frame, 90, axis=0)
    depth = round(float(np.median(per_frame[:, 0])) * VIEW_SIZE[0])
    band = slice(max(0, depth - 4), depth + 5)
    far = slice(min(VIEW_SIZE[0] - 1, depth + 10), VIEW_SIZE[0])
    if len(view.frames) > 1:
        step = np.abs(np.diff(view.frames, axis=0))
        columns = view.scan[band].any(axis=0)  # none where the band holds no scan area
        pleura_motion = float(step[:, band][:, :, columns].mean()) if columns.any() else 0.0
        far_field_motion = float(step[:, far].mean())
    else:
        pleura_motion = far_field_motion = 0.0
    return np.concatenate([mean, p90, [pleura_motion, far_field_motion]]).astype(np.float32)


def cine_features(cine: Cine) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], LungView]:
    """Frame measurements, clip measurements and the view of one cine.

    Measured once per cine object (the B-line and severity families both read them); the
    arrays are read-only, shared by every caller, and forgotten with the cine.
    """
    with _MEASURED_LOCK:
        known = _MEASURED.get(cine)
    if known is not None:
        return known
    view = cine_view(cine)
    per_frame = frame_features(view)
    clip = clip_features(view, per_frame)
    for array in (per_frame, clip):
        array.setflags(write=False)
    measured = (per_frame, clip, view)
    with _MEASURED_LOCK:
        _MEASURED[cine] = measured
    return measured


def cine_view(cine: Cine) -> LungView:
    """:func:`lung_view` of one cine, made once per cine object (the assessment, B-line and
    severity families all read it) and forgotten with the cine."""
    with _MEASURED_LOCK:
        known = _VIEWS.get(cine)
    if known is not None:
        return known
    view = lung_view(cine)
    for array in (view.frames, view.scan, view.picks):
        array.setflags(write=False)
    with _MEASURED_LOCK:
        _VIEWS[cine] = view
    return view


_VIEWS: weakref.WeakKeyDictionary[Cine, LungView] = weakref.WeakKeyDictionary()
_MEASURED: weakref.WeakKeyDictionary[
    Cine, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], LungView]
] = weakref.WeakKeyDictionary()
_MEASURED_LOCK = threading.Lock()


def _measure(frame: npt.NDArray[np.float32], scan: npt.NDArray[np.bool_]) -> list[float]:
    rows = frame.shape[0]
    inside = scan.astype(np.float32)
    weight = np.maximum(inside.sum(axis=1), 1.0)
    profile = (frame * inside).sum(axis=1) / weight
    smooth = cv2.GaussianBlur(profile[:, None], (1, 5), 0).ravel()
    top, bottom = (round(f * rows) for f in _PLEURA_ROWS)
    depth = top + int(np.argmax(smooth[top:bottom]))
    band = max(1, round(_BAND * rows))

    pleura = frame[max(0, depth - band) : depth + band + 1]
    pleura_scan = scan[max(0, depth - band) : depth + band + 1].any(axis=0)
    column_peak = pleura.max(axis=0)[pleura_scan] if pleura_scan.any() else np.zeros(1)
    below_start = min(rows - 2, depth + 2 * band)
    below = frame[below_start:]
    below_scan = scan[below_start:]
    overall = float(frame[scan].mean()) if scan.any() else 0.0

    # Columns over the lower half of the image, relative to a wide local baseline: B-lines are
    # narrow bright columns that reach the bottom.
    lower = frame[rows // 2 :]
    lower_scan = scan[rows // 2 :]
    column = (lower * lower_scan).sum(axis=0) / np.maximum(lower_scan.sum(axis=0), 1.0)
    valid = lower_scan.mean(axis=0) > 0.5
    baseline = cv2.blur(column[None], (31, 1), borderType=cv2.BORDER_REFLECT).ravel()
    excess = np.where(valid, column - baseline, 0.0)
    spread = float(np.std(column[valid])) if valid.sum() > 2 else 0.0
    streak_contrast = float(excess.max()) if valid.any() else 0.0
    streak_width = float((excess > 0.08).sum()) / max(int(valid.sum()), 1)
    # Reach: how far down the brightest column of the far field stays bright.
    if valid.any():
        best = int(np.argmax(np.where(valid, excess, -np.inf)))
        strip = frame[below_start:, max(0, best - 2) : best + 3].mean(axis=1)
        reach = float((strip > 0.5 * max(float(pleura.mean()), 1e-3)).mean())
    else:
        reach = 0.0

    grad_x = np.abs(cv2.Sobel(below, cv2.CV_32F, 1, 0, ksize=3))
    grad_y = np.abs(cv2.Sobel(below, cv2.CV_32F, 0, 1, ksize=3))
    inner = cv2.erode(below_scan.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    if inner.any():
        vertical_edges = float(
            np.log((grad_x[inner].mean() + 1e-3) / (grad_y[inner].mean() + 1e-3))
        )
    else:
        vertical_edges = 0.0

    repeat = 2 * depth
    if repeat + band < rows:
        at = smooth[repeat - band : repeat + band + 1].max()
        around = np.concatenate(
            [
                smooth[max(depth + band, repeat - 4 * band) : repeat - band],
                smooth[repeat + band + 1 : repeat + 4 * band],
            ]
        )
        a_line = float(at - around.mean()) if around.size else 0.0
    else:
        a_line = 0.0

    below_pixels = below[below_scan] if below_scan.any() else np.zeros(1, np.float32)
    sub = frame[below_start : min(rows, below_start + round(0.2 * rows))]
    sub_scan = scan[below_start : min(rows, below_start + round(0.2 * rows))]
    sub_pixels = sub[sub_scan] if sub_scan.any() else np.zeros(1, np.float32)
    deep = frame[round(0.75 * rows) :][scan[round(0.75 * rows) :]]
    return [
        depth / rows,
        float(smooth[depth]) / max(overall, 1e-3),
        float((column_peak > 0.5 * column_peak.max()).mean()) if column_peak.max() > 0 else 0.0,
        float(below_pixels.mean()) / max(float(smooth[depth]), 1e-3),
        float(deep.mean()) if deep.size else 0.0,
        streak_contrast,
        streak_width,
        reach,
        vertical_edges,
        a_line,
        float((below_pixels < 0.08).mean()),
        float((below_pixels > 0.5).mean()),
        float(sub_pixels.std()),
        float(sub_pixels.mean()),
        spread,
    ]
