"""The assessment of one cine: can the lung models read it?

Nine checks, in this order, each giving its reason (:class:`NotAssessableReason`):

* **still image**: fewer than ``min_frames`` frames, or a loop that does not move (one image
  sent as a loop: :attr:`~lus_pacs.domain.Cine.moving`), or of few distinct images (fewer than
  ``min_frames`` intact frames differing from the one before them, or one image held
  unchanged over more than ``max_frozen_share`` of them: a freeze; :func:`frame_changes`).
  B-lines, consolidation and the clip scores are read from a loop; the other checks still
  apply, and when this is the only reason the models that read single frames (segmentation)
  still run.
* **not lung**: the scan area narrows to a point at the skin (``apex_width`` or less of its
  widest row, averaged over the first rows): a phased-array cardiac sector. Lung is scanned
  with a convex or linear probe, whose scan area is wide at the skin; on the 229 real POCUS clips
  (both sets) the narrowest such ratio is 0.18 and the 1st percentile 0.20; pydicom's
  echocardiogram gives 0.12.
* **damaged frames**: more than ``max_damaged_share`` of the frames were read only in part
  (:attr:`~lus_pacs.domain.Cine.damaged`: corrupt or cut-short JPEG data), or fewer than
  ``min_frames`` decoded whole.
* **blank**: the scan area shows no echo texture: the median over the view's frames of the
  standard deviation of its scan-area pixels (the view is gain normalised, so a dim image
  with speckle keeps its texture) is under ``min_texture``. On the 229 real POCUS clips (both
  sets) the smallest is 0.155 and the 1st percentile 0.170; a black or uniform cine gives 0.
* **blank, dark**: the scan area's 99th percentile grey level (before the gain
  normalisation) is under ``min_level``: a black screen's codec noise, which the
  normalisation stretches to full contrast, read as texture (a black cine with noise of a few
  grey levels got B-lines present and a severity score). The real clips' smallest is 76.
  Also when frames with no echo (:attr:`~lus_pacs.domain.Cine.blank`: the probe lifted) are
  more than ``max_damaged_share`` of the loop or leave fewer than ``min_frames``; fewer, they
  are left out of every reading, as damaged frames are.
* **colour flow**: more than ``max_colour_share`` of the tissue region's pixels (burned-in
  overlay aside) are of a strong colour in a few frames spread over the loop
  (:attr:`~lus_pacs.domain.Cine.colour_share`): colour flow or power Doppler over the lung,
  whose reds and blues the grey reading takes for echoes. On the 238 real POCUS clips (both
  sets, decoded in colour) the largest share is 0.005 (a web clip's coloured arrows); a colour
  box over a quarter of the sector gives about 0.1.
* **too small**: the region the view is cut from spans fewer than ``min_side`` source pixels
  one way (a thumbnail, a strip): its view is mostly made up by resampling. The real clips'
  smallest is 118 x 118.
* **out of range**: one of the cine's 32 clip measurements lies more than
  ``max_deviation`` standard deviations from its mean over the real trainable clips
  (``measurement_reference``, written by ``lus-pacs fit assessment``): a view the heads never
  saw, whose "findings" would be extrapolation (a sector drawn in a strip at the bottom of a
  declared full-frame region measured about 1,700 deviations out and was called a certain "no
  B-lines, score 0"). The real clips lie within 5.2 (trainable) and 7.3 (evaluation-only).
* **poor quality** (only with ``use_quality``): the key-frame model (paper 004), when it ran,
  found no frame a clinician would keep. Off in the shipped bundle: that model flags 2 of 6
  ordinary simulated cines poor (rib shadow), so its flag stays a flag beside the findings.

The bundle has no network: ``models/assessment`` holds ``configs/metadata.json`` (version,
name) and ``configs/inference.json`` (the thresholds above) and its card.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from lus_pacs.domain import (
    AssessmentFindings,
    Cine,
    KeyFrameFindings,
    ModelInfo,
    NotAssessableReason,
    Quality,
)
from lus_pacs.errors import ModelError
from lus_pacs.inference.bundle import INFERENCE, METADATA, read_json
from lus_pacs.inference.lung_features import (
    CLIP_FEATURES,
    FEATURE_VERSION,
    cine_features,
    cine_view,
    view_region,
)

TOP_ROWS = 6
"""Rows of the normalised view, from the first row of the scan area, whose width is measured."""


@dataclass(frozen=True)
class Assessor:
    """The assessment checks with their thresholds (see the module)."""

    model: ModelInfo
    min_frames: int
    apex_width: float
    use_quality: bool
    max_damaged_share: float
    min_texture: float
    min_level: float
    """Grey level (0-255) the scan area's 99th percentile must reach (else blank)."""
    min_side: int
    """Source pixels the scan area's region must span each way (else too small)."""
    reference: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]
    """Mean and standard deviation of each clip measurement over the trainable real clips."""
    max_deviation: float
    """Standard deviations a clip measurement may lie from the reference mean (else out of
    range)."""
    max_colour_share: float
    """Share of the tissue region that may be of a strong colour (else colour flow)."""
    min_speckle: float
    """Correlation of neighbouring tissue pixels below which the image is noise (blank)."""
    max_frozen_share: float = 0.5
    """Share of the intact frames one unchanging image may hold (its longest run of exact
    repeats), beyond which the loop is a still image (a scanner's freeze stored as a loop)."""

    @classmethod
    def load(cls, folder: Path) -> Assessor:
        """The assessor of a bundle folder such as ``models/assessment``.

        Raises
        ------
        ModelError
            A config file is missing or a threshold is invalid.
        """
        folder = Path(folder)
        metadata = read_json(folder / METADATA)
        config = read_json(folder / INFERENCE)
        min_frames = config.get("min_frames")
        apex_width = config.get("apex_width")
        use_quality = config.get("use_quality")
        damaged_share = config.get("max_damaged_share")
        min_texture = config.get("min_texture")
        min_level = config.get("min_level")
        min_side = config.get("min_side")
        max_deviation = config.get("max_deviation")
        max_colour_share = config.get("max_colour_share")
        min_speckle = config.get("min_speckle")
        max_frozen_share = config.get("max_frozen_share")
        reference = _reference(config.get("measurement_reference"), folder)
        # Every threshold is required: one left out would turn its check off without a word.
        if not isinstance(min_frames, int) or min_frames < 1:
            raise ModelError(f"{folder / INFERENCE}: 'min_frames' must be a positive integer.")
        if not isinstance(apex_width, int | float) or not 0 <= apex_width < 1:
            raise ModelError(f"{folder / INFERENCE}: 'apex_width' must be within [0, 1).")
        if not isinstance(damaged_share, int | float) or not 0 <= damaged_share <= 1:
            raise ModelError(f"{folder / INFERENCE}: 'max_damaged_share' must be within [0, 1].")
        if not isinstance(min_texture, int | float) or not 0 <= min_texture < 1:
            raise ModelError(f"{folder / INFERENCE}: 'min_texture' must be within [0, 1).")
        if not isinstance(min_level, int | float) or not 0 <= min_level < 255:
            raise ModelError(f"{folder / INFERENCE}: 'min_level' must be within [0, 255).")
        if not isinstance(min_side, int) or min_side < 1:
            raise ModelError(f"{folder / INFERENCE}: 'min_side' must be a positive integer.")
        if not isinstance(max_deviation, int | float) or max_deviation <= 0:
            raise ModelError(f"{folder / INFERENCE}: 'max_deviation' must be a positive number.")
        if not isinstance(max_colour_share, int | float) or not 0 <= max_colour_share < 1:
            raise ModelError(f"{folder / INFERENCE}: 'max_colour_share' must be within [0, 1).")
        if not isinstance(min_speckle, int | float) or not -1 <= min_speckle < 1:
            raise ModelError(f"{folder / INFERENCE}: 'min_speckle' must be within [-1, 1).")
        if not isinstance(max_frozen_share, int | float) or not 0 <= max_frozen_share < 1:
            raise ModelError(f"{folder / INFERENCE}: 'max_frozen_share' must be within [0, 1).")
        if not isinstance(use_quality, bool):
            raise ModelError(f"{folder / INFERENCE}: 'use_quality' must be true or false.")
        for key in ("version", "name"):
            if not isinstance(metadata.get(key), str):
                raise ModelError(f"{folder / METADATA}: '{key}' must be a string.")
        model = ModelInfo(folder.resolve().name, metadata["version"], metadata["name"])
        return cls(
            model,
            min_frames,
            float(apex_width),
            use_quality,
            float(damaged_share),
            float(min_texture),
            float(min_level),
            min_side,
            reference,
            float(max_deviation),
            float(max_colour_share),
            float(min_speckle),
            float(max_frozen_share),
        )

    def assess(self, cine: Cine, quality: object | None = None) -> AssessmentFindings:
        """The assessment of ``cine``; ``quality`` is the key-frame model's findings, if any."""
        reasons = []
        # A loop that does not move (one image sent as a loop) is a still image too, and so is
        # one of few distinct images: a freeze with a frame or two of the live image beside it
        # read as moving, and got B-lines on its 29 identical frames.
        changes, frozen = frame_changes(cine)
        if (
            cine.n_frames < self.min_frames
            or cine.moving is False
            or changes + 1 < self.min_frames
            or frozen > self.max_frozen_share * int(cine.intact().sum())
        ):
            reasons.append(NotAssessableReason.STILL_IMAGE)
        needed = min(self.min_frames, cine.n_frames)
        damaged = sum(1 for f in cine.damaged if 1 <= f <= cine.n_frames)
        if cine.n_frames - damaged < needed or damaged > self.max_damaged_share * cine.n_frames:
            reasons.append(NotAssessableReason.DAMAGED_FRAMES)
        width = apex_ratio(cine)
        if width <= self.apex_width:
            reasons.append(NotAssessableReason.NOT_LUNG)
        if (
            echo_texture(cine) < self.min_texture
            or cine_view(cine).level < self.min_level
            # Frames with no echo (the probe lifted) leave too few to read, or most of it.
            or int(cine.intact().sum()) < needed
            or len(cine.blank) > self.max_damaged_share * cine.n_frames
            # Noise, not echo: ultrasound speckle spans several pixels, noise does not (random
            # noise moved, had texture and level, and got B-lines and a severity score).
            or speckle_correlation(cine) < self.min_speckle
        ):
            reasons.append(NotAssessableReason.BLANK)
        if cine.colour_share is not None and cine.colour_share > self.max_colour_share:
            reasons.append(NotAssessableReason.COLOUR_FLOW)
        region = view_region(cine)
        if min(region.width, region.height) < self.min_side:
            reasons.append(NotAssessableReason.TOO_SMALL)
        elif self.deviation(cine) > self.max_deviation:
            reasons.append(NotAssessableReason.OUT_OF_RANGE)
        if (
            self.use_quality
            and isinstance(quality, KeyFrameFindings)
            and quality.quality is Quality.POOR
        ):
            reasons.append(NotAssessableReason.POOR_QUALITY)
        return AssessmentFindings(tuple(reasons), width, self.model)

    def deviation(self, cine: Cine) -> float:
        """How far the cine's clip measurements lie from the reference: the largest of their
        distances from its means, in its standard deviations."""
        mean, std = self.reference
        clip = cine_features(cine)[1].astype(np.float64)
        if not np.isfinite(clip).all():  # a measurement of nothing (an empty band)
            return float("inf")
        return float(np.max(np.abs(clip - mean) / std))


