"""The whole object set of a simulated 6-zone exam and of pydicom's real 120-frame cine, as
``lus-pacs process`` writes it: every object passes ``lus-pacs validate``, and every SR reads
back (highdicom ``srread``) to the record in ``summary.jsonl`` / ``studies.jsonl``."""

from __future__ import annotations

import copy
import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from lus_pacs.encode.files import write_outputs
from lus_pacs.encode.readback import read_cine_sr, read_study_summary
from lus_pacs.pipeline import encode_summary
from lus_pacs.records import StudySummary
from lus_pacs.reprocess.run import write_exam_csv
from tests.node_process import lus_pacs
from tests.tools import dciodvfy_errors, run_cli, write_cine

ALL_KINDS = ["sr", "kos", "seg", "seg-binary", "seg-uncertainty", "pr", "study-sr"]
PER_CINE = {"sr", "kos", "seg", "seg-binary", "seg-uncertainty", "pr"}


class Processed:
    """The sources and what ``lus-pacs process`` made of them."""

    def __init__(self, sources: list[Path], out: Path) -> None:
        self.sources = sources
        self.out = out
        self.records = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
        self.studies = [json.loads(x) for x in (out / "studies.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def processed(synth_exams: Path, tmp_path_factory: pytest.TempPathFactory) -> Processed:
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    real = Path(str(get_testdata_file("color3d_jpeg_baseline.dcm")))
    sources = [*sorted(exam.glob("*.dcm")), real]
    folder = tmp_path_factory.mktemp("results")
    config = folder / "lus-pacs.toml"
    kinds = ", ".join(f'"{k}"' for k in ALL_KINDS)
    # Two dropout passes instead of 40: the objects are the same kind, the test faster.
    config.write_text(f"output_kinds = [{kinds}]\n\n[segmentation]\nmc_samples = 2\n")
    out = folder / "out"
    run_cli("process", *map(str, sources), "--out", str(out), "--config", str(config))
    return Processed(sources, out)


def _lung(processed: Processed) -> list[dict[str, Any]]:
    """The records of the cines the lung models read: the simulated exam's."""
    return [r for r in processed.records if r["assessment"]["assessable"]]


def test_every_lung_cine_gets_the_whole_object_set(processed: Processed) -> None:
    assert len(processed.records) == 7
    assert len(_lung(processed)) == 6
    for record in processed.records:
        kinds = {o["kind"] for o in record["outputs"]}
        assert all((processed.out / o["path"]).is_file() for o in record["outputs"])
        if record["assessment"]["assessable"]:
            assert kinds == PER_CINE, record["source"]["zone"]
            continue
        # pydicom's vendor cine is an echocardiogram: no lung finding, so no lung object;
        # its SR says why, its KOS and presentation state keep the best frame.
        assert record["assessment"]["reasons"] == ["not_lung"]
        assert not {"b_lines", "severity", "consolidation", "segmentation"} & set(record)
        assert kinds == {"sr", "kos", "pr"}
    assert len(processed.studies) == 2  # the simulated exam and the vendor cine's study
    assert len(list(processed.out.glob("study-sr-*.dcm"))) == 2


def test_lus_pacs_status_says_why_a_cine_got_no_lung_finding(processed: Processed) -> None:
    """``lus-pacs status`` listed a cine kept from the lung models as sent, like any other: the
    operator saw no finding and no reason."""
    from lus_pacs.cli import record_notes

    notes = {
        r["source"]["sop_instance_uid"]: record_notes(json.dumps(r)) for r in processed.records
    }
    lung = {r["source"]["sop_instance_uid"] for r in _lung(processed)}
    assert all(notes[uid] == [] for uid in lung)
    (vendor,) = set(notes) - lung
    assert notes[vendor] == ["not assessable for lung findings: not_lung"]


def test_every_object_passes_lus_pacs_validate(processed: Processed) -> None:
    result = lus_pacs("validate", *map(str, processed.sources), str(processed.out))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    objects = len(list(processed.out.glob("*.dcm")))
    assert sum(" dciodvfy " in x for x in lines) == objects + len(processed.sources)
    assert sum(" dsrdump " in x for x in lines) == 2 * 7 + 2  # SR and KOS per cine; summaries
    assert sum(" dcmpschk " in x for x in lines) == 7
    # One dcentvfy per study, across its sources and all their outputs.
    entity_checks = [x for x in lines if " dcentvfy " in x]
    assert len(entity_checks) == 2
    assert all(x.startswith("ok") for x in entity_checks)
    assert lines[-1].endswith(" 0 failed")


def test_validate_fails_on_an_error_line(processed: Processed, tmp_path: Path) -> None:
    """The tools exit 0 on errors; ``validate`` must not."""
    record = processed.records[0]
    (sr,) = [o["path"] for o in record["outputs"] if o["kind"] == "sr"]
    broken = pydicom.dcmread(processed.out / sr)
    del broken.CompletionFlag  # type 1 in the SR Document General module
    path = tmp_path / "broken.dcm"
    broken.save_as(path)
    result = lus_pacs("validate", str(path))
    assert result.returncode == 1
    assert "FAIL  dciodvfy" in result.stdout


def test_validate_reads_what_the_tools_echo_in_the_files_own_character_set(
    tmp_path: Path,
) -> None:
    """dcentvfy quotes two cines' Latin-1 patient names that disagree: validate ended with a
    UnicodeDecodeError traceback instead of its verdict."""
    frames = np.zeros((2, 16, 16), np.uint8)
    for n, name in enumerate(("M\u00fcller^Jos\u00e9", "M\u00fcller^J\u00f6s\u00e9")):
        path = write_cine(tmp_path / f"{n}.dcm", frames, "explicit")
        cine = pydicom.dcmread(path)
        cine.SpecificCharacterSet = "ISO_IR 100"
        cine.PatientName = name
        cine.SOPInstanceUID = cine.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        cine.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.42"  # one study
        cine.save_as(path)
    result = lus_pacs("validate", str(tmp_path / "0.dcm"), str(tmp_path / "1.dcm"))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1  # the two cines of one study disagree on the patient
    assert "FAIL  dcentvfy" in result.stdout


def _output(processed: Processed, record: dict[str, Any], kind: str) -> Path:
    (name,) = [o["path"] for o in record["outputs"] if o["kind"] == kind]
    return processed.out / name


def test_a_cine_that_is_not_assessable_says_so_in_its_sr(processed: Processed) -> None:
    (record,) = [r for r in processed.records if not r["assessment"]["assessable"]]
    back = read_cine_sr(_output(processed, record, "sr"))
    assert back["assessment"] == {"assessable": False, "reasons": ["not_lung"]}
    assert not {"b_lines", "severity", "consolidation", "segmentation"} & set(back)
    assert back["models"] == record["models"]


def test_each_cine_sr_reads_back_to_its_record(processed: Processed) -> None:
    for record in _lung(processed):
        back = read_cine_sr(_output(processed, record, "sr"))
        where = record["source"]["zone"] or record["source"]["sop_instance_uid"]
        assert back["assessment"] == {"assessable": True, "reasons": []}, where

        for key in ("sop_instance_uid", "series_instance_uid", "study_instance_uid"):
            assert back["source"][key] == record["source"][key], (where, key)
        assert back["source"]["patient_id"] == record["source"]["patient_id"], where
        assert back["source"]["zone"] == record["source"]["zone"], where
        assert back["models"] == record["models"], where

        b, b_back = record["b_lines"], back["b_lines"]
        assert b_back["present"] == b["present"], where
        assert b_back["probability"] == pytest.approx(b["probability"], abs=1e-4), where
        assert b_back["frames"] == b["frames"], where

        con, con_back = record["consolidation"], back["consolidation"]
        assert con_back["present"] == con["present"], where
        assert con_back["probability"] == pytest.approx(con["probability"], abs=1e-4), where
        assert con_back["boxes"] == con["boxes"], where

        sev, sev_back = record["severity"], back["severity"]
        assert sev_back["score"] == sev["score"], where
        assert sev_back["probability"] == pytest.approx(sev["probabilities"][sev["score"]]), where
        # A clip score from the measurements comes without frame scores in the SR.
        shown = [] if sev.get("clip_from_measurements") else sev["frame_scores"]
        assert sev_back["frame_scores"] == shown, where
        if sev["box"] is not None:
            assert sev_back["top_frame"] == sev["top_frame"], where
            assert sev_back["box"] == sev["box"], where

        classes = record["segmentation"]["classes"]
        classes_back = back["segmentation"]["classes"]
        assert [c["score"] for c in classes_back] == [c["score"] for c in classes], where
        for c, c_back in zip(classes, classes_back, strict=True):
            assert c_back["pixels"] == c["pixels"], where
            assert c_back["frames"] == c["frames"], where
            for key in ("uncertainty_mean", "uncertainty_max"):
                assert c_back[key] == pytest.approx(c[key], rel=1e-5), (where, key)

        assert back.get("key_frames", []) == record["key_frames"], where
        chosen_for_b_lines = b["key_frame"] if b["present"] else None
        assert back["b_lines"]["key_frame"] == chosen_for_b_lines, where

        if "quality" in record:  # the SR leaves out the score of every frame
            quality = {k: v for k, v in record["quality"].items() if k != "frame_scores"}
            assert back["quality"] == {
                **quality,
                "probability": pytest.approx(quality["probability"], abs=1e-4),
            }, where
        else:
            assert "quality" not in back, where


def test_each_study_summary_sr_reads_back_to_its_line(processed: Processed) -> None:
    by_study = {s["study_instance_uid"]: s for s in processed.studies}
    for path in processed.out.glob("study-sr-*.dcm"):
        back = read_study_summary(path)
        summary = by_study[back["study_instance_uid"]]
        keys = ("zones", "zone_cines", "b_lines_assessed", "b_line_zones", "lus_score")
        for key in (*keys, "consolidation_zones", "quality_zones", "poor_zones"):
            assert back.get(key) == summary.get(key), key
        assert back.get("not_assessable_zones", []) == summary["not_assessable_zones"]
    exam = max(processed.studies, key=lambda s: s["cines"])
    assert exam["zones"] == ["L1", "L2", "L3", "R1", "R2", "R3"]
    assert exam["lus_score"]["zones_scored"] == 6
    # The echocardiogram's study: listed as not assessable, no LUS score counted.
    vendor = min(processed.studies, key=lambda s: s["cines"])
    assert vendor["not_assessable_zones"] == ["?"]
    assert "lus_score" not in vendor
    assert list(vendor["not_assessable"].values()) == [["not_lung"]]


def _designators(ds: pydicom.Dataset) -> set[str]:
    found = set()
    for element in ds:
        if element.keyword == "CodingSchemeDesignator":
            found.add(str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                found |= _designators(item)
    return found


def test_every_object_using_the_private_codes_declares_their_scheme(
    processed: Processed,
) -> None:
    users = 0
    for path in processed.out.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if "99LUSPACS" not in _designators(ds):
            continue
        users += 1
        declared = {
            str(item.CodingSchemeDesignator)
            for item in ds.get("CodingSchemeIdentificationSequence", [])
        }
        assert "99LUSPACS" in declared, path.name
    assert users >= 7 + 6 + 2  # at least the SRs, the lung cines' uncertainty SEGs, summaries


def test_a_study_summary_that_changed_is_a_new_object_and_the_same_one_is_not(
    processed: Processed,
) -> None:
    """A cine received again with other pixels or a corrected patient makes a summary that
    says something else: the PACS gets it as a new object (before, its UID stayed, so it was
    not sent again, and the file under that UID was overwritten)."""
    (line,) = [s for s in processed.studies if s.get("lus_score")]
    summary = StudySummary.loads(json.dumps(line))
    exam = processed.sources[:-1]  # the simulated exam: the last is pydicom's cine
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in exam]
    uid = encode_summary(summary, headers, "m@1")[1].SOPInstanceUID
    assert encode_summary(summary, headers, "m@1")[1].SOPInstanceUID == uid
    fewer = replace(summary, b_line_zones=summary.b_line_zones[1:])
    assert fewer.b_line_zones != summary.b_line_zones
    assert encode_summary(fewer, headers, "m@1")[1].SOPInstanceUID != uid
    renamed = [copy.deepcopy(h) for h in headers]
    renamed[0].PatientName = "Corrected^Name"
    assert encode_summary(summary, renamed, "m@1")[1].SOPInstanceUID != uid


def test_a_changed_study_summary_is_numbered_after_the_ones_before_and_names_its_predecessor(
    processed: Processed, tmp_path: Path
) -> None:
    """A corrected cine (its score changed) gave a second summary of the same Instance Number
    as the first, and nothing told a reader which replaced which: both totals stood in PACS."""
    (line,) = [s for s in processed.studies if s.get("lus_score")]
    summary = StudySummary.loads(json.dumps(line))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in processed.sources[:-1]]
    assert encode_summary(summary, headers, "m@1")[1].InstanceNumber == len(headers)  # batch
    first = encode_summary(summary, headers, "m@1", [])[1]  # the node's first
    assert first.InstanceNumber == 1
    made = [first.SOPInstanceUID]
    assert encode_summary(summary, headers, "m@1", made)[1].InstanceNumber == 1  # the same
    changed = replace(summary, b_line_zones=summary.b_line_zones[1:])
    second = encode_summary(changed, headers, "m@1", made)[1]
    assert second.InstanceNumber == 2
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    (document,) = second.PredecessorDocumentsSequence
    assert document.StudyInstanceUID == first.StudyInstanceUID
    (series,) = document.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    (earlier,) = series.ReferencedSOPSequence
    assert earlier.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert earlier.ReferencedSOPClassUID == first.SOPClassUID
    path = tmp_path / "second.dcm"
    second.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    made.append(second.SOPInstanceUID)
    # The second made again (summarised once more, unchanged) is the second as it was.
    same = encode_summary(changed, headers, "m@1", made)[1]
    assert (same.SOPInstanceUID, same.InstanceNumber) == (second.SOPInstanceUID, 2)
    # Back to what the first said (a cine corrected back): a third object after the second,
    # not the first again, which was made before and would not be sent (a review found the
    # PACS's highest-numbered summary then the stale second).
    third = encode_summary(summary, headers, "m@1", made)[1]
    assert third.SOPInstanceUID not in made
    assert third.InstanceNumber == 3
    (earlier,) = (
        third.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    )
    assert earlier.ReferencedSOPInstanceUID == second.SOPInstanceUID


def test_a_study_summary_says_how_many_of_its_cines_could_not_be_processed(
    processed: Processed, tmp_path: Path
) -> None:
    """An exam is never scored on part of its cines unsaid: before, a cine that failed (an
    unreadable file) was simply absent from the summary a reader sees in PACS."""
    (line,) = [s for s in processed.studies if s.get("lus_score")]
    assert "failed_cines" not in line  # none failed in this exam
    summary = StudySummary.loads(json.dumps(line))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in processed.sources[:-1]]
    cut = replace(summary, failed_cines={"1.2.3.4": "R3.dcm: NumberOfFrames is 45 but 12"})
    (output,) = write_outputs([encode_summary(cut, headers, "m@1")], tmp_path / "cut")
    assert read_study_summary(output.path)["cines_not_processed"] == 1
    checked = lus_pacs("validate", str(output.path))  # dciodvfy and dsrdump on the new count
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert any(x.startswith("ok") and " dciodvfy " in x for x in lines), lines
    assert lines[-1].endswith(" 0 failed")
    (output,) = write_outputs([encode_summary(summary, headers, "m@1")], tmp_path / "whole")
    assert "cines_not_processed" not in read_study_summary(output.path)


