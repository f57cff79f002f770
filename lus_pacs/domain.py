"""Values that cross the seams of the pipeline: frozen dataclasses, one module.

Frames are numbered from 1 wherever a frame number leaves the process (DICOM's convention);
arrays are indexed from 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt

_T = TypeVar("_T")

GreyFrames = npt.NDArray[np.uint8]
"""Luminance frames, shape (frames, rows, columns)."""

MASK_LABELS = 5
"""Labels of a segmentation mask: the severity scores 0-3 and :data:`MASK_BACKGROUND`."""
MASK_BACKGROUND = 4
"""The label of pixels that show none of the scores."""


class OutputKind(StrEnum):
    """A kind of result object the node makes."""

    SR = "sr"
    """Per cine: the TID 1500 Comprehensive SR of the findings."""
    KOS = "kos"
    """Per cine: the Key Object Selection of its key frames."""
    SEG = "seg"
    """Per cine: the score masks as a LABELMAP SEG."""
    SEG_BINARY = "seg-binary"
    """Per cine: the same masks as a BINARY SEG, for viewers that know no LABELMAP SEG."""
    SEG_UNCERTAINTY = "seg-uncertainty"
    """Per cine: the Monte-Carlo dropout uncertainty as a FRACTIONAL SEG."""
    PR = "pr"
    """Per cine: the presentation state drawing boxes and labels on the key frames."""
    STUDY_SR = "study-sr"
    """Per study: the summary SR."""


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
    damaged: Mapping[int, str] = field(default_factory=dict)
    """Frames (1-based) the decoder read only in part, with what it said: named in the record,
    never chosen as a key, severity or segmented frame."""
    found_region: Region | None = None
    """The moving tissue's region found from the pixels (``RegionSource.IMAGE``), also where
    ``region`` is the file's declared one: a declared rectangle may hold black margins around
    the scan area. None for a cine that does not move (a single frame gives no evidence of where
    the tissue is) and one not decoded from a file."""
    blank: frozenset[int] = frozenset()
    """Frames (1-based) with no echo in the tissue region (a black or noise-only frame: the
    probe lifted, a frame the scanner left empty): never a key, severity or segmented frame,
    and left out of the lung view, as damaged frames are."""
    moving: bool | None = None
    """Whether the loop moves (the region finder saw tissue change over it); False for a
    frozen image sent as a loop, None for a cine not decoded from a file."""
    colour_share: float | None = None
    """Share of the tissue region's pixels (burned-in overlay aside) shown in a strong colour,
    over a few frames spread over the loop: colour flow (Doppler) drawn over the tissue, which
    read as grey would be read as echoes. None for an image with no colour and a cine not
    decoded from a file."""

    def __post_init__(self) -> None:
        if self.frames.ndim != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                "Cine.frames must be uint8 of shape (frames, rows, columns); "
                f"got {self.frames.dtype} {self.frames.shape}."
            )

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def intact(self) -> npt.NDArray[np.bool_]:
        """Per frame (0-based), whether it decoded whole and shows an echo (not blank)."""
        ok = np.ones(self.n_frames, dtype=bool)
        ok[[f - 1 for f in (*self.damaged, *self.blank) if 1 <= f <= self.n_frames]] = False
        return ok

    def tissue(self) -> GreyFrames:
        """The frames cropped to the tissue region."""
        r = self.region
        return self.frames[:, r.y0 : r.y1, r.x0 : r.x1]


@dataclass(frozen=True)
class ModelInfo:
    """Identifies the algorithm behind a finding, as every result object must."""

    name: str
    """The bundle's folder name under ``models/`` (``b_lines``, ``severity``, ...)."""
    version: str
    """The bundle version (``configs/metadata.json``)."""
    title: str
    """What a radiologist reads: the model family and paper."""


@dataclass(frozen=True)
class BLineFindings:
    """What the B-line model (paper 001) says about one cine. Frames are 1-based."""

    present: bool
    probability: float
    """Clip-level probability that B-lines are present."""
    frames: tuple[int, ...]
    """The frames the model attends to as B-line frames."""
    key_frame: int | None
    """The representative B-line frame (highest attention); None when absent."""
    frame_scores: tuple[float, ...]
    """Per-frame attention, normalised to a maximum of 1; one value per frame."""
    model: ModelInfo

    def __post_init__(self) -> None:
        if any(f < 1 for f in self.frames) or (self.key_frame is not None and self.key_frame < 1):
            raise ValueError("B-line frame numbers must be >= 1. Frame indexing is 1-based.")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1]; got {self.probability}")


