"""What every result object shares: the source header it inherits from, the notice that it is
research output, the device and algorithm it names, and checks on the frames it references."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable

import highdicom as hd
from pydicom import Dataset, valuerep
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VM
from pydicom.dataelem import DataElement
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from lus_pacs import __version__
from lus_pacs.domain import Findings, ModelInfo, PoorReason
from lus_pacs.encode import codes as lus_codes
from lus_pacs.errors import UnreadableImageError

log = logging.getLogger(__name__)

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


def not_assessable_text(findings: Findings) -> str | None:
    """ "not assessable for lung findings: <reasons>" for a cine the lung models did not read
    (a still image, whose frames they read, aside); None otherwise. The KOS and the overlay
    say it beside their key frame, which a reader may see without the SR."""
    assessment = findings.assessment
    if assessment is None or assessment.frames_assessable:
        return None
    why = ", ".join(lus_codes.NOT_ASSESSABLE_REASONS[r].meaning.lower() for r in assessment.reasons)
    return f"not assessable for lung findings: {why}"


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


_DATE_TIME_VRS = {"DA", "TM", "DT"}
_SOP_CLASS_UID = 0x00080016

RETIRED_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.6": "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3": "1.2.840.10008.5.1.4.1.1.3.1",
}
"""Retired ultrasound image classes (still sent by old scanners) -> their current class, whose
modules they share: the encoders know only the current ones."""


def repaired_header(header: Dataset) -> Dataset:
    """``header`` with its top-level dates and times in DICOM form, for the encoders (which
    copy them into the results and refuse what they cannot parse).

    Scanners write ``11:25:01``, ``2026-01-01`` or ACR-NEMA's ``2026.01.01``: the separators
    are removed when what remains is a valid value; a value that still does not parse is left
    out, with a log line. A retired ultrasound class is given as its current one
    (:data:`RETIRED_IMAGE_CLASSES`; :func:`restore_source_class` puts the source's own class
    back in the references). Two values that worklists and scanners write and the encoders
    refuse, failing every result object, are mended too: a Specific Character Set whose first
    value is empty (the standard form of ISO 2022 Japanese and Korean, ``\\ISO 2022 IR 87``)
    gets ``ISO 2022 IR 6`` there, the default repertoire it stands for; a Patient's Sex other
    than M, F or O (``U``, ``male``) becomes M or F where it spells one, else empty (the
    attribute is type 2). An attribute of one value given several (a PatientName of two
    names, two StudyDates) keeps its first, and a missing Modality is taken from the class
    (US, or OT for a secondary capture): both made every result object and the study
    summary fail. The encoders are given UTF-8 (``ISO_IR 192``) in place of any other Specific
    Character Set (the values are already decoded text, which UTF-8 holds whole): highdicom
    refuses terms that are valid DICOM (Korean ``ISO 2022 IR 149``, Chinese ``ISO 2022 IR
    58``), which failed every result object; :func:`restore_character_set` puts the source's
    own (mended) set back on the results before they are written. The original dataset is
    not changed.
    """
    # A new element dict holding the same elements: each repair replaces an element, never
    # changes one (the header's own elements stay as they are).
    repaired = Dataset()
    for element in header:
        repaired.add(element)
    for attribute in ("file_meta", "preamble", "filename"):
        if hasattr(header, attribute):
            setattr(repaired, attribute, getattr(header, attribute))
    current = RETIRED_IMAGE_CLASSES.get(str(header.get("SOPClassUID", "")))
    if current is not None:
        repaired[_SOP_CLASS_UID] = DataElement(_SOP_CLASS_UID, "UI", current)
    if _SPECIFIC_CHARACTER_SET in repaired:
        repaired[_SPECIFIC_CHARACTER_SET] = DataElement(_SPECIFIC_CHARACTER_SET, "CS", _UTF8)
    _repair_patient_sex(header, repaired)
    _repair_single_values(header, repaired)
    _repair_modality(header, repaired)
    for element in list(header):
        if element.VR not in _DATE_TIME_VRS or element.VM != 1 or not element.value:
            continue
        raw = str(element.value).strip()
        if _parses(element.VR, raw):
            continue
        # A DT's '-' may be its UTC offset: only ':', ' ' and 'T' go.
        gone = {"DA": ":-. ", "TM": ":- "}.get(element.VR, ": T")
        fixed = raw.translate({ord(c): None for c in gone})
        keyword = element.keyword or str(element.tag)
        if _parses(element.VR, fixed):
            log.warning("%s %r written as %r for the results", keyword, raw, fixed)
            repaired[element.tag] = DataElement(element.tag, element.VR, fixed)
        else:
            log.warning(
                "%s %r is not a valid %s: left out of the results", keyword, raw, element.VR
            )
            del repaired[element.tag]
    return repaired


def results_character_set(header: Dataset) -> str | list[str] | None:
    """The Specific Character Set the results of ``header``'s cine are written in: the
    source's, an empty first value (the standard form of ISO 2022 Japanese and Korean,
    ``\\ISO 2022 IR 87``, which the encoders refused) given as ``ISO 2022 IR 6``, the default
    repertoire it stands for; None when the source declares none. A term DICOM does not define
    (``ISO-8859-1``, ``ISO_IR100``: pydicom read the text by guessing) gives UTF-8: written
    back, it made every result fail dciodvfy and a strict reader misread its names."""
    element = header.get(_SPECIFIC_CHARACTER_SET)  # by tag: the element, or None
    if element is None:
        return None
    values = [str(element.value)] if element.VM < 2 else [str(v) for v in element.value]
    if any(v.strip() and v.strip() not in python_encoding for v in values):
        return _UTF8
    if len(values) < 2:
        return values[0] if values else None
    if not values[0].strip():
        values[0] = "ISO 2022 IR 6"
    return values


def restore_character_set(result: Dataset, source: Dataset) -> None:
    """``result`` (made from :func:`repaired_header` of ``source``) in the source's own
    character set (:func:`results_character_set`): its names and descriptions are written as
    the source's were."""
    values = results_character_set(source)
    if values is not None:
        result[_SPECIFIC_CHARACTER_SET] = DataElement(_SPECIFIC_CHARACTER_SET, "CS", values)


