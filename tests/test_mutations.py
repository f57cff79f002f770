"""The standing bad-input suite (issue 19): valid cines in three encodings (JPEG Baseline, RLE
Lossless, native RGB) mutated in every way scanners and archives have been seen to get wrong,
then all of them through one ``lus-pacs process`` run.

For every mutant: a record, or a failure line naming the stage with a non-empty reason; no
traceback; the files after it processed (a good cine comes last); a frame the decoder could read
only in part is named in the record and never chosen; a mutation that damages frames is
either refused or has its damaged frames named.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    generate_uid,
)

from tests.tools import chosen_frames

FRAMES = 8
"""Frames of each base cine: enough for every model, few enough to keep the run short."""
CONFIG = (
    'models = ["b_lines", "severity", "key_frames", "assessment"]\noutput_kinds = ["sr", "kos"]\n'
)
"""The models that choose frames and gate on assessment, and the objects that name them."""
TIMEOUT_S = 900

Mutation = Callable[[Dataset], Dataset | bytes]
MUTATIONS: dict[str, tuple[tuple[str, ...], Mutation]] = {}
"""Each kind: the base encodings it applies to, and the mutation (a data set to save, or the
bytes of a file)."""
DAMAGING = {
    "entropy_corrupt",
    "frame_truncated",
    "frame_empty",
    "rle_header_corrupt",
    "jpeg_marker_missing",
}
"""Kinds that damage frames: their cines are refused or have those frames named."""
READ = {
    "trailing_bytes",
    "pixels_long",
    "monochrome1",
    "sixteen_bit",
    "signed_pixels",
    "planar_configuration",
    "frames_absent",
    "frames_zero",
    "timing_absent",
    "frame_time_zero",
    "frame_time_negative",
    "frame_time_vector_short",
    "retired_multiframe_class",
    "retired_image_class",
    "dates_malformed",
    "times_malformed",
    "datetime_malformed",
    "regions_degenerate",
    "charset_wrong",
}
"""Kinds whose pixels are all there, in an odd but readable form or under a faulty header: they
are read, every frame, and every object is made."""
ALL = ("jpeg", "rle", "native")
ENCAPSULATED = ("jpeg", "rle")


def mutation(*bases: str) -> Callable[[Mutation], Mutation]:
    def register(function: Mutation) -> Mutation:
        MUTATIONS[function.__name__] = (bases, function)
        return function

    return register


def _encoded(ds: Dataset) -> list[bytes]:
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))


def _set_encoded(ds: Dataset, frames: list[bytes], offsets: list[int] | None = None) -> Dataset:
    """``frames`` as encapsulated Pixel Data, one fragment each (empty ones too), with a Basic
    Offset Table of ``offsets`` (empty when None)."""
    table = b"".join(o.to_bytes(4, "little") for o in offsets or ())
    items = [table, *(f + b"\x00" * (len(f) % 2) for f in frames)]
    ds.PixelData = b"".join(_ITEM + len(i).to_bytes(4, "little") + i for i in items)
    return ds


_ITEM = b"\xfe\xff\x00\xe0"
"""The tag of an item, (FFFE,E000), little endian."""


# Encapsulated frames


@mutation("jpeg")
def entropy_corrupt(ds: Dataset) -> Dataset:
    frames = _encoded(ds)
    for i in (1, 4):
        frame = bytearray(frames[i])
        middle = len(frame) // 2
        frame[middle:-2] = bytes(j % 251 for j in range(len(frame) - 2 - middle))
        frames[i] = bytes(frame)
    return _set_encoded(ds, frames)


@mutation(*ENCAPSULATED)
def frame_truncated(ds: Dataset) -> Dataset:
    frames = _encoded(ds)
    frames[2] = frames[2][: len(frames[2]) * 2 // 5]
    return _set_encoded(ds, frames)


@mutation(*ENCAPSULATED)
def frame_empty(ds: Dataset) -> Dataset:
    frames = _encoded(ds)
    frames[3] = b""
    return _set_encoded(ds, frames)


@mutation("jpeg")
def trailing_bytes(ds: Dataset) -> Dataset:
    return _set_encoded(ds, [f + b"\x00\x00" for f in _encoded(ds)])


@mutation("jpeg")
def jpeg_marker_missing(ds: Dataset) -> Dataset:
    frames = _encoded(ds)
    frames[1] = b"\x00\x00" + frames[1][2:]
    return _set_encoded(ds, frames)


@mutation("rle")
def rle_header_corrupt(ds: Dataset) -> Dataset:
    frames = _encoded(ds)
    frame = bytearray(frames[1])
    frame[0:4] = (15).to_bytes(4, "little")  # 15 segments claimed
    frame[8:12] = (len(frame) + 999).to_bytes(4, "little")  # the second one past the end
    frames[1] = bytes(frame)
    return _set_encoded(ds, frames)


@mutation(*ENCAPSULATED)
def fragments_fewer_than_frames(ds: Dataset) -> Dataset:
    return _set_encoded(ds, _encoded(ds)[:-2])


@mutation(*ENCAPSULATED)
def offset_table_wrong(ds: Dataset) -> Dataset:
    frames = _encoded(ds)
    return _set_encoded(ds, frames, offsets=[10**6 + 8 * i for i in range(len(frames))])


# Native pixels


def _grey(ds: Dataset) -> np.ndarray[Any, np.dtype[np.uint8]]:
    rgb = ds.pixel_array
    return np.asarray(rgb.mean(axis=-1), np.uint8)


def _as_grey(ds: Dataset, pixels: np.ndarray[Any, Any], photometric: str) -> Dataset:
    ds.PixelData = pixels.tobytes()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    return ds


@mutation("native")
def pixels_short(ds: Dataset) -> Dataset:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) - int(ds.Rows) * int(ds.Columns)]
    return ds


@mutation("native")
def pixels_long(ds: Dataset) -> Dataset:
    ds.PixelData = ds.PixelData + b"\x00" * 4096
    return ds


@mutation("native")
def monochrome1(ds: Dataset) -> Dataset:
    return _as_grey(ds, 255 - _grey(ds), "MONOCHROME1")


@mutation("native")
def sixteen_bit(ds: Dataset) -> Dataset:
    ds = _as_grey(ds, _grey(ds).astype(np.uint16) * 16, "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    return ds


@mutation("native")
def signed_pixels(ds: Dataset) -> Dataset:
    ds = _as_grey(ds, (_grey(ds).astype(np.int16) - 128).astype(np.int8), "MONOCHROME2")
    ds.PixelRepresentation = 1
    return ds


@mutation("native")
def planar_configuration(ds: Dataset) -> Dataset:
    planes = ds.pixel_array.transpose(0, 3, 1, 2)  # frame, sample, row, column
    ds.PixelData = np.ascontiguousarray(planes).tobytes()
    ds.PlanarConfiguration = 1
    return ds


@mutation("native")
def ybr_label_on_rgb(ds: Dataset) -> Dataset:
    ds.PhotometricInterpretation = "YBR_FULL"
    return ds


@mutation("native")
def bits_stored_over_allocated(ds: Dataset) -> Dataset:
    ds.BitsStored, ds.HighBit = 12, 11
    return ds


@mutation("native")
def samples_two(ds: Dataset) -> Dataset:
    ds.SamplesPerPixel = 2
    return ds


@mutation("native")
def palette_without_lut(ds: Dataset) -> Dataset:
    return _as_grey(ds, _grey(ds), "PALETTE COLOR")


# Every encoding: the header


@mutation(*ALL)
def frames_over(ds: Dataset) -> Dataset:
    ds.NumberOfFrames = FRAMES + 5
    return ds


@mutation(*ALL)
def frames_under(ds: Dataset) -> Dataset:
    ds.NumberOfFrames = FRAMES - 3
    return ds


@mutation(*ALL)
def frames_zero(ds: Dataset) -> Dataset:
    ds.NumberOfFrames = 0
    return ds


@mutation(*ALL)
def frames_absent(ds: Dataset) -> Dataset:
    del ds.NumberOfFrames
    return ds


@mutation(*ALL)
def rows_mismatch(ds: Dataset) -> Dataset:
    ds.Rows = int(ds.Rows) + 16
    return ds


@mutation(*ALL)
def columns_zero(ds: Dataset) -> Dataset:
    ds.Columns = 0
    return ds


@mutation(*ALL)
def huge_dimensions(ds: Dataset) -> Dataset:
    ds.Rows, ds.Columns, ds.NumberOfFrames = 60000, 60000, 5000
    return ds


@mutation(*ALL)
def huge_within_the_pixel_limit(ds: Dataset) -> Dataset:
    ds.Rows, ds.Columns, ds.NumberOfFrames = 20000, 20000, 3
    return ds


@mutation(*ALL)
def photometric_unknown(ds: Dataset) -> Dataset:
    ds.PhotometricInterpretation = "FOO"
    return ds


@mutation(*ALL)
def timing_absent(ds: Dataset) -> Dataset:
    for keyword in (
        "FrameTime",
        "CineRate",
        "FrameTimeVector",
        "RecommendedDisplayFrameRate",
        "FrameIncrementPointer",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


@mutation(*ALL)
def frame_time_zero(ds: Dataset) -> Dataset:
    ds.FrameTime = "0"
    return ds


@mutation(*ALL)
def frame_time_negative(ds: Dataset) -> Dataset:
    ds.FrameTime = "-33"
    return ds


@mutation(*ALL)
def frame_time_vector_short(ds: Dataset) -> Dataset:
    ds.FrameTimeVector = ["0", "33"]
    ds.FrameIncrementPointer = 0x00181065
    return ds


@mutation(*ALL)
def retired_multiframe_class(ds: Dataset) -> Dataset:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(
        "1.2.840.10008.5.1.4.1.1.3"
    )
    return ds


@mutation(*ALL)
def retired_image_class(ds: Dataset) -> Dataset:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(
        "1.2.840.10008.5.1.4.1.1.6"
    )
    return ds


@mutation(*ALL)
def dates_malformed(ds: Dataset) -> Dataset:
    ds.StudyDate, ds.ContentDate, ds.PatientBirthDate = "2024-13-45", "20241345", "1/2/1960"
    return ds


@mutation(*ALL)
def times_malformed(ds: Dataset) -> Dataset:
    ds.StudyTime, ds.ContentTime = "25:61:00", "9"
    return ds


@mutation(*ALL)
def datetime_malformed(ds: Dataset) -> Dataset:
    ds.AcquisitionDateTime = "yesterday"
    return ds


@mutation(*ALL)
def study_uid_absent(ds: Dataset) -> Dataset:
    del ds.StudyInstanceUID
    return ds


@mutation(*ALL)
def series_uid_absent(ds: Dataset) -> Dataset:
    del ds.SeriesInstanceUID
    return ds


@mutation(*ALL)
def sop_uid_absent(ds: Dataset) -> Dataset:
    del ds.SOPInstanceUID
    return ds


@mutation(*ALL)
def pixel_data_absent(ds: Dataset) -> Dataset:
    del ds.PixelData
    return ds


@mutation(*ALL)
def transfer_syntax_mislabelled(ds: Dataset) -> bytes:
    """Native pixels labelled RLE, JPEG labelled JPEG 2000, RLE labelled native."""
    old = str(ds.file_meta.TransferSyntaxUID)
    new = {
        str(ExplicitVRLittleEndian): str(RLELossless),
        str(JPEGBaseline8Bit): "1.2.840.10008.1.2.4.90",
        str(RLELossless): str(ExplicitVRLittleEndian),
    }[old]
    return _relabel(_file_bytes(ds), old, new)


@mutation(*ALL)
def transfer_syntax_unknown(ds: Dataset) -> bytes:
    old = str(ds.file_meta.TransferSyntaxUID)
    return _relabel(_file_bytes(ds), old, ("1.2.999." + "9" * 64)[: len(old)])


def _relabel(data: bytes, old: str, new: str) -> bytes:
    """The file's transfer syntax UID ``old`` (in its meta header) overwritten by ``new``, of
    the same padded length: pydicom itself refuses to write such a file."""

    def padded(uid: str) -> bytes:
        return uid.encode() + b"\x00" * (len(uid) % 2)

    assert len(padded(old)) == len(padded(new)), (old, new)
    return data.replace(padded(old), padded(new), 1)


@mutation(*ALL)
def regions_degenerate(ds: Dataset) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.RegionDataType = 1
    region.RegionFlags = 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 600, 400
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 10, 10
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3
    region.PhysicalDeltaX = region.PhysicalDeltaY = 0.0
    ds.SequenceOfUltrasoundRegions = [region]
    return ds


@mutation(*ALL)
def charset_wrong(ds: Dataset) -> Dataset:
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds["PatientName"].value = b"M\xfcller^J\xf6rg"  # Latin-1 bytes in a UTF-8 data set
    return ds


@mutation(*ALL)
def cut_mid_element(ds: Dataset) -> bytes:
    whole = _file_bytes(ds)
    return whole[: len(whole) * 7 // 10]


@mutation("jpeg")
def not_dicom(ds: Dataset) -> bytes:
    return bytes(np.random.default_rng(7).integers(0, 256, 20000, dtype=np.uint8))


def _file_bytes(ds: Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _bases(source: Path) -> dict[str, Dataset]:
    """The base cines: ``FRAMES`` frames of a simulated JPEG cine, the same as native RGB, and
    as RLE Lossless."""
    jpeg = pydicom.dcmread(source)
    _set_encoded(jpeg, _encoded(jpeg)[:FRAMES])
    jpeg.NumberOfFrames = FRAMES
    native = pydicom.dcmread(source)
    rgb = native.pixel_array[:FRAMES]  # decoded to RGB
    native.PixelData = np.ascontiguousarray(rgb).tobytes()
    native.NumberOfFrames = FRAMES
    native.PhotometricInterpretation = "RGB"
    native.PlanarConfiguration = 0
    native.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rle = pydicom.dcmread(source)
    rle.PixelData = native.PixelData
    rle.NumberOfFrames = FRAMES
    rle.PhotometricInterpretation = "RGB"
    rle.PlanarConfiguration = 0
    rle.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rle.compress(RLELossless)
    return {"jpeg": jpeg, "rle": rle, "native": native}


@pytest.fixture(scope="module")
def run(synth_exams: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every mutant of every base, and a good cine last, through one ``lus-pacs process``."""
    folder = tmp_path_factory.mktemp("mutants")
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    source = sorted(exam.glob("*.dcm"))[0]
    mutants: dict[str, tuple[str, str]] = {}  # file name -> (kind, SOP Instance UID)
    for base, original in _bases(source).items():
        for kind, (bases, mutate) in MUTATIONS.items():
            if base not in bases:
                continue
            ds = pydicom.dcmread(_file_bytes_path(original, folder))
            uid = generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            mutated = mutate(ds)
            name = f"{kind}-{base}.dcm"
            data = mutated if isinstance(mutated, bytes) else _file_bytes(mutated)
            (folder / name).write_bytes(data)
            mutants[name] = (kind, uid)
    good = pydicom.dcmread(source)
    good.SOPInstanceUID = good.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    good.save_as(folder / "zz-good.dcm", enforce_file_format=True)
    out = folder / "results"
    config = folder / "lus-pacs.toml"
    config.write_text(CONFIG)
    exe = Path(sys.executable).with_name("lus-pacs")
    files = sorted(folder.glob("*.dcm"))
    done = subprocess.run(
        [str(exe), "process", *map(str, files), "--out", str(out), "--config", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    records = [json.loads(x) for x in (out / "summary.jsonl").read_text().splitlines()]
    failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    return {
        "done": done,
        "mutants": mutants,
        "good": str(good.SOPInstanceUID),
        "records": {r["source"]["sop_instance_uid"]: r for r in records},
        "failed": {Path(f["file"]).name: f for f in failed},
    }


def _file_bytes_path(ds: Dataset, folder: Path) -> Path:
    """``ds`` saved once under ``folder``, so each mutant starts from a fresh copy."""
    path = folder / "bases" / f"{ds.file_meta.TransferSyntaxUID}.dcm"
    path.parent.mkdir(exist_ok=True)
    if not path.exists():
        ds.save_as(path, enforce_file_format=True)
    return path


def test_there_are_at_least_thirty_kinds_over_three_encodings() -> None:
    assert len(MUTATIONS) >= 30
    covered = {base for bases, _ in MUTATIONS.values() for base in bases}
    assert covered == {"jpeg", "rle", "native"}


def test_no_traceback_and_the_good_cine_after_them_is_processed(run: dict[str, Any]) -> None:
    done = run["done"]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    assert done.returncode == 1  # some were refused, and the exit status says so
    assert run["good"] in run["records"]
    assert len(run["records"][run["good"]]["outputs"]) == 2


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_each_mutant_gets_a_record_or_a_reason(run: dict[str, Any], kind: str) -> None:
    for name, (mutant_kind, uid) in run["mutants"].items():
        if mutant_kind != kind:
            continue
        failure = run["failed"].get(name)
        record = run["records"].get(uid)
        assert (failure is None) != (record is None), (name, failure, record)
        if failure is not None:
            assert failure["stage"], failure
            assert failure["reason"].strip(), failure
            continue
        damaged = {d["frame"] for d in record["source"].get("frames_damaged") or ()}
        assert not damaged & chosen_frames(record), (name, damaged, record["key_frames"])
        if kind in DAMAGING:
            assert damaged, (name, "damaged frames not named")
        if kind in READ:
            assert record["source"]["frames"] == FRAMES, name
            assert "outputs_failed" not in record, (name, record["outputs_failed"])
    if kind in READ:
        assert not any(
            name in run["failed"] for name, (k, _) in run["mutants"].items() if k == kind
        ), [run["failed"][n] for n in run["failed"] if n.startswith(kind)]
