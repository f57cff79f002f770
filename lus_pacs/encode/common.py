"""What every result object shares: the source header it inherits from, the notice that it is
research output, the device and algorithm it names, and checks on the frames it references."""

from __future__ import annotations

from collections.abc import Iterable

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lus_pacs import __version__
from lus_pacs.domain import Findings, ModelInfo, PoorReason
from lus_pacs.errors import UnreadableImageError

MANUFACTURER = "lus-pacs"
RESEARCH_NOTICE = (
    "Produced by lus-pacs, research software whose models were trained largely on simulated "
    "data. Not a medical device; not for diagnostic use."
)
ALGORITHM_MANUFACTURER = "lus-pacs (research software, not a medical device)"
POOR_REASON_TEXT = {
    PoorReason.NO_CONTACT: "probe not in contact",
    PoorReason.RIB_SHADOW: "rib shadow over the pleura",
    PoorReason.NO_PLEURA: "pleura not in view",
}
"""Why a cine is of poor quality, in the words of the KOS description and the annotations."""

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# Type 2 in the source's Patient and General Study modules: present but possibly empty, and
# highdicom reads every one of them from its evidence without a default.
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)


def source_header(source: Dataset, findings: Findings) -> Dataset:
    """The source's public header without pixel data, ready to serve as highdicom evidence.

    Type 2 patient and study attributes the source lacks are added empty, so that the result
    carries them as the source does (empty) instead of highdicom failing on a missing attribute.

    Raises
    ------
    UnreadableImageError
        When the source lacks an attribute needed to reference it.
    ValueError
        When ``findings`` were made from another instance.
    """
    header = public_header(source)
    if str(source.SOPInstanceUID) != findings.source.sop_instance_uid:
        raise ValueError(
            f"The findings are for SOP Instance {findings.source.sop_instance_uid} but the "
            f"source header given is {source.SOPInstanceUID}; pass the header of the cine "
            "the findings were made from."
        )
    return header


def public_header(source: Dataset) -> Dataset:
    """The source's public header without pixel data, Type 2 patient and study attributes
    it lacks added empty (highdicom reads them from its evidence without a default).

    Raises
    ------
    UnreadableImageError
        When the source lacks an attribute needed to reference it.
    """
    uid = str(source.get("SOPInstanceUID", "<no SOPInstanceUID>"))
    missing = [k for k in _REQUIRED if not source.get(k)]
    if missing:
        raise UnreadableImageError(
            uid,
            f"cannot reference the source: it lacks {', '.join(missing)}; "
            "a result object can only reference a stored DICOM instance.",
        )
    header = Dataset()
    for elem in source:
        if elem.tag.is_private or elem.keyword in ("PixelData", "FloatPixelData"):
            continue
        header.add(elem)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def copy_retired_patient_attributes(header: Dataset, result: Dataset) -> None:
    """Copy patient attributes highdicom's (2025) module tables no longer list.

    Scanners still send ``EthnicGroup`` (retired in favour of ``EthnicGroupCodeSequence``);
    a result without it reads, to dcentvfy, as another patient's data.
    """
    if header.get("EthnicGroup"):
        result.EthnicGroup = header.EthnicGroup


def check_frames(frames: Iterable[int], header: Dataset, what: str) -> list[int]:
    """``frames`` as a list, after checking each is a frame of the source (1-based)."""
    numbers = [int(f) for f in frames]
    n_frames = int(header.get("NumberOfFrames") or 1)
    bad = [f for f in numbers if not 1 <= f <= n_frames]
    if bad:
        raise ValueError(
            f"{what}: frame numbers {bad} are not frames of SOP Instance "
            f"{header.SOPInstanceUID}, which has {n_frames} frame(s). Frame numbers are "
            "1-based and at most NumberOfFrames."
        )
    return numbers


def frame_references(header: Dataset, frames: Iterable[int]) -> list[int] | None:
    """The frame numbers an image reference to ``header`` carries: ``frames`` for a multi-frame
    image, None for a single-frame one (Referenced Frame Number is only for multi-frame
    images; the whole image is its one frame)."""
    numbers = list(frames)
    return numbers if hd.utils.is_multiframe_image(header) else None


def device_observer() -> hd.sr.ObserverContext:
    """TID 1004: lus-pacs as the device that made the observations."""
    return hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            # One UID per software version: the same node version is the same observer.
            uid=generate_uid(entropy_srcs=["lus-pacs device observer", __version__]),
            name=MANUFACTURER,
            manufacturer_name=ALGORITHM_MANUFACTURER,
            model_name=f"{MANUFACTURER} {__version__}",
        ),
    )


def algorithm_identification(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for one model: its bundle name and version, and who made it."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        manufacturer=ALGORITHM_MANUFACTURER,
    )
