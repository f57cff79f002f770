"""Input that scanners and archives really send, through ``lus-pacs process``: damaged JPEG
frames are read, named and never chosen; a file that fails at any stage gets a failure line
naming the stage and the reason, and the files after it are processed; still images get no
finding of the models that read a loop (issue 19, cases 1-4 and 6)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from lus_pacs.cli import record_notes
from lus_pacs.encode import codes
from lus_pacs.encode.readback import read_cine_sr
from lus_pacs.pipeline import encode_summary
from lus_pacs.records import StudySummary
from tests.encode import tree
from tests.tools import chosen_frames, dciodvfy_errors, write_cine

CONFIG = 'output_kinds = ["sr", "kos", "seg", "pr"]\n\n[segmentation]\nmc_samples = 2\n'


def _copy(source: Path, out: Path, **attributes: object) -> pydicom.Dataset:
    """``source`` as another instance, with ``attributes`` set."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(out, enforce_file_format=True)
    return ds


def _corrupt(source: Path, out: Path, frames: set[int]) -> Path:
    """A copy of a JPEG cine with the second half of the scan data of each of ``frames``
    (1-based) overwritten; every end-of-image marker kept (issue 19, case 1)."""
    ds = _copy(source, out)
    encoded = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    for number in frames:
        frame = bytearray(encoded[number - 1])
        middle = len(frame) // 2
        # The second half of the scan overwritten with bytes that are no marker.
        frame[middle:-2] = bytes(i % 251 for i in range(len(frame) - 2 - middle))
        encoded[number - 1] = bytes(frame)
    ds.PixelData = encapsulate([f + b"\x00" * (len(f) % 2) for f in encoded])
    ds.save_as(out, enforce_file_format=True)
    return out