@dataclass(frozen=True)
class SeverityFindings:
    """What the severity model (paper 003) says about one cine. Frames are 1-based.

    Scores are the ICLUS lung-ultrasound scores: 0 regular pleura with A-lines, 1 indented
    pleura with some vertical artefacts, 2 broken pleura with consolidation or white areas
    below it, 3 white lung over more than half of the pleura, with or without consolidation.
    """

    score: int
    """The clip score 0-3 from the aggregator."""
    probabilities: tuple[float, float, float, float]
    """The aggregator's probability of each clip score."""
    frame_scores: tuple[int, ...]
    """The frame scorer's score 0-3 of every frame."""
    top_frame: int
    """The frame with the highest score (most confident among equals)."""
    box: tuple[int, int, int, int] | None
    """Where the frame scorer looked in ``top_frame``: (x0, y0, x1, y1) source pixels, ends
    exclusive (the spatial transformer's crop); None for networks without one."""
    model: ModelInfo
    clip_from_measurements: bool = False
    """The clip score comes from the real-data recipe on the clip's measurements, not from
    ``frame_scores`` (which the frame scorer, trained on simulated cines, gives and the clip
    score does not follow: they disagreed on 75 of 130 real clips). The results then show the
    clip score alone: no frames of each score, no frame score on the key frame or region; the
    top frame is the one the frame scorer finds most like the clip score."""

    def __post_init__(self) -> None:
        if not 0 <= self.score <= 3 or any(not 0 <= s <= 3 for s in self.frame_scores):
            raise ValueError("Severity scores must be between 0 and 3.")
        if not 1 <= self.top_frame <= len(self.frame_scores):
            raise ValueError(f"top_frame {self.top_frame} is not a frame of this cine (1-based).")
        # A probability of 1.7 was written into the SR as it was; a NaN failed the whole SR.
        if not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in self.probabilities):
            raise ValueError(f"Score probabilities must be within [0, 1]: {self.probabilities}")
        if abs(sum(self.probabilities) - 1.0) > 1e-3:
            raise ValueError(f"Score probabilities must sum to 1: {self.probabilities}")


@dataclass(frozen=True)
class SegmentedClass:
    """One score's pixels in the segmented frames and how sure the ensemble was of them."""

    score: int
    """ICLUS score 0-3 the pixels indicate."""
    pixels: int
    """Pixels labelled with it, over all segmented frames (source geometry)."""
    frames: tuple[int, ...]
    """Indices into :attr:`SegmentationFindings.frames` of the frames where it appears."""
    uncertainty_mean: float | None
    """Mean Monte-Carlo dropout standard deviation over those pixels; None without sampling."""
    uncertainty_max: float | None

    def __post_init__(self) -> None:
        if not 0 <= self.score <= 3 or self.pixels < 0:
            raise ValueError(f"A segmented class is a score 0-3 of pixels >= 0: {self}")
        for value in (self.uncertainty_mean, self.uncertainty_max):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Uncertainties must be finite and >= 0: {self}")


@dataclass(frozen=True, eq=False)
class SegmentationFindings:
    """What the segmentation ensemble (paper 003) says about chosen frames of one cine."""

    frames: tuple[int, ...]
    """1-based source frames that were segmented, in the order of :attr:`masks`."""
    masks: npt.NDArray[np.uint8]
    """(len(frames), rows, columns) labels: scores 0-3, 4 background; source geometry."""
    uncertainty: npt.NDArray[np.float32] | None
    """Same shape: Monte-Carlo dropout standard deviation of each pixel's class probability;
    None when the ensemble ran without sampling."""
    classes: tuple[SegmentedClass, ...]
    """The scores present, lowest first."""
    samples: int
    """Monte-Carlo dropout passes per frame (0: dropout off)."""
    model: ModelInfo

    def __post_init__(self) -> None:
        if self.masks.ndim != 3 or len(self.frames) != self.masks.shape[0]:
            raise ValueError(
                f"{len(self.frames)} segmented frames but masks of shape {self.masks.shape}."
            )
        if self.uncertainty is not None and self.uncertainty.shape != self.masks.shape:
            raise ValueError("Uncertainty and masks must have the same shape.")


@dataclass(frozen=True)
class ConsolidationBox:
    """Where the consolidation model's saliency points in one frame."""

    frame: int
    """1-based source frame."""
    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1) source pixels, ends exclusive."""

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if self.frame < 1 or not (x0 < x1 and y0 < y1):
            raise ValueError(
                f"Consolidation box {self.box} on frame {self.frame}: frames are 1-based and "
                "boxes need x0 < x1, y0 < y1."
            )


@dataclass(frozen=True)
class ConsolidationFindings:
    """What the consolidation model (paper 002) says about one cine."""

    present: bool
    probability: float
    boxes: tuple[ConsolidationBox, ...]
    """Saliency boxes on the most salient frames; empty when absent."""
    model: ModelInfo

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1]; got {self.probability}")


class KeyFrameReason(StrEnum):
    """Why a frame is a key frame, in the order the node lists a cine's key frames."""

    BEST = "best"
    """The frame with the highest keep probability (key-frame model): the one a clinician would
    keep, or in a poor cine the best of a poor lot."""
    B_LINES = "b_lines"
    """The representative B-line frame."""
    ATTENTION = "attention"
    """No B-lines found: the frame the B-line model attended to most, for review."""
    SEVERITY = "severity"
    """The highest-severity frame."""


