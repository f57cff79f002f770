"""The Segmentation of a cine's score-class masks: LABELMAP (RLE), one SEG frame per source
frame, or BINARY, one SEG frame per source frame and score, for viewers without LABELMAP.

highdicom refuses a multi-frame source without a Frame of Reference, which is what an
ultrasound cine is (highdicom issue 284). The SEG is therefore built by highdicom from a
one-frame view of the source and then given its real frames: each frame's functional groups
reference its source frame by ``ReferencedFrameNumber`` and carry that number as its
``TemporalPositionIndex``, the one dimension of a LABELMAP SEG (a BINARY SEG has the segment
number as its first dimension and the temporal position as its second).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import highdicom as hd
import numpy as np
from pydicom import Dataset, Sequence
from pydicom.pixels import pack_bits
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

from lus_pacs import __version__
from lus_pacs.domain import MASK_BACKGROUND as BACKGROUND
from lus_pacs.domain import MASK_LABELS as CLASSES
from lus_pacs.domain import ModelInfo
from lus_pacs.encode import codes
from lus_pacs.encode.common import (
    ALGORITHM_MANUFACTURER,
    MANUFACTURER,
    RESEARCH_NOTICE,
    check_frames,
    copy_retired_patient_attributes,
    public_header,
)

SERIES_DESCRIPTION = "lus-pacs AI score masks (research use, not a medical device)"
CONTENT_DESCRIPTION = "LUS score masks; research only, not a medical device"
"""Content Description is LO (64 characters); the full notice goes in Image Comments."""
UNCERTAINTY_SERIES_DESCRIPTION = "lus-pacs AI uncertainty (research use, not a medical device)"
UNCERTAINTY_CONTENT_DESCRIPTION = "LUS mask uncertainty; research only, not a medical device"
SCORES = tuple(range(CLASSES - 1))
"""The ICLUS scores 0 to 3 the masks label; segment ``k + 1`` is score ``k``."""
SEGMENT_LABELS = (
    "LUS score 0 (pleura, A-lines)",
    "LUS score 1",
    "LUS score 2",
    "LUS score 3",
)

SEGMENT_COLOURS = (
    hd.color.CIELabColor(70.5, -71.0, 68.0),  # score 0: green
    hd.color.CIELabColor(97.1, -21.6, 94.5),  # score 1: yellow
    hd.color.CIELabColor(74.9, 23.9, 78.9),  # score 2: orange
    hd.color.CIELabColor(53.2, 80.1, 67.2),  # score 3: red
)
"""Recommended display colours (CIE L*a*b*) from healthy to worst, the order a reader expects."""

_TEMPORAL_POSITION_INDEX = 0x00209128
_FRAME_CONTENT_SEQUENCE = 0x00209111


def encode_seg(
    masks: Mapping[int, np.ndarray],
    source: Dataset,
    *,
    model: ModelInfo,
    series_number: int = 902,
    instance_uid: str | None = None,
    series_uid: str | None = None,
    binary: bool = False,
) -> Dataset:
    """Encode score-class masks of a cine as a LABELMAP SEG (RLE lossless) in a new series.

    Segment ``k + 1`` is ICLUS score ``k`` (0: healthy pleura with A-lines; 1, 2, 3) and
    pixel value 0 is background. SEG frames follow the source frames in ascending order, each
    referencing its source frame and carrying its number as ``TemporalPositionIndex``.
    With ``binary``, a BINARY SEG (uncompressed, one bit per pixel) instead: for each source
    frame one SEG frame per segment, empty ones included, so every viewer finds every score.

    Parameters
    ----------
    masks:
        Source frame number (1-based) to its label map, ``(Rows, Columns)`` of the source,
        values ``0..3`` for the scores and :data:`~lus_pacs.domain.MASK_BACKGROUND`
        (4) for background.
    source:
        The cine's header (pixel data is neither needed nor copied). Patient and study
        attributes are copied from it.
    model:
        The segmentation model, named as the segments' algorithm (name and version).
    series_number:
        Series Number of the new SEG series.
    instance_uid, series_uid:
        SOP Instance UID and Series Instance UID of the SEG; new UIDs when None.
    binary:
        Write a BINARY SEG rather than a LABELMAP one.

    Returns
    -------
    pydicom.Dataset
        The Segmentation, ready for ``save_as``.

    Raises
    ------
    lus_pacs.errors.UnreadableImageError
        When the source lacks the UIDs needed to reference it.
    ValueError
        When there are no masks, a frame number is not a frame of the source, or a mask has
        the wrong shape or a value outside ``0..4``.
    """
    header = public_header(source)
    frames = sorted(check_frames(masks, header, "Segmentation masks"))
    if not frames:
        raise ValueError("No masks given: a Segmentation needs at least one frame.")
    labels = np.stack([_segment_numbers(masks[f], f, header) for f in frames])

    kind = (
        hd.seg.SegmentationTypeValues.BINARY if binary else hd.seg.SegmentationTypeValues.LABELMAP
    )
    seg = _from_template(
        header,
        labels[:1],
        kind,
        _segment_descriptions(model),
        series_number=series_number,
        instance_uid=instance_uid,
        series_uid=series_uid,
        content=(CONTENT_DESCRIPTION, "LUS_SCORES", SERIES_DESCRIPTION),
    )
    _set_frames(seg, header, frames, by_segment=binary)
    if binary:
        # Frames in the order of the functional groups: source frame, then segment.
        segments = range(1, len(SCORES) + 1)
        bits = np.stack([frame_labels == k for frame_labels in labels for k in segments])
        seg.PixelData = pack_bits(bits.astype(np.uint8))
    else:
        seg.compress(RLELossless, _frames_array(labels), generate_instance_uid=False)
        _drop_background_segment(seg)
    _add_plane_geometry(seg, header)
    return seg


def encode_uncertainty_seg(
    uncertainty: Mapping[int, np.ndarray],
    source: Dataset,
    *,
    model: ModelInfo,
    series_number: int = 904,
    instance_uid: str | None = None,
    series_uid: str | None = None,
) -> Dataset:
    """Encode Monte-Carlo dropout uncertainty maps as a FRACTIONAL SEG (RLE lossless).

    One segment of Segmentation Fractional Type PROBABILITY (DICOM offers only that and
    OCCUPANCY), whose label says what it holds: each pixel's value is the standard deviation of
    its class probability over the dropout passes, divided by 0.5 (the largest standard deviation
    a probability can have), in 255 steps; not a probability.
    Frames are laid out as :func:`encode_seg` lays out BINARY frames (one segment here).

    Parameters
    ----------
    uncertainty:
        Source frame number (1-based) to a float map ``(Rows, Columns)`` of the source, values
        in [0, 0.5].
    source, model, series_number, instance_uid, series_uid:
        As for :func:`encode_seg`.

    Raises
    ------
    ValueError
        When there are no maps, a frame is not a frame of the source, or a map has the wrong
        shape or a value outside [0, 0.5].
    """
    header = public_header(source)
    frames = sorted(check_frames(uncertainty, header, "Uncertainty maps"))
    if not frames:
        raise ValueError("No uncertainty maps given: a Segmentation needs at least one frame.")
    shape = (int(header.Rows), int(header.Columns))
    for frame in frames:
        values = np.asarray(uncertainty[frame], np.float64)
        if values.shape != shape:
            raise ValueError(
                f"The uncertainty map of frame {frame} has shape {values.shape}, not {shape}."
            )
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 0.5:
            raise ValueError(
                f"The uncertainty map of frame {frame} has values outside [0, 0.5]; pass the "
                "standard deviation of a probability."
            )
    scaled = np.stack(
        [np.round(np.asarray(uncertainty[f], np.float64) / 0.5 * 255) for f in frames]
    ).astype(np.uint8)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Uncertainty: MC-dropout std / 0.5, not a probability",
        segmented_property_category=dicom_codes.SCT.SpatialAndRelationalConcept,
        segmented_property_type=codes.MASK_UNCERTAINTY_MAP,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=_algorithm(model),
        anatomic_regions=[codes.LUNG],
    )
    seg = _from_template(
        header,
        scaled[:1].astype(np.float32) / 255,
        hd.seg.SegmentationTypeValues.FRACTIONAL,
        [description],
        series_number=series_number,
        instance_uid=instance_uid,
        series_uid=series_uid,
        content=(
            UNCERTAINTY_CONTENT_DESCRIPTION,
            "LUS_UNCERTAINTY",
            UNCERTAINTY_SERIES_DESCRIPTION,
        ),
    )
    _set_frames(seg, header, frames, by_segment=True)
    seg.compress(RLELossless, _frames_array(scaled), generate_instance_uid=False)
    _add_plane_geometry(seg, header)  # as the label SEGs: OHIF opens none without it
    return seg


def _frames_array(frames: np.ndarray) -> np.ndarray:
    """``(frames, rows, columns)`` as pydicom's encoder wants it: 2D for a single frame."""
    return frames[0] if len(frames) == 1 else frames


