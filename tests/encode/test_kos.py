"""The key-frame KOS: one IMAGE item per key frame, each with its frame number."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import KeyObjectSelectionDocumentStorage

from lus_pacs.domain import (
    AssessmentFindings,
    KeyFrame,
    KeyFrameReason,
    ModelInfo,
    NotAssessableReason,
)
from lus_pacs.encode import codes, encode_kos
from tests.encode import tree, validators
from tests.encode.conftest import B_LINE_KEY_FRAME, KEY_FRAMES, POOR_REASONS, Source
from tests.encode.test_sr import PATIENT_STUDY

pytestmark = pytest.mark.filterwarnings('ignore:The string "PLA":UserWarning')

KEY_OBJECT_DESCRIPTION = dicom_codes.DCM.KeyObjectDescription
ASSESSMENT_MODEL = ModelInfo(name="assessment", version="0.2.0", title="Assessment gate")


def _kos(cine: Source, tmp_path: Path, key_frames: tuple[KeyFrame, ...] = KEY_FRAMES) -> Path:
    kos = encode_kos(cine.findings(key_frames=key_frames), cine.header)
    assert kos is not None
    path = tmp_path / "kos.dcm"
    kos.save_as(path, enforce_file_format=True)
    return path


def test_kos_is_valid_dicom_and_parses(cine: Source, tmp_path: Path) -> None:
    path = _kos(cine, tmp_path)

    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    dump = validators.dsrdump(path)
    assert dump.returncode == 0, str(dump)
    entities = validators.dcentvfy(cine.path, path)
    assert entities.errors == [], str(entities)


def test_each_item_references_one_key_frame(cine: Source, tmp_path: Path) -> None:
    kos = pydicom.dcmread(_kos(cine, tmp_path))

    images = [item for item in tree.items(kos) if item.ValueType == "IMAGE"]
    assert [tree.frames(item) for item in images] == [[B_LINE_KEY_FRAME], [9]]
    for item in images:
        ref = item.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == cine.header.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == cine.header.SOPClassUID
        assert "ConceptNameCodeSequence" not in item


def test_kos_title_description_and_evidence(cine: Source, tmp_path: Path) -> None:
    kos = pydicom.dcmread(_kos(cine, tmp_path))

    assert kos.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert tree.concept(kos) == codes.OF_INTEREST
    (description,) = tree.named(kos, KEY_OBJECT_DESCRIPTION)
    text = description.TextValue
    assert "frame 5: representative B-line frame, highest-severity frame" in text
    assert "frame 9: best frame" in text
    assert "Not a medical device" in text
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == cine.header.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        cine.header.SOPInstanceUID
    )


def test_kos_copies_patient_and_study_in_a_new_series(cine: Source, tmp_path: Path) -> None:
    kos = pydicom.dcmread(_kos(cine, tmp_path))

    for keyword in (*PATIENT_STUDY, "StudyDescription"):
        assert kos.get(keyword, "") == cine.header.get(keyword, ""), keyword
    assert kos.Modality == "KO"
    assert kos.SeriesNumber == 901
    assert kos.SeriesInstanceUID != cine.header.SeriesInstanceUID
    assert "not a medical device" in kos.SeriesDescription


def test_no_key_frames_no_kos(right_cine: Source) -> None:
    assert encode_kos(right_cine.findings(), right_cine.header) is None


def test_key_frame_model_makes_it_best_in_set(cine: Source, tmp_path: Path) -> None:
    findings = cine.findings(key_frames=KEY_FRAMES, key_frame_model=cine.key_frame_model())
    kos = encode_kos(findings, cine.header)
    assert kos is not None
    path = tmp_path / "kos.dcm"
    kos.save_as(path, enforce_file_format=True)
    kos = pydicom.dcmread(path)

    assert tree.concept(kos) == codes.BEST_IN_SET
    images = [item for item in tree.items(kos) if item.ValueType == "IMAGE"]
    assert [tree.frames(item) for item in images] == [[B_LINE_KEY_FRAME], [9]]
    (description,) = tree.named(kos, KEY_OBJECT_DESCRIPTION)
    assert "poor" not in description.TextValue
    iod = validators.dciodvfy(path)
    assert iod.errors == [], str(iod)
    assert validators.dsrdump(path).returncode == 0


def test_without_the_key_frame_model_it_stays_of_interest(right_cine: Source) -> None:
    kos = encode_kos(right_cine.findings(key_frames=KEY_FRAMES), right_cine.header)
    assert kos is not None
    assert tree.concept(kos) == codes.OF_INTEREST
    assert tree.concept(kos) != codes.BEST_IN_SET


def test_a_poor_cine_says_so_and_why(right_cine: Source) -> None:
    findings = right_cine.findings(
        key_frames=KEY_FRAMES, key_frame_model=right_cine.key_frame_model(POOR_REASONS)
    )
    kos = encode_kos(findings, right_cine.header)
    assert kos is not None

    (description,) = tree.named(kos, KEY_OBJECT_DESCRIPTION)
    assert (
        "Cine of poor quality (rib shadow over the pleura, probe not in contact)."
        in description.TextValue
    )
    # The best of a poor lot is not "Best In Set".
    assert tree.concept(kos) == codes.OF_INTEREST


@pytest.mark.parametrize("with_model", [False, True])
def test_document_title_is_the_callers(right_cine: Source, with_model: bool) -> None:
    model = right_cine.key_frame_model() if with_model else None
    title = codes.OF_INTEREST if with_model else codes.BEST_IN_SET
    kos = encode_kos(
        right_cine.findings(key_frames=KEY_FRAMES, key_frame_model=model),
        right_cine.header,
        document_title=title,
    )
    assert kos is not None
    assert tree.concept(kos) == title


@pytest.mark.parametrize("frame", [0, -1, 13])
def test_key_frames_outside_the_cine_are_refused(right_cine: Source, frame: int) -> None:
    assert right_cine.n_frames == 12
    findings = right_cine.findings(key_frames=(KeyFrame(frame, KeyFrameReason.BEST),))
    with pytest.raises(ValueError, match="1-based"):
        encode_kos(findings, right_cine.header)


def test_a_cine_the_lung_models_did_not_read_is_not_best_in_set_and_says_why(
    right_cine: Source,
) -> None:
    """An echocardiogram's best frame was sent as "Best In Set": a reader who opens only the
    KOS saw a good lung frame; only the SR said "not assessable"."""
    gate = AssessmentFindings((NotAssessableReason.NOT_LUNG,), 0.05, ASSESSMENT_MODEL)
    findings = right_cine.findings(
        b_lines=False, key_frames=(KEY_FRAMES[1],), key_frame_model=right_cine.key_frame_model()
    ).with_family("assessment", gate)
    kos = encode_kos(findings, right_cine.header)
    assert kos is not None
    assert tree.concept(kos) == codes.OF_INTEREST
    (description,) = tree.named(kos, KEY_OBJECT_DESCRIPTION)
    assert (
        "Cine not assessable for lung findings: not a lung ultrasound view."
        in description.TextValue
    )
    still = AssessmentFindings((NotAssessableReason.STILL_IMAGE,), None, ASSESSMENT_MODEL)
    kos = encode_kos(findings.with_family("assessment", still), right_cine.header)
    assert kos is not None
    assert tree.concept(kos) == codes.BEST_IN_SET  # a still's frames are read