@dataclass(frozen=True)
class KeyFrame:
    frame: int
    """1-based."""
    reason: KeyFrameReason


class Quality(StrEnum):
    """Whether a cine holds a frame a clinician would keep (key-frame model, paper 004)."""

    USABLE = "usable"
    POOR = "poor"


class PoorReason(StrEnum):
    """Why the frames of a poor cine are not worth keeping."""

    NO_CONTACT = "no_contact"
    """The probe is (partly) off the skin."""
    RIB_SHADOW = "rib_shadow"
    """A rib shadow lies over the pleura."""
    NO_PLEURA = "no_pleura"
    """Too little pleura in view."""


@dataclass(frozen=True)
class KeyFrameFindings:
    """What the key-frame model (paper 004) says about one cine. Frames are 1-based."""

    best_frame: int
    """The frame with the highest keep probability: the one a clinician would keep (in a poor
    cine, the best of a poor lot)."""
    frame_scores: tuple[float, ...]
    """Per frame, the probability that a clinician would keep it; one value per frame."""
    quality: Quality
    """USABLE when some frame's keep probability reaches the model's threshold."""
    reasons: tuple[PoorReason, ...]
    """For a POOR cine, the reasons whose probability, averaged over its frames, reaches the
    model's threshold, strongest first; empty for a usable cine (and for a poor one whose frames
    show none of the reasons)."""
    model: ModelInfo

    def __post_init__(self) -> None:
        if not 1 <= self.best_frame <= len(self.frame_scores):
            raise ValueError(
                f"best_frame {self.best_frame} is not a frame of a {len(self.frame_scores)}-frame "
                "cine. Frame indexing is 1-based."
            )
        if any(not 0.0 <= p <= 1.0 for p in self.frame_scores):
            raise ValueError("key-frame scores must be probabilities within [0, 1]")
        if self.quality is Quality.USABLE and self.reasons:
            raise ValueError("a usable cine has no poor-quality reasons")


class NotAssessableReason(StrEnum):
    """Why a cine gets no lung finding at all (assessment, before the lung models run)."""

    STILL_IMAGE = "still_image"
    """One frame, or too short a loop: B-lines, sliding and the clip scores need a cine; the
    models that read single frames (segmentation) still run when it is the only reason."""
    NOT_LUNG = "not_lung"
    """The image does not look like lung ultrasound (an echocardiogram, an abdominal view)."""
    POOR_QUALITY = "poor_quality"
    """Lung, but no frame a clinician would read (key-frame model)."""
    DAMAGED_FRAMES = "damaged_frames"
    """Too many frames the decoder could read only in part (corrupt or cut-short data)."""
    BLANK = "blank"
    """The scan area shows no echo texture: black, blank or uniform frames (a probe in the
    air, a frozen or switched-off image, a screen captured without its picture)."""
    TOO_SMALL = "too_small"
    """The scan area is too small to read (a thumbnail, an icon, a strip of a few pixels)."""
    COLOUR_FLOW = "colour_flow"
    """Colour (colour flow or power Doppler) drawn over the scan area: read as grey, its
    colours would be read as echoes (a colour box over the lung turned "no B-lines" into
    "B-lines present" and raised the severity score)."""
    OUT_OF_RANGE = "out_of_range"
    """Its lung measurements lie far outside those of every clip the models learned from: a
    view the heads never saw, whose findings would be extrapolation."""


@dataclass(frozen=True)
class AssessmentFindings:
    """Whether the lung models may read a cine; when not, why. A cine that is not assessable
    gets no B-line, consolidation, severity or segmentation finding."""

    reasons: tuple[NotAssessableReason, ...]
    """Empty when the cine is assessable."""
    apex_ratio: float | None
    """The measurement behind ``not_lung``: width of the scan area at the skin over its widest
    row (a point-like apex, near 0, is a cardiac sector); None for a still image."""
    model: ModelInfo

    @property
    def assessable(self) -> bool:
        """Every lung model may read the cine."""
        return not self.reasons

    @property
    def frames_assessable(self) -> bool:
        """The lung models that read single frames may read it: the only reason against it,
        if any, is that it is a still image."""
        return set(self.reasons) <= {NotAssessableReason.STILL_IMAGE}


