"""The presentation state: GSPS for grey sources, CSPS for colour ones, boxes on key frames."""

from __future__ import annotations

import copy
import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import (
    ColorSoftcopyPresentationStateStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
)

from lus_pacs.domain import (
    AssessmentFindings,
    Findings,
    KeyFrame,
    KeyFrameReason,
    NotAssessableReason,
    PoorReason,
    SegmentationFindings,
    SeverityFindings,
)
from lus_pacs.encode.pstate import SHORT_NOTICE, encode_presentation_state, srgb_input_profile
from lus_pacs.families.segmentation.inference import summarise
from tests.encode import validators
from tests.encode.conftest import B_LINE_KEY_FRAME, BEST_FRAME, POOR_REASONS, Source
from tests.encode.test_kos import ASSESSMENT_MODEL
from tests.encode.test_sr import PATIENT_STUDY, SEGMENTATION_MODEL, SEVERITY_MODEL

pytestmark = pytest.mark.filterwarnings('ignore:The string "PLA":UserWarning')

SEVERITY_BOX = (40, 30, 120, 90)
SCORE_2_BOX = (200, 100, 260, 140)
"""Where the simulated segmentation puts score 2 in the severity frame: columns, rows, ends
exclusive."""


def _findings(source: Source, *, measured: bool = False) -> Findings:
    """B-lines with their key frame, severity with its box on the last frame, and a mask of
    score 2 there: two annotated frames."""
    n = source.n_frames
    severity = SeverityFindings(
        score=3,
        probabilities=(0.05, 0.1, 0.2, 0.65),
        frame_scores=tuple(min(3, i * 4 // n) for i in range(n)),
        top_frame=n,
        box=SEVERITY_BOX,
        model=SEVERITY_MODEL,
        clip_from_measurements=measured,
    )
    masks = np.full((1, int(source.header.Rows), int(source.header.Columns)), 4, np.uint8)
    x0, y0, x1, y1 = SCORE_2_BOX
    masks[0, y0:y1, x0:x1] = 2
    segmentation = SegmentationFindings(
        frames=(n,),
        masks=masks,
        uncertainty=None,
        classes=summarise(masks, None),
        samples=0,
        model=SEGMENTATION_MODEL,
    )
    key_frames = (
        KeyFrame(B_LINE_KEY_FRAME, KeyFrameReason.B_LINES),
        KeyFrame(n, KeyFrameReason.SEVERITY),
    )
    findings = source.findings(key_frames=key_frames).with_family("severity", severity)
    return findings.with_family("segmentation", segmentation)


def _write(ds: Dataset | None, path: Path) -> Dataset:
    assert ds is not None
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def grey_cine(right_cine: Source, tmp_path_factory: pytest.TempPathFactory) -> Source:
    """The simulated R2 cine re-encoded as MONOCHROME2, uncompressed: a grey source."""
    ds = pydicom.dcmread(right_cine.path)
    ds.PixelData = ds.pixel_array[..., 0].astype(np.uint8).tobytes()  # Y of YBR: luminance
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    del ds.PlanarConfiguration
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path_factory.mktemp("grey") / "R2-grey.dcm"
    ds.save_as(path, enforce_file_format=True)
    return Source(path, pydicom.dcmread(path, stop_before_pixels=True))


def _checked(source: Source, state: Dataset, path: Path) -> None:
    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    applies = validators.dcmpschk(path)
    assert applies.errors == [], str(applies)
    entities = validators.dcentvfy(source.path, path)
    assert entities.errors == [], str(entities)
    for keyword in PATIENT_STUDY:
        assert state.get(keyword, "") == source.header.get(keyword, ""), keyword
    assert state.Modality == "PR"
    assert state.SeriesInstanceUID != source.header.SeriesInstanceUID


def test_colour_source_gets_a_valid_csps(cine: Source, tmp_path: Path) -> None:
    path = tmp_path / "pr.dcm"
    state = _write(encode_presentation_state(_findings(cine), cine.header), path)

    assert state.SOPClassUID == ColorSoftcopyPresentationStateStorage
    assert state.ICCProfile[12:16] == b"scnr"
    _checked(cine, state, path)


def test_a_display_profile_of_the_source_is_declared_an_input_one(
    cine: Source, tmp_path: Path
) -> None:
    """A colour cine embedding sRGB as a display ("mntr") profile, as most do, got no
    presentation state at all (highdicom: the class must be "scnr" or "spac")."""
    import hashlib

    from PIL import ImageCms

    display = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    assert display[12:16] == b"mntr"
    with_id = bytearray(display)
    with_id[84:100] = hashlib.md5(bytes(display)).digest()  # a profile ID, as many carry
    for profile in (bytes(display), bytes(with_id) + b"\0", b"not a profile"):
        header = copy.deepcopy(cine.header)
        header.ICCProfile = profile
        path = tmp_path / "pr.dcm"
        state = _write(encode_presentation_state(_findings(cine), header), path)
        made = bytes(state.ICCProfile)
        assert made[12:16] == b"scnr"
        ImageCms.ImageCmsProfile(io.BytesIO(made))  # still a profile
        if profile.startswith(bytes(display[:12])):
            assert made[:12] + made[16:84] == bytes(display[:12] + display[16:84])
        if profile is not None and any(profile[84:100]):
            zeroed = bytearray(made)
            zeroed[44:48], zeroed[64:68], zeroed[84:100] = bytes(4), bytes(4), bytes(16)
            assert made[84:100] == hashlib.md5(zeroed).digest()
        _checked(cine, state, path)


def test_grey_source_gets_a_valid_gsps(grey_cine: Source, tmp_path: Path) -> None:
    path = tmp_path / "pr.dcm"
    state = _write(encode_presentation_state(_findings(grey_cine), grey_cine.header), path)

    assert state.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage
    assert state.SoftcopyVOILUTSequence[0].WindowWidth == 256
    _checked(grey_cine, state, path)


def test_a_grey_source_is_shown_with_its_own_window_and_pixel_shape(
    grey_cine: Source, tmp_path: Path
) -> None:
    """The state always gave the whole range of the stored values (a window of 32/64 over
    values 0-63 opened the key frames four times too dark) and square pixels (a source of
    pixels twice as wide as high was shown squashed to half its width)."""
    header = pydicom.dcmread(grey_cine.path, stop_before_pixels=True)
    header.WindowCenter, header.WindowWidth = [32, 40], [64, 80]  # the first is shown
    header.PixelAspectRatio = [1, 2]
    path = tmp_path / "pr.dcm"
    state = _write(encode_presentation_state(_findings(grey_cine), header), path)
    voi = state.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (32.0, 64.0)
    (area,) = state.DisplayedAreaSelectionSequence
    assert [int(v) for v in area.PresentationPixelAspectRatio] == [1, 2]
    _checked(Source(grey_cine.path, header), state, path)
    # Signed stored values without a window are centred on 0, not on half their range.
    header = pydicom.dcmread(grey_cine.path, stop_before_pixels=True)
    header.PixelRepresentation = 1
    signed = encode_presentation_state(_findings(grey_cine), header)
    assert signed is not None
    assert float(signed.SoftcopyVOILUTSequence[0].WindowCenter) == 0.0


def test_annotations_sit_on_the_key_frames_with_their_boxes(
    right_cine: Source, tmp_path: Path
) -> None:
    n = right_cine.n_frames
    state = _write(
        encode_presentation_state(_findings(right_cine), right_cine.header), tmp_path / "pr.dcm"
    )

    by_frame = {
        int(a.ReferencedImageSequence[0].ReferencedFrameNumber): a
        for a in state.GraphicAnnotationSequence
    }
    assert sorted(by_frame) == [B_LINE_KEY_FRAME, n]
    for annotation in by_frame.values():
        ref = annotation.ReferencedImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == right_cine.header.SOPInstanceUID
        texts = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
        assert SHORT_NOTICE in texts
    b_line_texts = [t.UnformattedTextValue for t in by_frame[B_LINE_KEY_FRAME].TextObjectSequence]
    assert "AI: B-lines p=0.87" in b_line_texts
    assert "GraphicObjectSequence" not in by_frame[B_LINE_KEY_FRAME]

    last = by_frame[n]
    texts = [t.UnformattedTextValue for t in last.TextObjectSequence]
    assert "AI: LUS score 3" in texts
    assert {"score 3 region", "S2"} <= set(texts)
    boxes = [
        np.asarray(g.GraphicData, dtype=float).reshape(-1, 2) for g in last.GraphicObjectSequence
    ]
    extents = sorted(
        (int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 0].max()), int(b[:, 1].max()))
        for b in boxes
    )
    assert extents == sorted([SEVERITY_BOX, SCORE_2_BOX])
    assert all(g.GraphicAnnotationUnits == "PIXEL" for g in last.GraphicObjectSequence)