def _from_template(
    header: Dataset,
    first: np.ndarray,
    kind: hd.seg.SegmentationTypeValues,
    descriptions: list[hd.seg.SegmentDescription],
    *,
    series_number: int,
    instance_uid: str | None,
    series_uid: str | None,
    content: tuple[str, str, str],
) -> Dataset:
    """highdicom's Segmentation of the one-frame view of the source, as a plain dataset with
    the patient attributes and notices every SEG carries; its frames are set afterwards."""
    description, label, series_description = content
    template = hd.seg.Segmentation(
        source_images=[_single_frame_view(header)],
        pixel_array=first,
        segmentation_type=kind,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=__version__,
        # Type 1 here; software has no serial number, its version identifies the build.
        device_serial_number=__version__,
        content_description=description,
        content_label=label,
        series_description=series_description,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
        # highdicom's default fractional type, PROBABILITY, is the one meant; other
        # types ignore it.
    )
    seg = Dataset()
    seg.update(template)
    seg.file_meta = template.file_meta
    seg.preamble = template.preamble
    copy_retired_patient_attributes(header, seg)
    # Type 2C in General Image when there is no plane orientation, as for a cine.
    seg.PatientOrientation = header.get("PatientOrientation")
    seg.ImageComments = RESEARCH_NOTICE
    # The uncertainty segment's property type is a private concept: declare its scheme.
    seg.CodingSchemeIdentificationSequence = Sequence([codes.coding_scheme_identification()])
    return seg


