"""The Key Object Selection document (TID 2010) pointing at a cine's key frames.

highdicom's :class:`~highdicom.ko.KeyObjectSelection` references whole instances only. The
frame numbers are therefore set on its IMAGE items after the document is built, and the
"Source" concept name highdicom gives those items is removed: TID 2010 leaves them unnamed, and
re-reading the content through highdicom would otherwise restore it.
"""

from __future__ import annotations

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from lus_pacs import __version__
from lus_pacs.domain import Findings, KeyFrameReason, Quality
from lus_pacs.encode import codes
from lus_pacs.encode.common import (
    MANUFACTURER,
    POOR_REASON_TEXT,
    RESEARCH_NOTICE,
    check_frames,
    copy_retired_patient_attributes,
    device_observer,
    frame_references,
    not_assessable_text,
    source_header,
)

SERIES_DESCRIPTION = "lus-pacs AI key frames (research use, not a medical device)"

REASON_TEXT = {
    KeyFrameReason.B_LINES: "representative B-line frame",
    KeyFrameReason.ATTENTION: "frame the B-line model attended to most (no B-lines found)",
    KeyFrameReason.SEVERITY: "highest-severity frame",
    KeyFrameReason.BEST: "best frame (key-frame model)",
}


def encode_kos(
    findings: Findings,
    source: Dataset,
    *,
    series_number: int = 901,
    instance_uid: str | None = None,
    series_uid: str | None = None,
    document_title: Code | None = None,
) -> Dataset | None:
    """Encode the key frames of one cine as a KOS document in a new series of its study.

    Each distinct key frame is one IMAGE item referencing the source cine with its
    ``ReferencedFrameNumber``, in the order of ``findings.key_frames``; the Key Object
    Description says why each frame was chosen, how the key-frame model rated the cine when it
    ran, and that the selection is research output.

    Parameters
    ----------
    findings:
        What the models found in the cine; ``findings.key_frames`` are referenced.
    source:
        The cine's header (pixel data is neither needed nor copied). Patient and study
        attributes are copied from it; its SOP Instance UID must be ``findings.source``'s.
    series_number:
        Series Number of the new KOS series.
    instance_uid, series_uid:
        SOP Instance UID and Series Instance UID of the KOS; new UIDs when None.
    document_title:
        The document title from CID 7010. By default 113013 "Best In Set" when the key-frame
        model rated the cine usable (``findings.key_frame_model``), else 113000 "Of Interest"
        (a poor cine's best frame is not one to call best; 113001 "Rejected for Quality
        Reasons" would make IOCM archives hide the source).

    Returns
    -------
    pydicom.Dataset or None
        The KOS document, ready for ``save_as``; None when there are no key frames.

    Raises
    ------
    lus_pacs.errors.UnreadableImageError
        When the source header lacks the UIDs needed to reference it.
    ValueError
        When the findings belong to another instance or a key frame is not a frame of the
        source (frame numbers are 1-based).
    """
    if not findings.key_frames:
        return None
    header = source_header(source, findings)
    reasons: dict[int, list[KeyFrameReason]] = {}
    for key in findings.key_frames:
        reasons.setdefault(key.frame, []).append(key.reason)
    frames = check_frames(reasons, header, "Key frames")
    if document_title is None:
        chosen = findings.key_frame_model
        usable = chosen is not None and chosen.quality is Quality.USABLE
        if not_assessable_text(findings) is not None:  # an echocardiogram's "best" frame
            usable = False
        document_title = codes.BEST_IN_SET if usable else codes.OF_INTEREST

    content = hd.ko.KeyObjectSelection(
        document_title=document_title,
        referenced_objects=[header] * len(frames),
        observer_device_context=device_observer(),
        description=_description(findings, reasons),
    )
    document = hd.ko.KeyObjectSelectionDocument(
        evidence=[header],
        content=content,
        series_instance_uid=series_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=MANUFACTURER,
        software_versions=__version__,
    )
    images = [item for item in document.ContentSequence if item.ValueType == "IMAGE"]
    multiframe = frame_references(header, frames) is not None
    for item, frame in zip(images, frames, strict=True):
        if multiframe:  # a single-frame image is referenced whole
            item.ReferencedSOPSequence[0].ReferencedFrameNumber = frame
        del item.ConceptNameCodeSequence
    # Unlike the SR classes, highdicom's KOS copies only the type 1 and 2 patient/study basics.
    document.copy_patient_and_study_information(header)
    copy_retired_patient_attributes(header, document)
    # A plain Dataset: the highdicom object's cached ``content`` predates the edits above.
    kos = Dataset()
    kos.update(document)
    kos.file_meta = document.file_meta
    kos.preamble = document.preamble
    return kos


def _description(findings: Findings, reasons: dict[int, list[KeyFrameReason]]) -> str:
    chosen = "; ".join(
        f"frame {frame}: {', '.join(REASON_TEXT[r] for r in why)}" for frame, why in reasons.items()
    )
    quality = ""
    kf = findings.key_frame_model
    if kf is not None and kf.quality is Quality.POOR:
        why = ", ".join(POOR_REASON_TEXT[r] for r in kf.reasons)
        quality = f" Cine of poor quality{f' ({why})' if why else ''}."
    gate = not_assessable_text(findings)
    unread = f" Cine {gate}." if gate else ""
    return f"Key frames ({chosen}).{unread}{quality} {RESEARCH_NOTICE}"
