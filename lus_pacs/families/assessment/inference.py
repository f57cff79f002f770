"""The assessment of one cine: can the lung models read it?

Seven checks, in this order, each giving its reason (:class:`NotAssessableReason`):

* **still image**: fewer than ``min_frames`` frames. B-lines, consolidation and the clip scores
  are read from a loop; the other checks still apply, and when this is the only reason the
  models that read single frames (segmentation) still run.
* **not lung**: the scan area narrows to a point at the skin (``apex_width`` or less of its
  widest row, averaged over the first rows): a phased-array cardiac sector. Lung is scanned
  with a convex or linear probe, whose scan area is wide at the skin; on the 229 real POCUS clips
  (both sets) the narrowest such ratio is 0.18 and the 1st percentile 0.20; pydicom's
  echocardiogram gives 0.12.
* **damaged frames**: more than ``max_damaged_share`` of the frames were read only in part
  (:attr:`~lus_pacs.domain.Cine.damaged`: corrupt or cut-short JPEG data), or fewer than
  ``min_frames`` are intact.
* **blank**: the scan area shows no echo texture: the median over the view's frames of the
  standard deviation of its scan-area pixels (the view is gain normalised, so a dim image
  with speckle keeps its texture) is under ``min_texture``. On the 229 real POCUS clips (both
  sets) the smallest is 0.155 and the 1st percentile 0.170; a black or uniform cine gives 0.
* **blank, dark**: the scan area's 99th percentile grey level (before the gain
  normalisation) is under ``min_level``: a black screen's codec noise, which the
  normalisation stretches to full contrast, read as texture (a black cine with noise of a few
  grey levels got B-lines present and a severity score). The real clips' smallest is 76.
* **too small**: the region the view is cut from spans fewer than ``min_side`` source pixels
  one way (a thumbnail, a strip): its view is mostly made up by resampling. The real clips'
  smallest is 118 x 118.
* **poor quality** (only with ``use_quality``): the key-frame model (paper 004), when it ran,
  found no frame a clinician would keep. Off in the shipped bundle: that model flags 2 of 6
  ordinary simulated cines poor (rib shadow), so its flag stays a flag beside the findings.

The bundle has no network: ``models/assessment`` holds ``configs/metadata.json`` (version,
name) and ``configs/inference.json`` (the thresholds above) and its card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
from lus_pacs.inference.lung_features import cine_view, view_region

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
        )

    def assess(self, cine: Cine, quality: object | None = None) -> AssessmentFindings:
        """The assessment of ``cine``; ``quality`` is the key-frame model's findings, if any."""
        reasons = []
        if cine.n_frames < self.min_frames:
            reasons.append(NotAssessableReason.STILL_IMAGE)
        intact = int(cine.intact().sum())
        if intact < min(self.min_frames, cine.n_frames) or (
            cine.n_frames - intact > self.max_damaged_share * cine.n_frames
        ):
            reasons.append(NotAssessableReason.DAMAGED_FRAMES)
        width = apex_ratio(cine)
        if width <= self.apex_width:
            reasons.append(NotAssessableReason.NOT_LUNG)
        if echo_texture(cine) < self.min_texture or cine_view(cine).level < self.min_level:
            reasons.append(NotAssessableReason.BLANK)
        region = view_region(cine)
        if min(region.width, region.height) < self.min_side:
            reasons.append(NotAssessableReason.TOO_SMALL)
        if (
            self.use_quality
            and isinstance(quality, KeyFrameFindings)
            and quality.quality is Quality.POOR
        ):
            reasons.append(NotAssessableReason.POOR_QUALITY)
        return AssessmentFindings(tuple(reasons), width, self.model)


def apex_ratio(cine: Cine) -> float:
    """Width of the scan area at the skin over its widest row, in the normalised view."""
    view = cine_view(cine)
    widths = view.scan.sum(axis=1).astype(np.float64)
    widest = float(widths.max())
    if widest == 0:
        return 0.0
    first = int(np.argmax(widths > 0.05 * widest))
    return float(widths[first : first + TOP_ROWS].mean() / widest)


def echo_texture(cine: Cine) -> float:
    """The median over the view's frames of the standard deviation of the scan-area pixels
    (the view gain normalised to its 99th percentile: 0 for black or uniform frames)."""
    view = cine_view(cine)
    return float(np.median([frame[view.scan].std() for frame in view.frames]))