def _process(
    files: list[Path], out: Path, settings: str = CONFIG
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``lus-pacs process`` on ``files`` with ``settings`` (TOML): the records and the failure
    lines."""
    out.mkdir(parents=True)
    config = out / "lus-pacs.toml"
    config.write_text(settings)
    exe = Path(sys.executable).with_name("lus-pacs")
    command = [str(exe), "process", *map(str, files), "--out", str(out / "results")]
    done = subprocess.run(
        [*command, "--config", str(config)], check=False, capture_output=True, text=True
    )
    assert "Traceback" not in done.stdout + done.stderr, done.stderr
    results = out / "results"
    records = [json.loads(x) for x in (results / "summary.jsonl").read_text().splitlines()]
    failed = [json.loads(x) for x in (results / "failed.jsonl").read_text().splitlines()]
    assert done.returncode == (1 if failed else 0)
    return records, failed


@pytest.fixture(scope="module")
def cine(synth_exams: Path) -> Path:
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    return sorted(exam.glob("*.dcm"))[0]


def test_damaged_frames_are_named_and_never_chosen(cine: Path, tmp_path: Path) -> None:
    (clean,), _ = _process([cine], tmp_path / "clean")
    chosen = chosen_frames(clean)
    n_frames = clean["source"]["frames"]
    assert chosen
    assert len(chosen) <= n_frames // 4

    damaged = _corrupt(cine, tmp_path / "damaged.dcm", chosen)
    wrecked = _corrupt(cine, tmp_path / "wrecked.dcm", set(range(1, n_frames + 1, 2)))
    records, failed = _process([damaged, wrecked], tmp_path / "damaged")
    assert not failed
    by_uid = {r["source"]["sop_instance_uid"]: r for r in records}

    record = by_uid[pydicom.dcmread(damaged, stop_before_pixels=True).SOPInstanceUID]
    named = {d["frame"]: d["reason"] for d in record["source"]["frames_damaged"]}
    assert set(named) == chosen
    assert all("JPEG" in reason for reason in named.values())
    assert record["assessment"]["assessable"]
    listed = ", ".join(map(str, sorted(chosen)))  # what lus-pacs status says of it
    expected = f"{len(chosen)} damaged frame(s) left out: {listed}"
    assert record_notes(json.dumps(record)) == [expected]
    again = chosen_frames(record)
    assert again
    assert not again & chosen, (again, chosen)
    assert not set(record["b_lines"]["frames"]) & chosen  # no B-line frame is a damaged one
    # The SR says how many frames were damaged, and which, and stays valid.
    (sr,) = [o for o in record["outputs"] if o["kind"] == "sr"]
    path = tmp_path / "damaged" / "results" / sr["path"]
    assert dciodvfy_errors(path) == []
    text = str(pydicom.dcmread(path))
    assert "Frames damaged in the source" in text
    scored = [  # nor is one counted among the frames of a severity score
        frame
        for name in codes.FRAMES_WITH_SCORE
        for item in tree.named(pydicom.dcmread(path), name)
        for image in item.ContentSequence
        if image.ValueType == "IMAGE"
        for frame in tree.frames(image)
    ]
    back = read_cine_sr(path)["severity"]["frame_scores"]
    if record["severity"].get("clip_from_measurements"):
        # The shipped bundle's clip score is the recipe's: the SR lists no frame scores.
        assert scored == []
        assert back == []
    else:
        assert scored
        assert not set(scored) & chosen
        # Read back, each frame keeps its place: the damaged ones are None (none is scored).
        assert [f + 1 for f, score in enumerate(back) if score is None] == sorted(
            f for f in chosen if f <= len(back)
        )
        assert back[-1] is not None or n_frames in chosen

    record = by_uid[pydicom.dcmread(wrecked, stop_before_pixels=True).SOPInstanceUID]
    assert len(record["source"]["frames_damaged"]) == (n_frames + 1) // 2
    assert not record["assessment"]["assessable"]
    assert "damaged_frames" in record["assessment"]["reasons"]
    assert "b_lines" not in record
    assert "severity" not in record


def test_a_file_that_fails_is_recorded_and_the_next_is_processed(
    cine: Path, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(cine)
    n = int(ds.NumberOfFrames)
    over = tmp_path / "over.dcm"
    _copy(cine, over, NumberOfFrames=n + 5)  # case 4: the reason was empty
    not_dicom = tmp_path / "notes.dcm"
    not_dicom.write_bytes(b"not a DICOM file at all" * 10)
    under = tmp_path / "under.dcm"
    _copy(cine, under, NumberOfFrames=n - 5)  # case 3: a traceback ended the run
    odd_time = tmp_path / "odd-time.dcm"
    _copy(cine, odd_time, StudyTime="11:25:01", ContentTime="11:25:01")  # case 3
    retired = tmp_path / "retired-us.dcm"
    _copy(cine, retired, SOPClassUID="1.2.840.10008.5.1.4.1.1.6")  # case 3
    palette = Path(str(get_testdata_file("OBXXXX1A_2frame.dcm")))  # case 3
    path_uid = tmp_path / "path-uid.dcm"  # its results' folder would be /1.2.3
    _copy(cine, path_uid, StudyInstanceUID="/1.2.3")
    worklist = tmp_path / "worklist.dcm"  # values the encoders refused: every object failed
    _copy(
        cine,
        worklist,
        SpecificCharacterSet=["", "ISO 2022 IR 87"],  # the standard form for Japanese
        PatientSex="U",
        StudyDate="2026.01.05",  # ACR-NEMA's form
    )
    # One value where the standard allows one, given several: every object, and the study
    # summary, failed ("Invalid type for a person name"); so did a source without Modality.
    names = tmp_path / "names.dcm"
    _copy(cine, names, PatientName=["Doe^John", "Smith^J"], StudyDate=["20260105", "20260106"])
    no_modality = tmp_path / "no-modality.dcm"
    without = _copy(cine, no_modality)
    del without.Modality
    without.save_as(no_modality, enforce_file_format=True)
    files = [over, not_dicom, under, odd_time, retired, palette, path_uid, worklist, names]
    files += [no_modality, cine]

    records, failed = _process(files, tmp_path / "run")

    reasons = {Path(f["file"]).name: f for f in failed}
    assert set(reasons) == {"over.dcm", "notes.dcm", "path-uid.dcm"}, failed
    assert "StudyInstanceUID '/1.2.3' not a valid UID" in reasons["path-uid.dcm"]["reason"]
    assert reasons["over.dcm"]["stage"] == "decode"
    assert f"NumberOfFrames is {n + 5}" in reasons["over.dcm"]["reason"]
    assert reasons["notes.dcm"]["stage"] == "read"
    assert reasons["notes.dcm"]["reason"].strip()
    # Every other file has its record (`process` takes the files in name order), the good
    # cine's with every object.
    assert len(records) == len(files) - 3
    good = next(r for r in records if r["source"]["sop_instance_uid"] == ds.SOPInstanceUID)
    assert {o["kind"] for o in good["outputs"]} == {"sr", "kos", "seg", "pr"}
    assert "outputs_failed" not in good
    assert next(r for r in records if r["source"]["frames"] == n - 5)
    # Dates and times in scanner style are repaired, a retired class encoded as its current
    # one (the references keep the source's own class): every object made and valid.
    for name, copy in (
        ("odd-time", odd_time),
        ("retired", retired),
        ("worklist", worklist),
        ("names", names),
        ("no-modality", no_modality),
    ):
        uid = pydicom.dcmread(copy, stop_before_pixels=True).SOPInstanceUID
        record = next(r for r in records if r["source"]["sop_instance_uid"] == uid)
        assert "outputs_failed" not in record, (name, record["outputs_failed"])
        (sr,) = [o for o in record["outputs"] if o["kind"] == "sr"]
        path = tmp_path / "run" / "results" / sr["path"]
        assert dciodvfy_errors(path) == [], name
        if name == "retired":
            assert "1.2.840.10008.5.1.4.1.1.6\n" in _referenced_classes(pydicom.dcmread(path))
        if name == "worklist":
            made = pydicom.dcmread(path)
            assert list(made.SpecificCharacterSet) == ["ISO 2022 IR 6", "ISO 2022 IR 87"]
            assert (made.PatientSex, made.StudyDate) == ("", "20260105")
        if name == "names":
            made = pydicom.dcmread(path)
            assert (str(made.PatientName), made.StudyDate) == ("Doe^John", "20260105")
    # A palette-colour source has no presentation state (none fits it); its other objects are
    # made, and the record says why the presentation state is missing.
    record = next(r for r in records if r["source"]["sop_instance_uid"].startswith("1.3.46."))
    assert {o["kind"] for o in record["outputs"]} >= {"sr", "kos"}
    assert [m["kind"] for m in record["outputs_failed"]] == ["pr"]
    assert "three samples per pixel" in record["outputs_failed"][0]["reason"]


def _referenced_classes(ds: pydicom.Dataset) -> str:
    """Every Referenced SOP Class UID in ``ds``, one a line."""
    found = []
    stack = [ds]
    while stack:
        item = stack.pop()
        if "ReferencedSOPClassUID" in item:
            found.append(str(item.ReferencedSOPClassUID))
        stack.extend(child for e in item if e.VR == "SQ" for child in e.value)
    return "".join(f"{uid}\n" for uid in found)


def _still(source: Path, out: Path, frames: int, *, single_frame_class: bool = False) -> Path:
    """The first ``frames`` frames of a JPEG cine as another instance; with
    ``single_frame_class``, one frame as a US Image (no Number of Frames)."""
    ds = _copy(source, out)
    encoded = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    ds.PixelData = encapsulate(encoded[:frames])
    ds.NumberOfFrames = frames
    if single_frame_class:
        ds.SOPClassUID = pydicom.uid.UltrasoundImageStorage
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        for keyword in ("NumberOfFrames", "FrameIncrementPointer", "FrameTime", "CineRate"):
            if keyword in ds:
                delattr(ds, keyword)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_still_images_get_no_loop_finding_and_the_frame_models_still_run(
    cine: Path, tmp_path: Path
) -> None:
    files = [
        _still(cine, tmp_path / "a-one-frame.dcm", 1),
        _still(cine, tmp_path / "b-three-frames.dcm", 3),
        _still(cine, tmp_path / "c-us-image.dcm", 1, single_frame_class=True),
    ]
    records, failed = _process(files, tmp_path / "run")
    assert failed == []
    assert len(records) == len(files)
    for record in records:
        assert record["assessment"]["reasons"] == ["still_image"], record["assessment"]
        # The models that read a loop give nothing (issue 19, case 6: B-lines p=0.999 before)
        for family in ("b_lines", "consolidation", "severity"):
            assert family not in record, family
        # ... those that read single frames still run.
        assert record["segmentation"]["frames"], record
        assert 1 <= record["segmentation"]["frames"][0] <= record["source"]["frames"]
        assert record["quality"]["frame_scores"]
        (sr,) = [o for o in record["outputs"] if o["kind"] == "sr"]
        path = tmp_path / "run" / "results" / sr["path"]
        text = path.read_bytes()  # the SR names the reason
        assert b"LUS084" in text
        assert b"the loop models not run" in text
        assert dciodvfy_errors(path) == []


def test_the_limits_on_bytes_frames_and_pixels_refuse_naming_the_limit(
    cine: Path, tmp_path: Path
) -> None:
    ds = pydicom.dcmread(cine, stop_before_pixels=True)
    frames, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    limits = {  # the cine itself is within every limit, just
        "max_instance_bytes": cine.stat().st_size + 1000,
        "max_cine_frames": frames,
        "max_cine_pixels": frames * rows * cols,
    }
    # Each copy is over one limit by a little, in one attribute.
    _copy(cine, tmp_path / "big.dcm", ImageComments="x" * 2000)
    _copy(cine, tmp_path / "long.dcm", NumberOfFrames=frames + 1)
    _copy(cine, tmp_path / "wide.dcm", Rows=rows + 1)
    settings = "".join(f"{limit} = {value}\n" for limit, value in limits.items())
    files = [cine, *(tmp_path / f"{n}.dcm" for n in ("big", "long", "wide"))]
    records, failed = _process(files, tmp_path / "run", settings + CONFIG)
    assert [r["source"]["sop_instance_uid"] for r in records] == [ds.SOPInstanceUID]
    reasons = {Path(f["file"]).stem: f["reason"] for f in failed}
    for (limit, value), name in zip(limits.items(), ("big", "long", "wide"), strict=True):
        assert f"over the limit of {value}" in reasons[name], reasons
        assert f"({limit})" in reasons[name], reasons


def test_a_frame_with_no_echo_is_never_chosen_and_a_frozen_loop_is_a_still_image(
    cine: Path, tmp_path: Path
) -> None:
    """A black frame (the probe lifted) in a lung cine was its B-line key frame, its severity
    top frame, its best frame and its segmented frame: the only frame its result objects
    referenced. One image sent as a loop of 30 got the loop findings (B-lines, severity)
    that the same image sent alone is refused as a still image."""
    ds = pydicom.dcmread(cine)
    frames = ds.pixel_array
    frames = frames[..., 0] if frames.ndim == 4 else frames
    black = frames.copy()
    black[[0, 14]] = 0  # the first frame and one in the middle
    black[14, 5:9, 5:60] = 200  # burned-in text survives on a black frame
    frozen = np.repeat(frames[:1], 30, axis=0)
    files = [
        write_cine(tmp_path / "black.dcm", black, "jpeg"),
        write_cine(tmp_path / "frozen.dcm", frozen, "jpeg"),
    ]
    (blank, still), failed = _process(files, tmp_path / "out")
    assert not failed
    assert blank["assessment"]["assessable"]
    chosen = chosen_frames(blank)
    assert chosen
    assert not chosen & {1, 15}, chosen
    assert not set(blank["b_lines"]["frames"]) & {1, 15}
    # Nor is one counted among the frames of a severity score in the SR (a review found them
    # there after they were left out of every reading).
    (sr,) = [o for o in blank["outputs"] if o["kind"] == "sr"]
    scored = [
        frame
        for name in codes.FRAMES_WITH_SCORE
        for item in tree.named(pydicom.dcmread(tmp_path / "out" / "results" / sr["path"]), name)
        for image in item.ContentSequence
        if image.ValueType == "IMAGE"
        for frame in tree.frames(image)
    ]
    # (The shipped bundle's clip score is the recipe's: the SR lists no frame scores at all.)
    assert bool(scored) != bool(blank["severity"].get("clip_from_measurements"))
    assert not set(scored) & {1, 15}, scored
    assert not still["assessment"]["assessable"]
    assert still["assessment"]["reasons"] == ["still_image"]
    assert "b_lines" not in still
    assert "severity" not in still


def test_a_cine_a_few_pixels_high_or_wide_still_gets_its_presentation_state(
    cine: Path, tmp_path: Path
) -> None:
    """The research notice's box was placed at Rows - 24 and the labels' right edge clamped to
    Columns - 1: a cine 20 pixels high or 3 wide got no presentation state (highdicom refused
    the box), so its viewer showed no notice that it is not assessable."""
    import cv2

    frames = pydicom.dcmread(cine).pixel_array
    frames = frames[..., 0] if frames.ndim == 4 else frames
    files = [
        write_cine(
            tmp_path / f"{h}x{w}.dcm",
            np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]),
            "rle",
        )
        for h, w in ((20, 200), (40, 3))
    ]
    records, failed = _process(files, tmp_path / "out")
    assert not failed
    for record in records:
        assert not record.get("outputs_failed"), record["outputs_failed"]
        (pr,) = [o for o in record["outputs"] if o["kind"] == "pr"]
        assert dciodvfy_errors(tmp_path / "out" / "results" / pr["path"]) == []


@pytest.mark.parametrize(
    ("character_set", "name"),
    [
        (["", "ISO 2022 IR 149"], "Hong^Gildong=\ud64d^\uae38\ub3d9"),  # Korean
        ("ISO_IR 100", "M\u00fcller^J\u00fcrgen"),  # Latin-1
        # A term DICOM does not define (pydicom reads it by guessing): results in UTF-8; it was
        # written back, and every result failed dciodvfy.
        ("ISO-8859-1", "M\u00fcller^J\u00fcrgen"),
    ],
    ids=["korean", "latin1", "misspelt"],
)
def test_a_cine_in_any_character_set_gets_its_results_in_it(
    cine: Path, tmp_path: Path, character_set: str | list[str], name: str
) -> None:
    """highdicom refuses terms that are valid DICOM (Korean ISO 2022 IR 149, Chinese ISO 2022
    IR 58, which pydicom cannot write back): every result object of such a cine, and its study
    summary, failed. The results are made in UTF-8 and written in the source's own set: the
    names read as the source's."""
    source = tmp_path / "source.dcm"
    _copy(cine, source, SpecificCharacterSet=character_set, PatientName=name)
    written = pydicom.dcmread(source, stop_before_pixels=True)
    assert str(written.PatientName) == name
    records, failed = _process([source], tmp_path / "run")
    assert failed == []
    (record,) = records
    assert "outputs_failed" not in record, record["outputs_failed"]
    results = sorted((tmp_path / "run" / "results").rglob("*.dcm"))
    assert {path.name.split("-")[0] for path in results} == {"sr", "kos", "seg", "pr"}
    # The study summary, made as the node makes it.
    studies = (tmp_path / "run" / "results" / "studies.jsonl").read_text().splitlines()
    _, summary = encode_summary(StudySummary.loads(studies[0]), [written], "models")
    summary.save_as(tmp_path / "summary.dcm", enforce_file_format=True)
    results.append(tmp_path / "summary.dcm")
    # The standard form of ISO 2022 (an empty first value) is written as the encoders take it.
    expected = (
        character_set if isinstance(character_set, str) else ["ISO 2022 IR 6", *character_set[1:]]
    )
    if expected == "ISO-8859-1":
        expected = "ISO_IR 192"
    for path in results:
        made = pydicom.dcmread(path, stop_before_pixels=True)
        assert made.SpecificCharacterSet == expected, path.name
        assert str(made.PatientName) == name, path.name
        assert dciodvfy_errors(path) == [], path.name


def test_results_are_dated_in_the_time_zone_their_cine_declares(
    cine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node on UTC (a container's default) dated a Tokyo exam's results in UTC without a
    word: a morning exam's summary carried the day before, earlier than the study it
    reports. Their own moments are in the zone the cine declares, and that zone declared."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        source = tmp_path / "source.dcm"
        written = _copy(cine, source, TimezoneOffsetFromUTC="+0900")
        _, failed = _process([source], tmp_path / "run")
        assert failed == []
        results = sorted((tmp_path / "run" / "results").rglob("*.dcm"))
        studies = (tmp_path / "run" / "results" / "studies.jsonl").read_text().splitlines()
        _, summary = encode_summary(StudySummary.loads(studies[0]), [written], "models")
        summary.save_as(tmp_path / "summary.dcm", enforce_file_format=True)
        results.append(tmp_path / "summary.dcm")
        tokyo = dt.timezone(dt.timedelta(hours=9))
        for path in results:
            made = pydicom.dcmread(path, stop_before_pixels=True)
            assert made.TimezoneOffsetFromUTC == "+0900", path.name
            assert made.StudyDate == written.StudyDate, path.name
            moments = ("InstanceCreation", "Content", "PresentationCreation")
            dated = [m for m in moments if f"{m}Date" in made]
            assert "InstanceCreation" in dated, path.name
            for moment in dated:
                stamp = made[f"{moment}Date"].value + made[f"{moment}Time"].value
                when = dt.datetime.strptime(stamp.split(".")[0], "%Y%m%d%H%M%S")
                late = dt.datetime.now(dt.UTC) - when.replace(tzinfo=tokyo)
                assert dt.timedelta(0) <= late < dt.timedelta(minutes=10), (path.name, moment)
            # highdicom's record of this software's contribution (a DT of this clock) too.
            ours = made.ContributingEquipmentSequence[-1].ContributionDateTime
            when = dt.datetime.strptime(ours.split(".")[0], "%Y%m%d%H%M%S")
            late = dt.datetime.now(dt.UTC) - when.replace(tzinfo=tokyo)
            assert dt.timedelta(0) <= late < dt.timedelta(minutes=10), (path.name, ours)
            assert dciodvfy_errors(path) == [], path.name
    finally:
        monkeypatch.undo()
        time.tzset()