def frame_changes(cine: Cine) -> tuple[int, int]:
    """How many intact frames differ from the intact frame before them in the tissue region,
    and the longest run of intact frames showing one image exactly (a frozen image decodes to
    the same pixels every time). A run, not the count of repeats: a loop recorded at twice
    its rate (every frame stored twice, as screen recorders and rate converters do) repeats
    half its frames and moves."""
    tissue = cine.tissue()
    kept = np.flatnonzero(cine.intact())
    changes, run, longest = 0, 1, min(1, len(kept))
    for before, after in itertools.pairwise(kept):
        if np.array_equal(tissue[before], tissue[after]):
            run += 1
            longest = max(longest, run)
        else:
            changes += 1
            run = 1
    return changes, longest


def _reference(
    doc: object, folder: Path
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The bundle's ``measurement_reference`` (``lus-pacs fit assessment``), checked against
    the measurements this code makes."""
    where = folder / INFERENCE
    if not isinstance(doc, dict):
        raise ModelError(f"{where}: 'measurement_reference' is missing; `lus-pacs fit assessment`.")
    if doc.get("feature_version") != FEATURE_VERSION or doc.get("features") != list(CLIP_FEATURES):
        raise ModelError(
            f"{where}: its measurement reference is of other lung measurements than this code "
            f"makes (version {FEATURE_VERSION}); make it again with `lus-pacs fit assessment`."
        )
    try:
        mean = np.asarray(doc["mean"], dtype=np.float64)
        std = np.asarray(doc["std"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: 'measurement_reference' is unreadable ({exc}).") from exc
    n = len(CLIP_FEATURES)
    if mean.shape != (n,) or std.shape != (n,) or not (np.isfinite(mean).all() and (std > 0).all()):
        raise ModelError(f"{where}: 'measurement_reference' needs {n} means and positive stds.")
    return mean, std


def apex_ratio(cine: Cine) -> float:
    """Width of the scan area at the skin over its widest row, in the normalised view."""
    view = cine_view(cine)
    widths = view.scan.sum(axis=1).astype(np.float64)
    widest = float(widths.max())
    if widest == 0:
        return 0.0
    first = int(np.argmax(widths > 0.05 * widest))
    return float(widths[first : first + TOP_ROWS].mean() / widest)


def speckle_correlation(cine: Cine, frames: int = 6) -> float:
    """How alike neighbouring pixels of the tissue region are: on up to ``frames`` intact
    frames spread over the loop, the correlation of each pixel with its right and its lower
    neighbour (black and burned-in pixels aside), the smaller of the two, then the median over
    the frames; 1 when it cannot be told (too few pixels, a uniform frame: other checks say
    blank). Ultrasound speckle spans several pixels after scan conversion (229 real clips of
    many devices: 0.84 at the least), noise drawn pixel by pixel about 0."""
    region = view_region(cine)
    intact = np.flatnonzero(cine.intact())
    if intact.size == 0:
        return 1.0
    picked = intact[np.linspace(0, intact.size - 1, min(frames, intact.size)).astype(int)]
    overlay = None
    if cine.overlay_mask is not None:
        overlay = cine.overlay_mask[region.y0 : region.y1, region.x0 : region.x1]
    per_frame = []
    for index in picked:
        frame = cine.frames[index, region.y0 : region.y1, region.x0 : region.x1].astype(np.float32)
        keep = frame > 0
        if overlay is not None:
            keep &= ~overlay
        pairs = (
            (frame[:, 1:], frame[:, :-1], keep[:, 1:] & keep[:, :-1]),
            (frame[1:], frame[:-1], keep[1:] & keep[:-1]),
        )
        found = [
            c for a, b, k in pairs if k.sum() >= 100 and (c := _correlation(a[k], b[k])) is not None
        ]
        if found:
            per_frame.append(min(found))
    return float(np.median(per_frame)) if per_frame else 1.0


def _correlation(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float | None:
    spread = float(a.std()) * float(b.std())
    if spread < 1e-6:
        return None
    return float(((a - a.mean()) * (b - b.mean())).mean() / spread)


def echo_texture(cine: Cine) -> float:
    """The median over the view's frames of the standard deviation of the scan-area pixels
    (the view gain normalised to its 99th percentile: 0 for black or uniform frames)."""
    view = cine_view(cine)
    return float(np.median([frame[view.scan].std() for frame in view.frames]))
