"""The per-cine Comprehensive SR: valid to dciodvfy and dcmtk, and saying exactly what was found."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from lus_pacs.domain import (
    BLineFindings,
    Findings,
    ModelInfo,
    OutputKind,
    PoorReason,
    SegmentationFindings,
    SeverityFindings,
)
from lus_pacs.encode import codes, encode_kos, encode_sr
from lus_pacs.errors import UnreadableImageError
from lus_pacs.families.segmentation.inference import summarise
from tests.encode import tree, validators
from tests.encode.conftest import (
    B_LINE_FRAMES,
    BEST_FRAME,
    KEY_FRAME_MODEL,
    KEY_FRAMES,
    MODEL,
    POOR_REASONS,
    Source,
)

# The vendor cine's PatientName "PLA" has one component; highdicom warns, and we copy it as is.
pytestmark = pytest.mark.filterwarnings('ignore:The string "PLA":UserWarning')

PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)


def _write(ds: Dataset, path: Path) -> Dataset:
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _valid_report(findings: Findings, header: Dataset, path: Path) -> hd.sr.MeasurementReport:
    """The findings' SR written to ``path``, checked by dciodvfy and dsrdump, read back."""
    encode_sr(findings, header).save_as(path, enforce_file_format=True)
    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    assert validators.dsrdump(path).returncode == 0
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    return report


