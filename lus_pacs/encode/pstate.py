"""The presentation state drawing the findings on a cine's key frames, for any viewer.

Viewers without SEG or SR support still show a presentation state: boxes and short labels on
the frames the models chose. Grayscale (GSPS) for a MONOCHROME source, Color (CSPS) for RGB,
YBR and palette sources, as the standard pairs them with the image's photometric
interpretation. What is drawn, on each key frame only:

* a label at the top left naming why the frame was chosen ("B-lines p=0.87", "LUS score 3",
  "best frame p=0.93"), and below it, for a cine the key-frame model rates poor, "poor quality:"
  and its reasons;
* the box where the severity model looked in its top-scoring frame, labelled with that score;
* the bounding box of each pathological score (1-3) the segmentation labelled in that frame;
* the consolidation model's saliency boxes, on the frames they were found on (annotated too).

Two traps (see ``shared/DESIGN.md``): a GSPS on an ultrasound image must carry its modality and
VOI LUT explicitly (the source has neither to copy), and a CSPS needs an ICC profile whose
device class is input ("scnr"); sources rarely carry one, so an sRGB profile is made with
Pillow's littleCMS binding and declared as an input profile.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

import highdicom as hd
import numpy as np
from PIL import ImageCms
from pydicom import Dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, generate_uid

from lus_pacs import __version__
from lus_pacs.domain import Findings, KeyFrameReason, Quality
from lus_pacs.encode.common import (
    MANUFACTURER,
    POOR_REASON_TEXT,
    check_frames,
    copy_retired_patient_attributes,
    not_assessable_text,
    source_header,
)
from lus_pacs.imaging.decode import display_table

SERIES_DESCRIPTION = "lus-pacs AI annotations (research use, not a medical device)"
LAYER = "LUSPACS"
_YELLOW = hd.color.CIELabColor(97.1, -21.6, 94.5)
_LABEL_HEIGHT = 22.0
"""Height of a text box in source pixels; viewers scale the text to fit it."""
_CHAR_WIDTH = 8.0
SHORT_NOTICE = "lus-pacs research AI - not for diagnosis"


def encode_presentation_state(
    findings: Findings,
    source: Dataset,
    *,
    series_number: int = 905,
    instance_uid: str | None = None,
    series_uid: str | None = None,
) -> Dataset | None:
    """Encode the findings on one cine's key frames (and the frames with consolidation boxes)
    as a GSPS or CSPS in a new series.

    Parameters
    ----------
    findings:
        What the models found in the cine; only its key frames are annotated.
    source:
        The cine's header (pixel data is neither needed nor copied); its SOP Instance UID must
        be ``findings.source``'s.
    series_number:
        Series Number of the new series.
    instance_uid, series_uid:
        SOP Instance UID and Series Instance UID; new UIDs when None.

    Returns
    -------
    pydicom.Dataset or None
        A Grayscale Softcopy Presentation State for MONOCHROME1/2 sources, a Color Softcopy
        Presentation State otherwise; None when the cine has no key frames.

    Raises
    ------
    lus_pacs.errors.UnreadableImageError
        When the source header lacks the UIDs needed to reference it.
    ValueError
        When the findings belong to another instance or name frames the source lacks.
    """
    consolidation_frames = (
        {b.frame for b in findings.consolidation.boxes} if findings.consolidation else set()
    )
    if not findings.key_frames and not consolidation_frames:
        return None
    header = source_header(source, findings)
    frames = check_frames(
        sorted({k.frame for k in findings.key_frames} | consolidation_frames),
        header,
        "Annotated frames",
    )
    multiframe = hd.utils.is_multiframe_image(header)
    layer = hd.pr.GraphicLayer(
        layer_name=LAYER, order=1, description="lus-pacs findings", display_color=_YELLOW
    )
    annotations = [
        hd.pr.GraphicAnnotation(
            referenced_images=[header],
            graphic_layer=layer,
            referenced_frame_number=frame if multiframe else None,
            graphic_objects=[
                hd.pr.GraphicObject("POLYLINE", corners, "PIXEL") for corners, _ in drawn
            ]
            or None,
            text_objects=[
                _label(findings, frame, header),
                *_quality(findings, header),
                _notice(header),
                *(t for _, t in drawn),
            ],
        )
        for frame in frames
        for drawn in [list(_boxes(findings, frame, header))]
    ]
    common: dict[str, Any] = {
        "referenced_images": [header],
        "series_instance_uid": series_uid or generate_uid(),
        "series_number": series_number,
        "sop_instance_uid": instance_uid or generate_uid(),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": MANUFACTURER,
        "software_versions": __version__,
        "device_serial_number": __version__,
        "content_label": LAYER,
        "content_description": "AI findings on key frames; research only",
        "graphic_annotations": annotations,
        "graphic_layers": [layer],
        "series_description": SERIES_DESCRIPTION,
    }
    state: hd.pr.GrayscaleSoftcopyPresentationState | hd.pr.ColorSoftcopyPresentationState
    if str(header.PhotometricInterpretation).startswith("MONOCHROME"):
        state = hd.pr.GrayscaleSoftcopyPresentationState(
            **common, **_grey_transforms(header, source)
        )
    else:
        state = hd.pr.ColorSoftcopyPresentationState(
            **common, icc_profile=input_profile(header.get("ICCProfile"))
        )
    # General Series Laterality is required of a presentation state (it has no Image
    # Laterality); the zone tells the side, else it stays empty (unknown).
    zone = (findings.source.zone or "").strip().upper()
    state.Laterality = zone[:1] if zone[:1] in ("R", "L") else None
    # highdicom declares square pixels; a source of other pixels is shown squashed without its
    # own ratio.
    ratio = _pixel_aspect_ratio(header)
    if ratio is not None:
        for area in state.DisplayedAreaSelectionSequence:
            area.PresentationPixelAspectRatio = list(ratio)
    copy_retired_patient_attributes(header, state)
    return state


def _grey_transforms(header: Dataset, source: Dataset) -> dict[str, Any]:
    """The grey state's modality, VOI and presentation transforms: the source shown as its own
    header shows it (and as the models read it). A state sets them all, whatever the image
    says: the source's window (with its VOI LUT function), or, for a source whose modality or
    VOI transform is a LUT, the table of what its transforms show for each stored value
    (:func:`~lus_pacs.imaging.decode.display_table`); MONOCHROME1 inverted. Before, only the
    rescale and window were read: a VOI or modality LUT's cine opened four times too dark, and
    a MONOCHROME1 cine in negative."""
    photometric = str(header.PhotometricInterpretation)
    presentation = hd.PresentationLUTTransformation(
        presentation_lut_shape="INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    )
    if "ModalityLUTSequence" in header or "VOILUTSequence" in header:
        table = display_table(
            _display_attributes(source), photometric, "its presentation state", keep_plain=True
        )
        if table is not None:
            # Stored values shifted to start at 0 (signed pixels: a LUT's first mapped value
            # must not be negative here), then the table.
            voi = hd.VOILUT(
                first_mapped_value=0, lut_data=table.table, lut_explanation="the source's LUTs"
            )
            return {
                "modality_lut_transformation": hd.ModalityLUTTransformation(
                    rescale_intercept=float(-table.first), rescale_slope=1.0, rescale_type="US"
                ),
                "voi_lut_transformations": [hd.pr.SoftcopyVOILUTTransformation(voi_luts=[voi])],
                "presentation_lut_transformation": presentation,
            }
    slope, intercept, center, width = _grey_display(header)
    function = str(header.get("VOILUTFunction") or "").strip().upper()
    return {
        "modality_lut_transformation": hd.ModalityLUTTransformation(
            rescale_intercept=intercept, rescale_slope=slope, rescale_type="US"
        ),
        "voi_lut_transformations": [
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=center,
                window_width=width,
                voi_lut_function=function if function in _VOI_FUNCTIONS else None,
            )
        ],
        "presentation_lut_transformation": presentation,
    }


_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def _display_attributes(source: Dataset) -> Dataset:
    """The source's elements with the byte order pydicom needs to read LUT Data stored as OW
    (every implicit VR file's, most 16-bit LUTs'): a header copied element by element has none,
    and its LUT was read as unusable."""
    attributes = Dataset(source)  # the elements, not copied
    meta = getattr(source, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    attributes.set_original_encoding(
        syntax == ImplicitVRLittleEndian, syntax != ExplicitVRBigEndian
    )
    return attributes


def _grey_display(header: Dataset) -> tuple[float, float, float, float]:
    """The rescale slope and intercept and the window (center, width) a grey source is shown
    with: its own (the first of its windows), else the whole range of its stored values
    (signed ones centred on 0). A state with the whole range of unsigned values over a source
    with a window of a quarter of it opened its key frames four times too dark."""
    slope = _number(header.get("RescaleSlope"), 1.0)
    intercept = _number(header.get("RescaleIntercept"), 0.0)
    if slope == 0:
        slope = 1.0
    center = _number(_first(header.get("WindowCenter")), None)
    width = _number(_first(header.get("WindowWidth")), None)
    if center is not None and width is not None and width >= 1:
        return slope, intercept, center, width
    bits = int(header.get("BitsStored") or 8)
    middle = 0.0 if header.get("PixelRepresentation") == 1 else 2.0 ** (bits - 1)
    return slope, intercept, middle * slope + intercept, 2.0**bits * abs(slope)


def _first(value: object) -> object:
    if isinstance(value, str | bytes) or not hasattr(value, "__getitem__"):
        return value
    return value[0] if len(value) else None  # type: ignore[arg-type]


def _number(value: object, default: float | None) -> Any:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _pixel_aspect_ratio(header: Dataset) -> tuple[int, int] | None:
    """The source's Pixel Aspect Ratio (vertical, horizontal) when it declares pixels that are
    not square."""
    ratio = header.get("PixelAspectRatio")
    try:
        vertical, horizontal = (int(v) for v in ratio)
    except (TypeError, ValueError):
        return None
    if vertical < 1 or horizontal < 1 or vertical == horizontal:
        return None
    return vertical, horizontal


def input_profile(profile: bytes | None) -> bytes:
    """The source's ICC profile as a colour presentation state takes it: an input ("scnr") or
    colour-space ("spac") device's (PS3.3 C.11.15). Most sources embed sRGB as a display
    ("mntr") profile, which highdicom refuses: every colour cine of such a scanner got no
    presentation state. Its device class is declared "scnr" (its profile ID, an MD5 over the
    profile, computed again where it has one); a profile that is not an RGB ICC profile, or
    none, gives :func:`srgb_input_profile`."""
    if not profile:
        return srgb_input_profile()
    data = bytes(profile)
    size = int.from_bytes(data[:4], "big") if len(data) >= 128 else 0
    if not 128 <= size <= len(data) or data[36:40] != b"acsp" or data[16:20] != b"RGB ":
        return srgb_input_profile()
    data = data[:size]  # a DICOM OB value may carry a byte of padding
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(data))
    except (OSError, ValueError, ImageCms.PyCMSError):
        return srgb_input_profile()
    if data[12:16] in (b"scnr", b"spac"):
        return data
    declared = bytearray(data)
    declared[12:16] = b"scnr"
    if any(data[84:100]):  # ICC.1 7.2.18: flags, intent and the ID itself zeroed
        zeroed = bytearray(declared)
        zeroed[44:48], zeroed[64:68], zeroed[84:100] = bytes(4), bytes(4), bytes(16)
        declared[84:100] = hashlib.md5(zeroed, usedforsecurity=False).digest()
    return bytes(declared)


def srgb_input_profile() -> bytes:
    """An sRGB ICC profile declared as an input ("scnr") device, as the CSPS IOD requires.

    littleCMS writes no profile ID (MD5) into the header, so changing the device class at
    bytes 12-15 leaves a consistent profile.
    """
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    if any(profile[84:100]):
        raise RuntimeError("the sRGB profile carries a profile ID; its class cannot be changed")
    return profile[:12] + b"scnr" + profile[16:]


def _label(findings: Findings, frame: int, header: Dataset) -> hd.pr.TextObject:
    """Why this frame was chosen, in a few words, at the top left of the image."""
    parts = []
    for key in findings.key_frames:
        if key.frame != frame:
            continue
        b, sev = findings.b_lines, findings.severity
        if key.reason == KeyFrameReason.B_LINES and b is not None:
            parts.append(f"B-lines p={b.probability:.2f}")
        elif key.reason == KeyFrameReason.ATTENTION and b is not None:
            parts.append(f"no B-lines (p={b.probability:.2f})")
        elif key.reason == KeyFrameReason.SEVERITY and sev is not None:
            if sev.clip_from_measurements:  # the frame shows the clip's score
                parts.append(f"cine LUS score {sev.score}")
            else:
                parts.append(f"LUS score {sev.frame_scores[frame - 1]}")
        elif key.reason == KeyFrameReason.BEST:
            kf = findings.key_frame_model
            keep = f" p={kf.frame_scores[frame - 1]:.2f}" if kf is not None else ""
            parts.append(f"best frame{keep}")
    con = findings.consolidation
    if con is not None and any(found.frame == frame for found in con.boxes):
        parts.append(f"consolidation p={con.probability:.2f}")
    return _text(
        "AI: " + ", ".join(dict.fromkeys(parts)),
        2.0,
        2.0,
        float(header.Columns),
        float(header.Rows),
    )


def _quality(findings: Findings, header: Dataset) -> list[hd.pr.TextObject]:
    """Under the label, a line for a cine the lung models did not read ("not assessable for
    lung findings: <reasons>") and one for a poor cine ("poor quality: <reasons>")."""
    lines = []
    gate = not_assessable_text(findings)
    if gate is not None:
        lines.append(f"AI: {gate}")
    kf = findings.key_frame_model
    if kf is not None and kf.quality is Quality.POOR:
        why = ", ".join(POOR_REASON_TEXT[r] for r in kf.reasons) or "no frame worth keeping"
        lines.append(f"AI: poor quality: {why}")
    columns = float(header.Columns)
    return [
        _text(line, 2.0, 2.0 + (n + 1) * (_LABEL_HEIGHT + 2.0), columns, float(header.Rows))
        for n, line in enumerate(lines)
    ]


def _notice(header: Dataset) -> hd.pr.TextObject:
    """The research notice at the bottom left, on every annotated frame (the full text is in
    the SR and KOS)."""
    text = SHORT_NOTICE
    bottom = float(header.Rows) - 2.0
    return _text(text, 2.0, bottom - _LABEL_HEIGHT, float(header.Columns), float(header.Rows))


def _text(
    text: str, x: float, y: float, columns: float, rows: float | None = None
) -> hd.pr.TextObject:
    """A left-justified label whose box starts at (x, y), sized to the text, inside the image
    (``rows`` high, when given): in an image smaller than the box, the box is the image (a
    cine a few pixels high or wide got no presentation state: its box lay outside)."""
    x = max(0.0, min(x, columns - 2.0))
    right = max(x + 1.0, min(columns - 1.0, x + _CHAR_WIDTH * len(text) + 8.0))
    bottom = y + _LABEL_HEIGHT
    if rows is not None:
        bottom = min(rows - 1.0, bottom)
        y = max(0.0, min(y, bottom - 1.0))
        bottom = max(bottom, y + 1.0)
    return hd.pr.TextObject(
        text_value=text,
        units="PIXEL",
        bounding_box=(x, y, right, bottom),
        text_justification="LEFT",
    )


def _boxes(
    findings: Findings, frame: int, header: Dataset
) -> Iterator[tuple[np.ndarray, hd.pr.TextObject]]:
    """Closed polylines (column, row pixel corners) on ``frame``, each with a short label."""
    columns = float(header.Columns)
    sev = findings.severity
    if sev is not None and sev.box is not None and sev.top_frame == frame:
        label = (
            "severity region"
            if sev.clip_from_measurements
            else f"score {sev.frame_scores[frame - 1]} region"
        )
        yield _box(sev.box, label, columns)
    con = findings.consolidation
    if con is not None:
        for found in con.boxes:
            if found.frame == frame:
                yield _box(found.box, "consolidation", columns)
    seg = findings.segmentation
    if seg is not None and frame in seg.frames:
        mask = seg.masks[seg.frames.index(frame)]
        for score in (1, 2, 3):
            rows, cols = np.nonzero(mask == score)
            if rows.size:
                box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
                yield _box(box, f"S{score}", columns)


def _box(
    box: tuple[int, int, int, int], text: str, columns: float
) -> tuple[np.ndarray, hd.pr.TextObject]:
    """The box as a closed polyline, its label just above it (inside it at the top edge)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float64)
    return corners, _text(text, x0, max(0.0, y0 - _LABEL_HEIGHT), columns)
