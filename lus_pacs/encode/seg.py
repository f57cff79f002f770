"""The LABELMAP Segmentation of a cine's score-class masks, one SEG frame per source frame.

highdicom refuses a multi-frame source without a Frame of Reference, which is what an
ultrasound cine is (highdicom issue 284). The SEG is therefore built by highdicom from a
one-frame view of the source and then given its real frames: each frame's functional groups
reference its source frame by ``ReferencedFrameNumber`` and carry that number as its
``TemporalPositionIndex``, the one dimension of the SEG.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import highdicom as hd
import numpy as np
from pydicom import Dataset, Sequence
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

from lus_pacs import __version__
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
from lus_pacs.nets.segmentation import BACKGROUND, CLASSES

SERIES_DESCRIPTION = "lus-pacs AI score masks (research only, not a medical device)"
CONTENT_DESCRIPTION = "LUS score masks; research only, not a medical device"
"""Content Description is LO (64 characters); the full notice goes in Image Comments."""
SCORES = tuple(range(CLASSES - 1))
"""The ICLUS scores 0 to 3 the masks label; segment ``k + 1`` is score ``k``."""
SEGMENT_LABELS = (
    "LUS score 0 (pleura, A-lines)",
    "LUS score 1",
    "LUS score 2",
    "LUS score 3",
)

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
) -> Dataset:
    """Encode score-class masks of a cine as a LABELMAP SEG (RLE lossless) in a new series.

    Segment ``k + 1`` is ICLUS score ``k`` (0: healthy pleura with A-lines; 1, 2, 3) and
    pixel value 0 is background. SEG frames follow the source frames in ascending order, each
    referencing its source frame and carrying its number as ``TemporalPositionIndex``.

    Parameters
    ----------
    masks:
        Source frame number (1-based) to its label map, ``(Rows, Columns)`` of the source,
        values ``0..3`` for the scores and :data:`~lus_pacs.nets.segmentation.BACKGROUND`
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

    template = hd.seg.Segmentation(
        source_images=[_single_frame_view(header)],
        pixel_array=labels[:1],
        segmentation_type=hd.seg.SegmentationTypeValues.LABELMAP,
        segment_descriptions=_segment_descriptions(model),
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER,
        software_versions=__version__,
        # Type 1 here; software has no serial number, its version identifies the build.
        device_serial_number=__version__,
        content_description=CONTENT_DESCRIPTION,
        content_label="LUS_SCORES",
        series_description=SERIES_DESCRIPTION,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
    )
    seg = Dataset()
    seg.update(template)
    seg.file_meta = template.file_meta
    seg.preamble = template.preamble
    copy_retired_patient_attributes(header, seg)
    # Type 2C in General Image when there is no plane orientation, as for a cine.
    seg.PatientOrientation = header.get("PatientOrientation")
    seg.ImageComments = RESEARCH_NOTICE
    _set_frames(seg, header, frames)
    seg.compress(RLELossless, labels, generate_instance_uid=False)
    return seg


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
    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=dicom_codes.DCM.ArtificialIntelligence,
        version=model.version,
        source=ALGORITHM_MANUFACTURER,
    )
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
            )
        )
    return descriptions


def _set_frames(seg: Dataset, header: Dataset, frames: list[int]) -> None:
    """Give the one-frame template the functional groups of ``frames`` of the source."""
    (template,) = seg.PerFrameFunctionalGroupsSequence
    groups = []
    for frame in frames:
        item = copy.deepcopy(template)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        ref.ReferencedSOPClassUID = header.SOPClassUID
        ref.ReferencedSOPInstanceUID = header.SOPInstanceUID
        ref.ReferencedFrameNumber = frame
        content = Dataset()
        content.DimensionIndexValues = [frame]
        content.TemporalPositionIndex = frame
        item.FrameContentSequence = Sequence([content])
        groups.append(item)
    seg.PerFrameFunctionalGroupsSequence = Sequence(groups)
    seg.NumberOfFrames = len(frames)

    index = Dataset()
    index.DimensionOrganizationUID = seg.DimensionOrganizationSequence[0].DimensionOrganizationUID
    index.DimensionIndexPointer = _TEMPORAL_POSITION_INDEX
    index.FunctionalGroupPointer = _FRAME_CONTENT_SEQUENCE
    index.DimensionDescriptionLabel = "Temporal Position Index"
    seg.DimensionIndexSequence = Sequence([index])

    for series in seg.ReferencedSeriesSequence:
        for instance in series.ReferencedInstanceSequence:
            instance.ReferencedSOPClassUID = header.SOPClassUID