def test_a_clip_score_from_the_measurements_is_what_its_key_frame_says(
    right_cine: Source, tmp_path: Path
) -> None:
    """The key frame of a clip scored by the real-data recipe read 'LUS score 0' (the frame
    scorer's score of that frame) under a cine scored 3."""
    findings = _findings(right_cine, measured=True)
    assert findings.severity is not None
    frame = right_cine.n_frames
    findings = findings.with_family(
        "severity", replace(findings.severity, score=2, probabilities=(0.1, 0.1, 0.7, 0.1))
    )
    state = _write(encode_presentation_state(findings, right_cine.header), tmp_path / "pr.dcm")
    (last,) = [
        a
        for a in state.GraphicAnnotationSequence
        if int(a.ReferencedImageSequence[0].ReferencedFrameNumber) == frame
    ]
    texts = [t.UnformattedTextValue for t in last.TextObjectSequence]
    assert "AI: cine LUS score 2" in texts
    assert "severity region" in texts
    assert not any(t.startswith("score ") for t in texts)
    _checked(right_cine, state, tmp_path / "pr.dcm")


def test_a_grey_source_with_lookup_tables_or_inverted_is_shown_as_it_shows_itself(
    grey_cine: Source, tmp_path: Path
) -> None:
    """Only the rescale and window were read: a source whose VOI or modality transform is a
    LUT opened four times too dark through the state, and a MONOCHROME1 one in negative.
    Frame 1 rendered by dcmtk as the source shows itself (dcm2pnm, its own transforms) and
    through the state (dcmp2pgm) must agree."""
    import subprocess

    from PIL import Image
    from pydicom.dataelem import DataElement

    def lut(**extra: object) -> Dataset:
        item = Dataset()
        item.LUTDescriptor = [64, 0, 8]
        for keyword, value in extra.items():
            setattr(item, keyword, value)
        item["LUTData"] = DataElement(0x00283006, "US", [min(255, 4 * i) for i in range(64)])
        return item

    def variant(name: str) -> Path:
        ds = pydicom.dcmread(grey_cine.path)
        if name == "monochrome1":
            ds.PhotometricInterpretation = "MONOCHROME1"
        elif name == "modality_plain":  # a LUT v -> 16 v and a window of its whole output
            item = Dataset()
            item.LUTDescriptor, item.ModalityLUTType = [256, 0, 16], "US"
            item["LUTData"] = DataElement(0x00283006, "US", [16 * i for i in range(256)])
            ds.ModalityLUTSequence = [item]
            ds.WindowCenter, ds.WindowWidth = 2048, 4096
        elif name == "signed_voi":  # signed stored values, a LUT from -128
            ds.PixelData = (ds.pixel_array // 4).astype(np.uint8).tobytes()
            ds.PixelRepresentation = 1
            item = Dataset()
            item["LUTDescriptor"] = DataElement(0x00283002, "SS", [256, -128, 8])
            item["LUTData"] = DataElement(
                0x00283006, "US", [min(255, 4 * max(0, i - 128)) for i in range(256)]
            )
            ds.VOILUTSequence = [item]
        else:  # stored 0-63, a LUT stretching them over 0-255
            ds.PixelData = (ds.pixel_array // 4).astype(np.uint8).tobytes()
            if name.startswith("voi_lut"):
                ds.VOILUTSequence = [lut(LUTExplanation="stretch")]
            else:
                ds.ModalityLUTSequence = [lut(ModalityLUTType="US")]
                ds.WindowCenter, ds.WindowWidth = 128, 256
        if name == "voi_lut_implicit":  # its LUT Data read back as OW: no byte order in a copy
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    for name, own in (
        ("voi_lut", ["+Wl", "1"]),
        ("voi_lut_implicit", ["+Wl", "1"]),
        ("modality_lut", ["+Ww", "128", "256"]),
        ("modality_plain", ["+Ww", "2048", "4096"]),
        ("signed_voi", ["+Wl", "1"]),
        ("monochrome1", []),
    ):
        source = variant(name)
        header = pydicom.dcmread(source, stop_before_pixels=True)
        state_path = tmp_path / f"{name}-pr.dcm"
        state = _write(encode_presentation_state(_findings(grey_cine), header), state_path)
        _checked(Source(source, header), state, state_path)
        plain, through = tmp_path / f"{name}.pgm", tmp_path / f"{name}-pr.pgm"
        subprocess.run(
            ["dcm2pnm", "--frame", "1", *own, str(source), str(plain)], check=True,
            capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["dcmp2pgm", "-p", str(state_path), "-f", "1", str(source), str(through)],
            check=True, capture_output=True,
        )  # fmt: skip
        a = np.asarray(Image.open(plain), float)
        b = np.asarray(Image.open(through), float)
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99, name
        assert abs(a.mean() - b.mean()) < 0.05 * max(a.mean(), 1.0) + 1.0, (
            name,
            a.mean(),
            b.mean(),
        )


def test_each_result_series_names_its_cines_zone(right_cine: Source, vendor_cine: Source) -> None:
    """The result series of a six-zone exam read alike in OHIF's study panel (six SR series
    'lus-pacs AI findings (research only, ...)'): each now says its zone, within LO's 64."""
    from lus_pacs.domain import OutputKind, ResultIdentity
    from lus_pacs.encode.objects import encode_objects, zoned

    def identity(kind: OutputKind) -> ResultIdentity:
        return ResultIdentity(pydicom.uid.generate_uid(), pydicom.uid.generate_uid(), 900)

    kinds = [OutputKind.SR, OutputKind.KOS, OutputKind.PR, OutputKind.SEG]
    made = encode_objects(_findings(right_cine), right_cine.header, kinds, identity)
    assert [kind for kind, _ in made] == kinds
    for kind, ds in made:
        assert " R2 (research use, not a medical device)" in ds.SeriesDescription, kind
        assert len(ds.SeriesDescription) <= 64
    for kind, ds in encode_objects(_findings(vendor_cine), vendor_cine.header, kinds, identity):
        assert ds.SeriesDescription.startswith("lus-pacs AI "), kind
        assert " (research use" in ds.SeriesDescription  # no zone: as it was
    for kind, ds in made:  # the longest zone label fits every kind
        assert " L14 (" in zoned(str(ds.SeriesDescription).replace(" R2", ""), "L14"), kind


def test_laterality_follows_the_zone(
    right_cine: Source, vendor_cine: Source, tmp_path: Path
) -> None:
    right = encode_presentation_state(_findings(right_cine), right_cine.header)
    unknown = encode_presentation_state(_findings(vendor_cine), vendor_cine.header)

    assert right is not None
    assert right.Laterality == "R"
    assert unknown is not None
    assert unknown.Laterality in (None, "")


def test_no_key_frames_no_presentation_state(right_cine: Source) -> None:
    assert encode_presentation_state(right_cine.findings(key_frames=()), right_cine.header) is None


def test_the_made_up_icc_profile_is_an_input_profile() -> None:
    profile = srgb_input_profile()

    assert profile[12:16] == b"scnr"
    assert profile[16:20] == b"RGB "
    assert int.from_bytes(profile[:4], "big") == len(profile)


def _texts_by_frame(state: Dataset) -> dict[int, list[str]]:
    return {
        int(a.ReferencedImageSequence[0].ReferencedFrameNumber): [
            t.UnformattedTextValue for t in a.TextObjectSequence
        ]
        for a in state.GraphicAnnotationSequence
    }


@pytest.mark.parametrize("reasons", [None, POOR_REASONS], ids=["usable", "poor"])
def test_best_frame_and_poor_quality_are_labelled(
    right_cine: Source, reasons: tuple[PoorReason, ...] | None, tmp_path: Path
) -> None:
    model = right_cine.key_frame_model(reasons)
    key_frames = (
        KeyFrame(B_LINE_KEY_FRAME, KeyFrameReason.B_LINES),
        KeyFrame(BEST_FRAME, KeyFrameReason.BEST),
    )
    findings = right_cine.findings(key_frames=key_frames, key_frame_model=model)
    path = tmp_path / "pr.dcm"
    state = _write(encode_presentation_state(findings, right_cine.header), path)
    _checked(right_cine, state, path)

    texts = _texts_by_frame(state)
    assert sorted(texts) == [B_LINE_KEY_FRAME, BEST_FRAME]
    keep = model.frame_scores[BEST_FRAME - 1]
    assert f"AI: best frame p={keep:.2f}" in texts[BEST_FRAME]
    poor = "AI: poor quality: rib shadow over the pleura, probe not in contact"
    for frame_texts in texts.values():
        assert (poor in frame_texts) == (reasons is not None)
        assert not any("poor" in t for t in frame_texts if t != poor)


def test_a_cine_the_lung_models_did_not_read_says_so_on_its_frame(
    right_cine: Source, tmp_path: Path
) -> None:
    """The overlay labelled an echocardiogram's frame "AI: best frame p=0.93" and nothing
    else: a reader of the overlay alone saw a good lung frame."""
    gate = AssessmentFindings((NotAssessableReason.BLANK,), 0.4, ASSESSMENT_MODEL)
    findings = right_cine.findings(
        b_lines=False,
        key_frames=(KeyFrame(BEST_FRAME, KeyFrameReason.BEST),),
        key_frame_model=right_cine.key_frame_model(POOR_REASONS),
    ).with_family("assessment", gate)
    path = tmp_path / "pr.dcm"
    state = _write(encode_presentation_state(findings, right_cine.header), path)
    _checked(right_cine, state, path)
    texts = _texts_by_frame(state)[BEST_FRAME]
    line = "AI: not assessable for lung findings: no echo texture in the scan area"
    assert line in texts
    assert any(t.startswith("AI: poor quality") for t in texts)  # both lines, one under the other