def _zone_findings(ds: pydicom.Dataset) -> dict[str, list[str]]:
    """The summary SR's zone groups: tracking identifier -> the names of its evaluations."""
    found: dict[str, list[str]] = {}
    for group in ds.ContentSequence:
        if group.get("ValueType") != "CONTAINER":
            continue
        for item in group.get("ContentSequence", []):
            items = item.get("ContentSequence", [])
            zone = [i.TextValue for i in items if i.get("ValueType") == "TEXT"]
            if zone and zone[0].startswith("Zone "):
                found[zone[0]] = [
                    i.ConceptNameCodeSequence[0].CodeMeaning
                    for i in items
                    if i.get("ValueType") == "CODE"
                ]
    return found


def test_a_zone_no_model_read_has_no_finding_absent_in_the_summary(
    processed: Processed, tmp_path: Path
) -> None:
    """A zone whose only cine the gate kept from the lung models (not lung, blank) was written
    "B-lines: Absent, Lung consolidation: Absent" beside "not assessable", in the SR and the
    exam CSV: a negative finding for a zone nobody looked at."""
    (line,) = [s for s in processed.studies if s.get("lus_score")]
    summary = StudySummary.loads(json.dumps(line))
    assert summary.consolidation_zones is not None
    assert summary.b_lines_assessed
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in processed.sources[:-1]]
    unread = replace(
        summary,
        not_assessable_zones=("R3",),
        b_line_zones=tuple(z for z in summary.b_line_zones if z != "R3"),
        consolidation_zones=tuple(z for z in summary.consolidation_zones if z != "R3"),
    )
    zones = _zone_findings(encode_summary(unread, headers, "m@1")[1])
    assert "B-lines" in zones["Zone R1"]
    assert "Lung consolidation" in zones["Zone R1"]
    assert "B-lines" not in zones["Zone R3"]
    assert "Lung consolidation" not in zones["Zone R3"]
    assert "Lung ultrasound assessability" in zones["Zone R3"]
    write_exam_csv(unread, tmp_path / "exam.csv")
    rows = {r[0]: r for r in csv.reader((tmp_path / "exam.csv").read_text().splitlines())}
    assert rows["R1"][3] in {"True", "False"}
    assert rows["R3"][3:] == ["", ""]