@dataclass(frozen=True)
class Findings:
    """Everything the models found in one cine: the content of its result objects.

    ``by_family`` holds each family's findings under its name, in the order the families ran;
    a family that did not run has none, and nothing is ever filled in for it.
    """

    source: SourceRef
    n_frames: int
    fps: float | None
    key_frames: tuple[KeyFrame, ...] = ()
    """Every family's proposed key frames, in :class:`KeyFrameReason` order."""
    by_family: Mapping[str, object] = field(default_factory=dict)
    damaged: Mapping[int, str] = field(default_factory=dict)
    """The cine's frames read only in part (:attr:`Cine.damaged`)."""
    blank: frozenset[int] = frozenset()
    """The cine's frames with no echo (:attr:`Cine.blank`)."""

    def of_family(self, name: str, kind: type[_T]) -> _T | None:
        """The findings of family ``name`` if it ran, checked to be a ``kind``."""
        found = self.by_family.get(name)
        if found is not None and not isinstance(found, kind):
            raise TypeError(f"findings of {name} are {type(found).__name__}, not {kind.__name__}")
        return found

    def with_family(self, name: str, found: object) -> Findings:
        """The same findings with family ``name``'s replaced by ``found``."""
        return replace(self, by_family={**self.by_family, name: found})

    @property
    def b_lines(self) -> BLineFindings | None:
        return self.of_family("b_lines", BLineFindings)

    @property
    def severity(self) -> SeverityFindings | None:
        return self.of_family("severity", SeverityFindings)

    @property
    def segmentation(self) -> SegmentationFindings | None:
        return self.of_family("segmentation", SegmentationFindings)

    @property
    def consolidation(self) -> ConsolidationFindings | None:
        return self.of_family("consolidation", ConsolidationFindings)

    @property
    def assessment(self) -> AssessmentFindings | None:
        """Whether the lung models read the cine; None when no assessment ran."""
        return self.of_family("assessment", AssessmentFindings)

    @property
    def key_frame_model(self) -> KeyFrameFindings | None:
        """The key-frame model's per-frame scores and the cine's quality flag."""
        return self.of_family("key_frames", KeyFrameFindings)

    @property
    def models(self) -> tuple[ModelInfo, ...]:
        """The algorithm of every family that ran."""
        infos = (getattr(found, "model", None) for found in self.by_family.values())
        return tuple(info for info in infos if isinstance(info, ModelInfo))


@dataclass(frozen=True)
class ResultIdentity:
    """Who a result object is: its UIDs and the series number of its kind."""

    instance_uid: str
    series_uid: str
    series_number: int


@dataclass(frozen=True)
class Instance:
    """One received instance, on disk, as the listener recorded it."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    calling_ae: str
    path: Path
    content: str = ""
    """SHA-256 of the data set as received (hex): the same SOP Instance UID sent again with
    other pixels or attributes has another."""


class Received(StrEnum):
    """What the job store made of an instance the listener stored."""

    NEW = "new"
    """A job is queued for it."""
    KNOWN = "known"
    """The same content was received before: its job is done or queued."""
    REPLACED = "replaced"
    """Other content under a known SOP Instance UID: its earlier jobs are marked replaced and
    a job is queued for the new content, whose results get their own UIDs."""
    REFUSED = "refused"
    """Other content under a known SOP Instance UID, refused (``changed_instance = "refuse"``):
    nothing was changed."""


class JobState(StrEnum):
    """Where a job is: ``queued`` on disk, ``processing`` while a worker holds it, ``encoded``
    once its result files are on disk, ``sent`` when every destination has them, ``failed``
    when processing failed or a delivery ran out of retries, ``replaced`` when its instance was
    received again with other content (its results are no longer the instance's)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    ENCODED = "encoded"
    SENT = "sent"
    FAILED = "failed"
    REPLACED = "replaced"


@dataclass(frozen=True)
class Job:
    """The processing of one instance by one set of model versions (``models``)."""

    id: int
    instance: Instance
    models: str
    state: JobState
    error: str | None
    revision: str = ""
    """Empty for the first content its instance was received with; the content's digest for
    a later one, so that its results get UIDs of their own."""
    claim: int = 0
    """Which taking of the job by a worker this is: the job store records the outcome of the
    latest only (one given up, or received again, may be taken by another worker meanwhile)."""


@dataclass(frozen=True)
class Output:
    """One result file: its kind (``sr``, ``kos``, ``study-sr`` ...), SOP Instance UID and path."""

    kind: str
    sop_instance_uid: str
    path: Path