def restore_time_zone(result: Dataset, source: Dataset) -> None:
    """``result``'s own moments (its creation, content and presentation creation, and the
    contribution highdicom records for this software, all taken from this machine's clock) in
    the time zone the source declares (TimezoneOffsetFromUTC), and that zone declared: an
    instance has one zone for all its dates and times, and its study's date and time are copied
    from the source as they are. Written as this moment there (the result is made a few
    milliseconds before): re-reading the local strings would misplace them in the repeated
    hour when summer time ends. A source that declares none leaves them in this machine's zone
    (the site's, as the node is set)."""
    offset = _utc_offset(source.get("TimezoneOffsetFromUTC"))
    if offset is None:
        return
    there = dt.datetime.now(dt.timezone(offset))
    for date_keyword, time_keyword in _OWN_MOMENTS:
        if date_keyword in result and time_keyword in result:
            setattr(result, date_keyword, there.strftime("%Y%m%d"))
            setattr(result, time_keyword, there.strftime("%H%M%S.%f"))
    # highdicom's own contribution comes last (the scanner's, before it, is the source's time).
    contributions = result.get("ContributingEquipmentSequence") or []
    if contributions and "ContributionDateTime" in contributions[-1]:
        contributions[-1].ContributionDateTime = there.strftime("%Y%m%d%H%M%S.%f")
    result.TimezoneOffsetFromUTC = str(source.TimezoneOffsetFromUTC).strip()


_OWN_MOMENTS = (
    ("InstanceCreationDate", "InstanceCreationTime"),
    ("ContentDate", "ContentTime"),
    ("PresentationCreationDate", "PresentationCreationTime"),
)


def _utc_offset(value: object) -> dt.timedelta | None:
    """A TimezoneOffsetFromUTC (``&ZZXX``: ``+0900``, ``-0500``) as an offset; None when absent
    or not of that form (such a value is not copied)."""
    match = re.fullmatch(r"([+-])(\d\d)(\d\d)", str(value or "").strip())
    if match is None:
        return None
    hours, minutes = int(match[2]), int(match[3])
    if hours > 14 or minutes >= 60:
        return None
    offset = dt.timedelta(hours=hours, minutes=minutes)
    return -offset if match[1] == "-" else offset


_SEXES = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F"}
_PATIENT_SEX = 0x00100040
_SPECIFIC_CHARACTER_SET = 0x00080005
_UTF8 = "ISO_IR 192"


def _repair_single_values(header: Dataset, repaired: Dataset) -> None:
    for element in header:
        if element.VR == "SQ" or element.VM < 2 or element.tag.is_private:
            continue
        try:
            single = dictionary_VM(element.tag) == "1"
        except KeyError:  # not in the dictionary
            continue
        if single:
            first = element.value[0]
            keyword = element.keyword or str(element.tag)
            log.warning(
                "%s has %d values: the first, %r, kept for the results",
                keyword,
                element.VM,
                str(first),
            )
            repaired[element.tag] = DataElement(element.tag, element.VR, first)


_MODALITY = 0x00080060


def _repair_modality(header: Dataset, repaired: Dataset) -> None:
    if str(header.get("Modality", "") or "").strip():
        return
    ultrasound = str(repaired.get("SOPClassUID", "")).startswith(_ULTRASOUND_CLASS_ROOTS)
    modality = "US" if ultrasound else "OT"
    log.warning("Modality missing: written as %r for the results, from the SOP class", modality)
    repaired[_MODALITY] = DataElement(_MODALITY, "CS", modality)


_ULTRASOUND_CLASS_ROOTS = ("1.2.840.10008.5.1.4.1.1.3", "1.2.840.10008.5.1.4.1.1.6")


def _repair_patient_sex(header: Dataset, repaired: Dataset) -> None:
    raw = header.get("PatientSex")
    if raw is None or raw in ("", "M", "F", "O"):
        return
    fixed = _SEXES.get(str(raw).strip().upper(), "")
    log.warning("PatientSex %r written as %r for the results", raw, fixed)
    repaired[_PATIENT_SEX] = DataElement(_PATIENT_SEX, "CS", fixed)


def _parses(vr: str, value: str) -> bool:
    # pydicom also reads ACR-NEMA's dotted dates, which are no valid DA in a result object.
    if vr == "DA" and not value.isdigit():
        return False
    kind = {"DA": valuerep.DA, "TM": valuerep.TM, "DT": valuerep.DT}[vr]
    try:
        kind(value)
    except ValueError:
        return False
    return True


def restore_source_class(result: Dataset, source: Dataset) -> None:
    """In ``result``, every reference to ``source`` gets ``source``'s own SOP Class UID back
    (the encoders saw the current class of a retired one: :func:`repaired_header`)."""
    sop_class = str(source.get("SOPClassUID", ""))
    if sop_class not in RETIRED_IMAGE_CLASSES:
        return
    uid = str(source.SOPInstanceUID)
    stack = [result]
    while stack:
        ds = stack.pop()
        if str(ds.get("ReferencedSOPInstanceUID", "")) == uid and "ReferencedSOPClassUID" in ds:
            ds.ReferencedSOPClassUID = sop_class
        for element in ds:
            if element.VR == "SQ":
                stack.extend(element.value)