def _algorithm(model: ModelInfo) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=dicom_codes.DCM.ArtificialIntelligence,
        version=model.version,
        source=ALGORITHM_MANUFACTURER,
    )


def _single_frame_view(header: Dataset) -> Dataset:
    """The source as highdicom accepts it: a single-frame image (it never reads the pixels).

    highdicom takes any instance of a multi-frame class for an enhanced image with functional
    groups, so the view claims the single-frame Ultrasound Image class; the references are
    set back to the source's class afterwards.
    """
    view = copy.deepcopy(header)
    for keyword in ("NumberOfFrames", "FrameIncrementPointer"):
        if keyword in view:
            delattr(view, keyword)
    view.SOPClassUID = UltrasoundImageStorage
    return view


def _segment_numbers(mask: np.ndarray, frame: int, header: Dataset) -> np.ndarray:
    """A score mask (scores 0..3, background 4) as LABELMAP segment numbers (0 background)."""
    shape = (int(header.Rows), int(header.Columns))
    array = np.asarray(mask)
    if array.shape != shape:
        raise ValueError(
            f"The mask of frame {frame} has shape {array.shape} but the source "
            f"{header.SOPInstanceUID} has {shape[0]} rows and {shape[1]} columns; pass one "
            "label map of the source image size per frame."
        )
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, array.round()):
        raise ValueError(f"The mask of frame {frame} is not integral; pass labels 0..4.")
    bad = np.setdiff1d(np.unique(array), np.arange(CLASSES))
    if bad.size:
        raise ValueError(
            f"The mask of frame {frame} holds values {bad.tolist()}; labels are the scores "
            f"0..{CLASSES - 2} and {BACKGROUND} for background."
        )
    return np.where(array == BACKGROUND, 0, array + 1).astype(np.uint8)


def _segment_descriptions(model: ModelInfo) -> list[hd.seg.SegmentDescription]:
    algorithm = _algorithm(model)
    descriptions = []
    for score, label in zip(SCORES, SEGMENT_LABELS, strict=True):
        if score == 0:
            category, kind = dicom_codes.SCT.AnatomicalStructure, codes.PLEURA
        else:
            category, kind = (
                dicom_codes.SCT.MorphologicallyAbnormalStructure,
                dicom_codes.SCT.Abnormal,
            )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=score + 1,
                segment_label=label,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                anatomic_regions=[codes.LUNG],
                primary_anatomic_structures=[codes.PLEURA],
                display_color=SEGMENT_COLOURS[score],
            )
        )
    return descriptions