def test_sr_is_valid_dicom_and_parses(cine: Source, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    encode_sr(cine.findings(), cine.header).save_as(path, enforce_file_format=True)

    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    dump = validators.dsrdump(path)
    assert dump.returncode == 0, str(dump)
    assert "B-line frames" in "\n".join(dump.lines)


def test_sr_agrees_with_its_source_and_kos(cine: Source, tmp_path: Path) -> None:
    findings = cine.findings(key_frames=KEY_FRAMES)
    sr = tmp_path / "sr.dcm"
    kos = tmp_path / "kos.dcm"
    encode_sr(findings, cine.header).save_as(sr, enforce_file_format=True)
    key_objects = encode_kos(findings, cine.header)
    assert key_objects is not None
    key_objects.save_as(kos, enforce_file_format=True)

    entities = validators.dcentvfy(cine.path, sr, kos)
    assert entities.errors == [], str(entities)


def test_sr_copies_patient_and_study_in_a_new_series(cine: Source, tmp_path: Path) -> None:
    sr = _write(encode_sr(cine.findings(), cine.header), tmp_path / "sr.dcm")

    for keyword in PATIENT_STUDY:
        assert sr.get(keyword, "") == cine.header.get(keyword, ""), keyword
    assert sr.SOPClassUID == ComprehensiveSRStorage
    assert sr.Modality == "SR"
    assert sr.SeriesNumber == 900
    assert sr.SeriesInstanceUID != cine.header.SeriesInstanceUID
    assert "not a medical device" in sr.SeriesDescription
    assert sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == cine.header.StudyInstanceUID
    referenced = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == cine.header.SOPInstanceUID


def test_sr_references_b_line_frames_and_key_frame(cine: Source, tmp_path: Path) -> None:
    sr = _write(encode_sr(cine.findings(key_frames=KEY_FRAMES), cine.header), tmp_path / "sr.dcm")

    images = [item for item in tree.items(sr) if item.ValueType == "IMAGE"]
    assert images
    for item in images:
        ref = item.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == cine.header.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == cine.header.SOPClassUID
    (count,) = tree.named(sr, codes.B_LINE_FRAMES)
    assert float(count.MeasuredValueSequence[0].NumericValue) == len(B_LINE_FRAMES)
    (source_of_count,) = tree.named(count, codes.SOURCE_OF_MEASUREMENT)
    assert tree.frames(source_of_count) == list(B_LINE_FRAMES)
    (key,) = tree.named(sr, codes.BEST_ILLUSTRATION)
    assert tree.frames(key) == sorted({k.frame for k in KEY_FRAMES})


def test_sr_reads_back_through_highdicom(right_cine: Source, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    encode_sr(right_cine.findings(), right_cine.header).save_as(path, enforce_file_format=True)

    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    (group,) = report.get_image_measurement_groups(finding_type=codes.B_LINES)
    (site,) = group.finding_sites
    assert site.value == codes.LUNG
    assert site.laterality == codes.RIGHT
    (count,) = group.get_measurements(name=codes.B_LINE_FRAMES)
    (image,) = count.referenced_images
    assert image.referenced_sop_instance_uid == right_cine.header.SOPInstanceUID
    assert image.referenced_frame_numbers == list(B_LINE_FRAMES)
    (probability,) = group.get_measurements(name=codes.PROBABILITY)
    assert probability.value == pytest.approx(0.87)
    assert probability.unit == codes.UNITLESS
    (presence,) = group.get_qualitative_evaluations(name=codes.B_LINES)
    assert presence.value == codes.PRESENT


def test_sr_names_the_algorithm_and_says_it_is_research(cine: Source, tmp_path: Path) -> None:
    sr = _write(encode_sr(cine.findings(), cine.header), tmp_path / "sr.dcm")

    (name,) = tree.named(sr, codes.ALGORITHM_NAME)
    (version,) = tree.named(sr, codes.ALGORITHM_VERSION)
    assert (name.TextValue, version.TextValue) == (MODEL.name, MODEL.version)
    (comment,) = tree.named(sr, codes.COMMENT)
    assert "simulated data" in comment.TextValue
    assert "Not a medical device" in comment.TextValue
    (manufacturer,) = tree.named(sr, codes.ALGORITHM_MANUFACTURER)
    assert "not a medical device" in manufacturer.TextValue


def test_sr_declares_its_private_coding_scheme(cine: Source, tmp_path: Path) -> None:
    sr = _write(encode_sr(cine.findings(), cine.header), tmp_path / "sr.dcm")

    declared = {s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence}
    used = {
        item.ConceptNameCodeSequence[0].CodingSchemeDesignator
        for item in tree.items(sr)
        if "ConceptNameCodeSequence" in item
    }
    assert codes.SCHEME_DESIGNATOR in used
    assert codes.SCHEME_DESIGNATOR in declared


@pytest.mark.parametrize(("fixture", "side"), [("right_cine", "R"), ("left_cine", "L")])
def test_finding_site_laterality_follows_the_zone(
    fixture: str, side: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    cine: Source = request.getfixturevalue(fixture)
    sr = _write(encode_sr(cine.findings(), cine.header), tmp_path / "sr.dcm")

    (site,) = tree.named(sr, codes.FINDING_SITE)
    assert tree.code_value(site) == codes.LUNG
    (laterality,) = tree.named(site, codes.LATERALITY)
    assert tree.code_value(laterality) == {"R": codes.RIGHT, "L": codes.LEFT}[side]
    (zone,) = tree.named(site, codes.LUNG_ZONE)
    assert zone.TextValue == cine.ref().zone
    assert zone.TextValue.startswith(side)


def test_finding_site_without_zone_has_no_laterality(vendor_cine: Source, tmp_path: Path) -> None:
    assert vendor_cine.ref().zone is None
    sr = _write(encode_sr(vendor_cine.findings(), vendor_cine.header), tmp_path / "sr.dcm")

    (site,) = tree.named(sr, codes.FINDING_SITE)
    assert tree.code_value(site) == codes.LUNG
    assert tree.named(site, codes.LATERALITY) == []
    assert tree.named(site, codes.LUNG_ZONE) == []


def test_absent_b_lines_are_said_absent_without_frames(right_cine: Source, tmp_path: Path) -> None:
    findings = right_cine.findings(present=False)
    sr = _write(encode_sr(findings, right_cine.header), tmp_path / "sr.dcm")

    (presence,) = tree.named(sr, codes.B_LINES)
    assert tree.code_value(presence) == codes.ABSENT
    (count,) = tree.named(sr, codes.B_LINE_FRAMES)
    assert float(count.MeasuredValueSequence[0].NumericValue) == 0
    assert tree.named(count, codes.SOURCE_OF_MEASUREMENT) == []
    assert tree.named(sr, codes.BEST_ILLUSTRATION) == []
    assert validators.dciodvfy(tmp_path / "sr.dcm").errors == []


def test_sr_without_b_lines_says_nothing_about_them(cine: Source, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    sr = _write(encode_sr(cine.findings(b_lines=False), cine.header), path)

    found = {name for item in tree.items(sr) if (name := tree.concept(item))} | {
        tree.code_value(item) for item in tree.items(sr) if item.ValueType == "CODE"
    }
    for absent in (
        codes.B_LINES,
        codes.B_LINE_FRAMES,
        codes.PROBABILITY,
        codes.BEST_ILLUSTRATION,
        codes.ALGORITHM_NAME,
    ):
        assert absent not in found, absent
    assert codes.FINDING_SITE in found
    assert tree.named(sr, codes.COMMENT)
    assert validators.dciodvfy(path).errors == []
    assert validators.dsrdump(path).returncode == 0


def test_uids_and_series_number_are_the_callers(right_cine: Source) -> None:
    instance, series = generate_uid(), generate_uid()
    sr = encode_sr(
        right_cine.findings(),
        right_cine.header,
        series_number=907,
        instance_uid=instance,
        series_uid=series,
    )
    assert (sr.SOPInstanceUID, sr.SeriesInstanceUID, sr.SeriesNumber) == (instance, series, 907)
    assert sr.file_meta.MediaStorageSOPInstanceUID == instance
    again = encode_sr(right_cine.findings(), right_cine.header, instance_uid=instance)
    tracking = [i.UID for i in tree.items(sr) if i.ValueType == "UIDREF"]
    assert tracking == [i.UID for i in tree.items(again) if i.ValueType == "UIDREF"]


def test_frame_numbers_below_one_are_refused_by_the_domain(right_cine: Source) -> None:
    b_lines = right_cine.findings().b_lines
    assert b_lines is not None
    with pytest.raises(ValueError, match="1-based"):
        replace(b_lines, frames=(0, 1))
    with pytest.raises(ValueError, match="1-based"):
        replace(b_lines, key_frame=0)


def test_probabilities_and_uncertainties_out_of_range_are_refused_by_the_domain() -> None:
    """A score probability of 1.7 was written into the SR as it was; a NaN one, or a NaN mask
    uncertainty, made highdicom refuse the whole SR of the cine."""
    from lus_pacs.domain import SegmentedClass

    def severity(probabilities: tuple[float, float, float, float]) -> SeverityFindings:
        return SeverityFindings(1, probabilities, (1, 1), 1, None, SEVERITY_MODEL)

    assert severity((0.1, 0.6, 0.2, 0.1)).score == 1
    for wrong in ((1.7, -0.7, 0.0, 0.0), (float("nan"), 0.5, 0.25, 0.25), (0.1, 0.1, 0.1, 0.1)):
        with pytest.raises(ValueError, match="probabilities"):
            severity(wrong)
    assert SegmentedClass(2, 10, (0,), 0.1, 0.3).pixels == 10
    with pytest.raises(ValueError, match="Uncertainties"):
        SegmentedClass(2, 10, (0,), float("nan"), 0.3)
    with pytest.raises(ValueError, match="score 0-3"):
        SegmentedClass(4, 10, (0,), None, None)


def test_frames_beyond_the_cine_are_refused(right_cine: Source) -> None:
    findings = right_cine.findings()
    assert findings.b_lines is not None
    beyond: BLineFindings = replace(findings.b_lines, frames=(right_cine.n_frames + 1,))
    with pytest.raises(ValueError, match="NumberOfFrames"):
        encode_sr(findings.with_family("b_lines", beyond), right_cine.header)


def test_findings_of_another_cine_are_refused(right_cine: Source, left_cine: Source) -> None:
    with pytest.raises(ValueError, match="findings are for SOP Instance"):
        encode_sr(left_cine.findings(), right_cine.header)


def test_a_source_without_study_uid_is_refused(right_cine: Source) -> None:
    header = copy.deepcopy(right_cine.header)
    del header.StudyInstanceUID
    with pytest.raises(UnreadableImageError, match="StudyInstanceUID"):
        encode_sr(right_cine.findings(), header)


def test_numpy_values_from_inference_are_accepted(right_cine: Source, tmp_path: Path) -> None:
    findings = right_cine.findings()
    assert findings.b_lines is not None
    b_lines = replace(
        findings.b_lines,
        probability=np.float32(0.5),  # type: ignore[arg-type]
        frames=tuple(np.arange(2, 5)),
    )
    sr = _write(
        encode_sr(findings.with_family("b_lines", b_lines), right_cine.header), tmp_path / "s"
    )

    (probability,) = tree.named(sr, codes.PROBABILITY)
    assert float(probability.MeasuredValueSequence[0].NumericValue) == 0.5
    (count,) = tree.named(sr, codes.B_LINE_FRAMES)
    (source_of_count,) = tree.named(count, codes.SOURCE_OF_MEASUREMENT)
    assert tree.frames(source_of_count) == [2, 3, 4]


SEVERITY_MODEL = ModelInfo(name="severity", version="0.1.0", title="Reg-STN + uninorm (paper 003)")


def _with_severity(
    source: Source, box: tuple[int, int, int, int] | None, *, measured: bool = False
) -> Findings:
    n = source.n_frames
    frame_scores = tuple(min(3, i * 4 // n) for i in range(n))  # 0, 0, .., 3, 3
    severity = SeverityFindings(
        score=3,
        probabilities=(0.05, 0.1, 0.2, 0.65),
        frame_scores=frame_scores,
        top_frame=n,
        box=box,
        model=SEVERITY_MODEL,
        clip_from_measurements=measured,
    )
    return source.findings().with_family("severity", severity)


def test_sr_reports_the_severity_scores_with_frames_and_the_box(
    cine: Source, tmp_path: Path
) -> None:
    findings = _with_severity(cine, (40, 30, 120, 90))
    path = tmp_path / "sr.dcm"
    report = _valid_report(findings, cine.header, path)
    (clip,) = report.get_image_measurement_groups(finding_type=codes.LUS_SCORE)
    (score,) = clip.get_measurements(name=codes.LUS_SCORE)
    assert score.value == 3
    (probability,) = clip.get_measurements(name=codes.PROBABILITY)
    assert probability.value == pytest.approx(0.65)
    assert findings.severity is not None
    referenced = []
    for k, name in enumerate(codes.FRAMES_WITH_SCORE):
        (count,) = clip.get_measurements(name=name)
        (image,) = count.referenced_images
        expected = [i + 1 for i, s in enumerate(findings.severity.frame_scores) if s == k]
        assert image.referenced_frame_numbers == expected
        assert count.value == len(expected)
        referenced += expected
    assert sorted(referenced) == list(range(1, cine.n_frames + 1))  # every frame once

    (region_group,) = report.get_planar_roi_measurement_groups(finding_type=codes.SCORE_REGION)
    region = region_group.roi
    assert region is not None
    points = region.value.tolist()
    assert points[0] == points[-1] == [40.0, 30.0]
    assert {tuple(p) for p in points} == {(40, 30), (120, 30), (120, 90), (40, 90)}
    (source_image,) = region.ContentSequence
    assert tree.frames(source_image) == [cine.n_frames]
    names = {item.TextValue for item in tree.named(pydicom.dcmread(path), codes.ALGORITHM_NAME)}
    assert names == {MODEL.name, SEVERITY_MODEL.name}


def test_a_clip_score_from_the_measurements_comes_without_frame_scores(
    cine: Source, tmp_path: Path
) -> None:
    """The shipped bundle's clip score is the real-data recipe's; the frame scores are a
    network's the score does not follow. The SR said 'LUS score 3' beside 'frames with score
    0: all of them' (75 of 130 real clips disagreed): now the clip score alone, and the
    region without a frame score."""
    report = _valid_report(
        _with_severity(cine, (40, 30, 120, 90), measured=True), cine.header, tmp_path / "sr.dcm"
    )
    (clip,) = report.get_image_measurement_groups(finding_type=codes.LUS_SCORE)
    (score,) = clip.get_measurements(name=codes.LUS_SCORE)
    assert score.value == 3
    assert all(not clip.get_measurements(name=name) for name in codes.FRAMES_WITH_SCORE)
    (region_group,) = report.get_planar_roi_measurement_groups(finding_type=codes.SCORE_REGION)
    assert not region_group.get_measurements(name=codes.LUS_SCORE)
    assert region_group.roi is not None


def test_severity_without_a_box_has_no_region(right_cine: Source, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    encode_sr(_with_severity(right_cine, None), right_cine.header).save_as(
        path, enforce_file_format=True
    )
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert len(report.get_image_measurement_groups(finding_type=codes.LUS_SCORE)) == 1
    assert report.get_planar_roi_measurement_groups(finding_type=codes.SCORE_REGION) == []
    assert validators.dciodvfy(path).errors == []


SEGMENTATION_MODEL = ModelInfo(name="segmentation", version="0.1.0", title="Ensemble (paper 003)")


def test_sr_reports_mask_pixels_and_uncertainty_per_score(cine: Source, tmp_path: Path) -> None:
    rows, cols = int(cine.header.Rows), int(cine.header.Columns)
    frames = (2, cine.n_frames)
    masks = np.full((2, rows, cols), 4, np.uint8)
    masks[0, 10:20, 10:30] = 0  # 200 pixels of score 0 in frame 2
    masks[1, 40:45, 5:9] = 3  # 20 pixels of score 3 in the last frame
    uncertainty = np.zeros(masks.shape, np.float32)
    uncertainty[0, 10:20, 10:30] = 0.1
    uncertainty[1, 40:45, 5:9] = np.linspace(0.2, 0.4, 4, dtype=np.float32)
    segmentation = SegmentationFindings(
        frames=frames,
        masks=masks,
        uncertainty=uncertainty,
        classes=summarise(masks, uncertainty),
        samples=40,
        model=SEGMENTATION_MODEL,
    )
    findings = cine.findings().with_family("segmentation", segmentation)
    path = tmp_path / "sr.dcm"
    encode_sr(findings, cine.header).save_as(path, enforce_file_format=True)
    assert validators.dciodvfy(path).errors == []
    assert validators.dsrdump(path).returncode == 0

    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    (group,) = report.get_image_measurement_groups(finding_type=codes.SCORE_MASKS)
    (zero,) = group.get_measurements(name=codes.PIXELS_WITH_SCORE[0])
    assert zero.value == 200
    assert zero.referenced_images[0].referenced_frame_numbers == [2]
    (three,) = group.get_measurements(name=codes.PIXELS_WITH_SCORE[3])
    assert three.value == 20
    assert three.referenced_images[0].referenced_frame_numbers == [cine.n_frames]
    assert group.get_measurements(name=codes.PIXELS_WITH_SCORE[1]) == []
    summaries = {
        m.derivation.meaning: m.value
        for m in group.get_measurements(name=codes.MASK_UNCERTAINTY[3])
        if m.derivation is not None
    }
    assert summaries == {"Mean": pytest.approx(0.3, abs=1e-3), "Maximum": pytest.approx(0.4)}
    names = {item.TextValue for item in tree.named(pydicom.dcmread(path), codes.ALGORITHM_NAME)}
    assert SEGMENTATION_MODEL.name in names


@pytest.mark.parametrize("binary", [False, True], ids=["labelmap", "binary"])
def test_sr_references_each_score_segment_of_its_seg(
    cine: Source, tmp_path: Path, binary: bool
) -> None:
    """TID 1500 pointing at its SEG, as IHE AI Results expects: a TID 1411 group per score
    segmented, referencing that score's segment, and the SEG in the SR's evidence."""
    from lus_pacs.encode.seg import encode_seg

    rows, cols = int(cine.header.Rows), int(cine.header.Columns)
    masks = np.full((2, rows, cols), 4, np.uint8)
    masks[0, 10:20, 10:30] = 1
    masks[1, 40:45, 5:9] = 3
    segmentation = SegmentationFindings(
        frames=(2, cine.n_frames),
        masks=masks,
        uncertainty=None,
        classes=summarise(masks, None),
        samples=0,
        model=SEGMENTATION_MODEL,
    )
    findings = cine.findings().with_family("segmentation", segmentation)
    seg = encode_seg(
        dict(zip(segmentation.frames, masks, strict=True)),
        cine.header,
        model=SEGMENTATION_MODEL,
        binary=binary,
    )
    path = tmp_path / "sr.dcm"
    encode_sr(findings, cine.header, segmentation=seg).save_as(path, enforce_file_format=True)
    assert validators.dciodvfy(path).errors == []
    report = hd.sr.srread(path).content
    assert isinstance(report, hd.sr.MeasurementReport)
    regions = report.get_volumetric_roi_measurement_groups()
    if not binary:  # a LABELMAP SEG is not referenced by segment (see _segment_regions)
        assert regions == []
        return
    referenced = {
        (g.referenced_segment.referenced_sop_instance_uid, number)
        for g in regions
        if g.referenced_segment is not None
        for number in g.referenced_segment.referenced_segment_numbers or []
    }
    assert referenced == {(seg.SOPInstanceUID, 2), (seg.SOPInstanceUID, 4)}  # scores 1 and 3
    evidence = pydicom.dcmread(path).CurrentRequestedProcedureEvidenceSequence
    series = [s for study in evidence for s in study.ReferencedSeriesSequence]
    uids = {i.ReferencedSOPInstanceUID for s in series for i in s.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in uids


CONSOLIDATION_MODEL = ModelInfo(name="consolidation", version="0.1.0", title="BYOL 3D (paper 002)")


def test_sr_reports_consolidation_with_a_box_per_frame(cine: Source, tmp_path: Path) -> None:
    from lus_pacs.domain import ConsolidationBox, ConsolidationFindings
    from lus_pacs.encode.pstate import encode_presentation_state
    from lus_pacs.encode.readback import read_cine_sr

    boxes = (ConsolidationBox(3, (40, 60, 90, 100)), ConsolidationBox(7, (10, 20, 30, 40)))
    found = ConsolidationFindings(True, 0.93, boxes, CONSOLIDATION_MODEL)
    findings = cine.findings().with_family("consolidation", found)
    path = tmp_path / "sr.dcm"
    encode_sr(findings, cine.header).save_as(path, enforce_file_format=True)
    assert validators.dciodvfy(path).errors == []
    assert validators.dsrdump(path).returncode == 0

    back = read_cine_sr(path)["consolidation"]
    assert back["present"] is True
    assert back["probability"] == pytest.approx(0.93)
    assert back["boxes"] == [{"frame": b.frame, "box": list(b.box)} for b in boxes]
    assert read_cine_sr(path)["models"]["consolidation"] == "0.1.0"

    state = encode_presentation_state(findings, cine.header)
    assert state is not None
    frames = {
        int(a.ReferencedImageSequence[0].get("ReferencedFrameNumber", 0))
        for a in state.GraphicAnnotationSequence
    }
    if int(cine.header.NumberOfFrames) > 1:
        assert {3, 7} <= frames


def test_sr_gives_each_key_frame_its_reason_in_order(cine: Source, tmp_path: Path) -> None:
    sr = _write(encode_sr(cine.findings(key_frames=KEY_FRAMES), cine.header), tmp_path / "sr.dcm")

    items = tree.named(sr, codes.KEY_FRAME)
    assert [tree.code_value(item) for item in items] == [
        codes.KEY_FRAME_REASONS[k.reason] for k in KEY_FRAMES
    ]
    for item, key in zip(items, KEY_FRAMES, strict=True):
        (image,) = item.ContentSequence
        assert tree.concept(image) == codes.SOURCE_OF_MEASUREMENT
        assert image.RelationshipType == "INFERRED FROM"
        assert tree.frames(image) == [key.frame]
    (group,) = [i for i in tree.items(sr) if tree.concept(i) == codes.FINDING]
    assert tree.code_value(group) == codes.B_LINES  # the items sit in the cine's group


def _members(value: object) -> list[object]:
    """A module attribute as a list: a code alone (Code is itself a tuple), or the codes of a
    tuple or enum-keyed dict of them."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, tuple) and not isinstance(value, Code):
        return list(value)
    return [value]


def test_private_codes_are_unique() -> None:
    private = [
        code.value
        for value in vars(codes).values()
        for code in _members(value)
        if isinstance(code, Code) and code.scheme_designator == codes.SCHEME_DESIGNATOR
    ]
    assert codes.KEY_FRAME.value in private
    assert codes.POOR_REASONS[PoorReason.NO_PLEURA].value in private
    assert len(private) == len(set(private)), sorted(private)


def test_without_the_key_frame_model_there_is_no_quality_group(
    right_cine: Source, tmp_path: Path
) -> None:
    sr = _write(
        encode_sr(right_cine.findings(key_frames=KEY_FRAMES), right_cine.header),
        tmp_path / "sr.dcm",
    )

    for absent in (codes.QUALITY_ASSESSMENT, codes.QUALITY_FINDING, codes.KEEP_PROBABILITY):
        assert tree.named(sr, absent) == [], absent
    names = {item.TextValue for item in tree.named(sr, codes.ALGORITHM_NAME)}
    assert names == {MODEL.name}


@pytest.mark.parametrize("reasons", [None, POOR_REASONS], ids=["usable", "poor"])
def test_sr_reports_the_key_frame_models_quality_flag(
    cine: Source, reasons: tuple[PoorReason, ...] | None, tmp_path: Path
) -> None:
    model = cine.key_frame_model(reasons)
    findings = cine.findings(key_frames=KEY_FRAMES, key_frame_model=model)
    path = tmp_path / "sr.dcm"
    report = _valid_report(findings, cine.header, path)
    (group,) = report.get_image_measurement_groups(finding_type=codes.IMAGE_QUALITY)
    (flag,) = group.get_qualitative_evaluations(name=codes.QUALITY_ASSESSMENT)
    assert flag[0].ConceptCodeSequence[0].CodeValue == codes.QUALITY_VALUES[model.quality].value
    found = group.get_qualitative_evaluations(name=codes.QUALITY_FINDING)
    assert [f[0].ConceptCodeSequence[0].CodeValue for f in found] == [
        codes.POOR_REASONS[r].value for r in reasons or ()
    ]
    (keep,) = group.get_measurements(name=codes.KEEP_PROBABILITY)
    assert keep.value == pytest.approx(model.frame_scores[BEST_FRAME - 1])
    (image,) = keep.referenced_images
    assert image.referenced_frame_numbers == [BEST_FRAME]
    names = {item.TextValue for item in tree.named(pydicom.dcmread(path), codes.ALGORITHM_NAME)}
    assert names == {MODEL.name, KEY_FRAME_MODEL.name}


def test_other_content_from_the_same_source_and_models_is_another_object(
    right_cine: Source,
) -> None:
    """The result UIDs derived from the source, the models and the kind only: zone rules
    changed (the side, R to L), other output kinds or another release made a new SR under the
    old UID, which a PACS holding the old one keeps (Orthanc ignores the copy)."""
    from lus_pacs.encode.files import encode

    findings = right_cine.findings()
    kinds = [OutputKind.SR, OutputKind.KOS]

    def made(found: Findings, kinds: list[OutputKind]) -> dict[OutputKind, Dataset]:
        return dict(encode(found, right_cine.header, kinds, "b_lines@1"))

    first = made(findings, kinds)
    again = made(findings, kinds)  # after a crash: the same objects
    assert first[OutputKind.SR].SOPInstanceUID == again[OutputKind.SR].SOPInstanceUID
    other_side = replace(findings, source=replace(findings.source, zone="L1"))
    for other in (made(other_side, kinds), made(findings, [*kinds, OutputKind.PR])):
        assert other[OutputKind.SR].SOPInstanceUID != first[OutputKind.SR].SOPInstanceUID
        assert other[OutputKind.SR].SeriesInstanceUID == first[OutputKind.SR].SeriesInstanceUID