def _drop_background_segment(seg: Dataset) -> None:
    """Leave out the description of segment 0 (background) that highdicom adds to a LABELMAP.

    The standard allows a LABELMAP SEG to describe pixel value 0 as a segment but does not
    require it. OHIF 3.13 takes the segments' colours by their place in the Segment Sequence as
    if the first were segment 1: with the background first, every score is drawn in the colour
    of the segment before it (score 0 in the background's black). Pixel value 0 stays
    background either way.
    """
    seg.SegmentSequence = Sequence([s for s in seg.SegmentSequence if int(s.SegmentNumber) != 0])


def _add_plane_geometry(seg: Dataset, header: Dataset) -> None:
    """Pixel Measures and Plane Orientation in the shared functional groups, for viewers.

    OHIF (3.13) and cornerstone's SEG loader read both unconditionally and fail on a SEG
    without them ("Something went wrong"); the standard lists them for SEGs with a patient
    Frame of Reference, which an ultrasound cine has not, but does not forbid them otherwise
    (dciodvfy reports nothing). Both SEG kinds carry them, so that every default object opens
    in OHIF: the pixel spacing of the source's first 2D tissue region (cm in DICOM, mm here),
    else a nominal 1 mm, and the identity orientation of the image plane.
    """
    spacing = _region_spacing_mm(header) or (1.0, 1.0)
    measures = Dataset()
    measures.PixelSpacing = [round(v, 6) for v in spacing]
    measures.SliceThickness = 1.0
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])


def _region_spacing_mm(header: Dataset) -> tuple[float, float] | None:
    """(row, column) spacing in mm of the first 2D (B-mode) region with spatial units of cm:
    not an M-mode or Doppler strip's, whose X may be in cm too (a strip listed first gave the
    mask a spacing of 5 mm across for 0.37)."""
    for region in header.get("SequenceOfUltrasoundRegions", []):
        units_cm = 3
        if region.get("RegionSpatialFormat", 1) == 1 and (
            region.get("PhysicalUnitsXDirection")
            == units_cm
            == region.get("PhysicalUnitsYDirection")
        ):
            dx, dy = region.get("PhysicalDeltaX"), region.get("PhysicalDeltaY")
            if dx and dy and float(dx) > 0 and float(dy) > 0:
                return float(dy) * 10.0, float(dx) * 10.0
    return None


def _set_frames(seg: Dataset, header: Dataset, frames: list[int], by_segment: bool) -> None:
    """Give the one-source-frame template the functional groups of ``frames`` of the source:
    one group per frame (LABELMAP) or per frame and segment (BINARY and FRACTIONAL, whose first
    dimension is the segment number, as the template's groups)."""
    templates = list(seg.PerFrameFunctionalGroupsSequence)
    shared = seg.SharedFunctionalGroupsSequence[0]
    multiframe = hd.utils.is_multiframe_image(header)
    groups = []
    for frame in frames:
        for template in templates:
            item = copy.deepcopy(template)
            ref = item.DerivationImageSequence[0].SourceImageSequence[0]
            ref.ReferencedSOPClassUID = header.SOPClassUID
            ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
            if multiframe:
                ref.ReferencedFrameNumber = frame
            content = Dataset()
            if by_segment:
                # A single segment is identified in the shared functional groups.
                identified = item if "SegmentIdentificationSequence" in item else shared
                segment = int(identified.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
                content.DimensionIndexValues = [segment, frame]
            else:
                content.DimensionIndexValues = [frame]
            content.TemporalPositionIndex = frame
            item.FrameContentSequence = Sequence([content])
            groups.append(item)
    seg.PerFrameFunctionalGroupsSequence = Sequence(groups)
    seg.NumberOfFrames = len(groups)

    index = Dataset()
    index.DimensionOrganizationUID = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    index.DimensionIndexPointer = _TEMPORAL_POSITION_INDEX
    index.FunctionalGroupPointer = _FRAME_CONTENT_SEQUENCE
    index.DimensionDescriptionLabel = "Temporal Position Index"
    kept = list(seg.DimensionIndexSequence)[:1] if by_segment else []  # the segment number
    seg.DimensionIndexSequence = Sequence([*kept, index])

    for series in seg.ReferencedSeriesSequence:
        for instance in series.ReferencedInstanceSequence:
            instance.ReferencedSOPClassUID = header.SOPClassUID
