"""Reading cines: every ultrasound file shipped with pydicom and pydicom-data, and our own."""

from __future__ import annotations

import io
import threading
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import simplejpeg
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from lus_pacs.domain import RegionSource
from lus_pacs.errors import UnreadableImageError
from lus_pacs.imaging.decode import (
    colour_frames,
    coloured_pixels,
    decode_dataset,
    inflates_past,
    luminance,
    read_cine,
    read_header,
)
from lus_pacs.imaging.writer import CineSyntax, UltrasoundRegion
from tests.tools import write_cine

_US_CLASSES = ("1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3")


def _shipped_us_files() -> list[Path]:
    """Every file of pydicom's test files and pydicom-data whose modality or class is US."""
    folders = {
        Path(pydicom.data.__file__).parent / "test_files",
        Path(str(get_testdata_file("color3d_jpeg_baseline.dcm"))).parent,
    }
    found = []
    for folder in sorted(folders):
        for path in sorted(folder.rglob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (pydicom.errors.InvalidDicomError, OSError, EOFError):
                continue
            if ds.get("Modality") == "US" or str(ds.get("SOPClassUID", "")).startswith(_US_CLASSES):
                found.append(path)
    return found


SHIPPED = _shipped_us_files()


def _reference_luminance(path: Path) -> np.ndarray:
    """Independent of the reader: pydicom's RGB (palette applied), weighted to luma."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    palette = ds.PhotometricInterpretation == "PALETTE COLOR"
    if palette:
        pixels = pydicom.pixels.apply_color_lut(pixels, ds)
        pixels = pixels / 257.0 if pixels.max() > 255 else pixels
    if palette or ds.SamplesPerPixel == 3:
        pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    grey = np.rint(pixels).astype(np.uint8)
    return grey.reshape(int(ds.get("NumberOfFrames") or 1), ds.Rows, ds.Columns)


def test_the_shipped_files_cover_every_kind() -> None:
    names = {p.name for p in SHIPPED}
    for expected in (
        "color3d_jpeg_baseline.dcm",  # 120-frame JPEG Baseline cine
        "OBXXXX1A.dcm",  # palette colour
        "OBXXXX1A_rle_2frame.dcm",  # RLE
        "OBXXXX1A_expb.dcm",  # big endian
        "US1_J2KI.dcm",  # JPEG 2000
        "JPGLosslessP14SV1_1s_1f_8b.dcm",  # JPEG lossless
        "gdcm-US-ALOKA-16.dcm",  # 16-bit palette
    ):
        assert expected in names
    assert len(SHIPPED) >= 20


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_us_file_is_read_or_refused_with_a_reason(path: Path) -> None:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    refusal: UnreadableImageError | None = None
    try:
        cine = read_cine(path)
    except UnreadableImageError as exc:
        refusal = exc
    if refusal is not None:
        assert str(refusal).startswith(f"{path.name}: ")
        assert refusal.reason
        return
    rows, cols = header.Rows, header.Columns
    assert cine.frames.shape == (int(header.get("NumberOfFrames") or 1), rows, cols)
    if "FrameTime" in header:
        assert cine.timing.fps == pytest.approx(1000 / float(header.FrameTime))
    else:
        assert cine.timing.fps is None
    regions = [  # tissue regions of this image (some files hold a larger image's)
        r
        for r in header.get("SequenceOfUltrasoundRegions", [])
        if r.RegionSpatialFormat == 1
        and r.RegionDataType == 1
        and r.RegionLocationMaxX1 <= cols + 1
        and r.RegionLocationMaxY1 <= rows + 1
    ]
    if regions:
        assert cine.region.source is RegionSource.DICOM
        first = max(
            regions,
            key=lambda r: (
                (r.RegionLocationMaxX1 - r.RegionLocationMinX0)
                * (r.RegionLocationMaxY1 - r.RegionLocationMinY0)
            ),
        )
        assert (cine.region.x0, cine.region.y0) == (
            first.RegionLocationMinX0,
            first.RegionLocationMinY0,
        )
        assert cine.region.x1 == min(cols, first.RegionLocationMaxX1 + 1)
        assert cine.region.y1 == min(rows, first.RegionLocationMaxY1 + 1)
    reference = _reference_luminance(path)
    assert np.abs(reference.astype(np.int16) - cine.frames).mean() <= 2.0


def test_the_same_image_in_other_encodings_reads_the_same() -> None:
    def grey(name: str) -> np.ndarray:
        return read_cine(Path(str(get_testdata_file(name)))).frames

    little = grey("OBXXXX1A_2frame.dcm")
    np.testing.assert_array_equal(grey("OBXXXX1A_expb_2frame.dcm"), little)
    np.testing.assert_array_equal(grey("OBXXXX1A_rle_2frame.dcm"), little)
    np.testing.assert_array_equal(grey("US1_J2KR.dcm"), grey("US1_UNCR.dcm"))
    np.testing.assert_array_equal(grey("gdcm-US-ALOKA-16_big.dcm"), grey("gdcm-US-ALOKA-16.dcm"))
    assert little.mean() > 5


def test_the_120_frame_jpeg_cine() -> None:
    path = Path(str(get_testdata_file("color3d_jpeg_baseline.dcm")))
    cine = read_cine(path)
    assert cine.frames.shape == (120, 480, 640)
    assert cine.timing.fps == pytest.approx(30.0, rel=1e-3)
    assert cine.timing.source == "FrameTime"
    assert cine.region.source is RegionSource.DICOM
    assert cine.region.cm_per_pixel_x == pytest.approx(0.0510497, rel=1e-4)
    assert cine.source.sop_instance_uid == pydicom.dcmread(path).SOPInstanceUID


@pytest.mark.parametrize("syntax", list(CineSyntax))
@pytest.mark.parametrize("colour", [False, True])
def test_our_own_files_round_trip(tmp_path: Path, syntax: CineSyntax, colour: bool) -> None:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    grey = np.stack([(x * 3 + y + 20 * k) % 256 for k in range(5)]).astype(np.uint8)
    frames = np.repeat(grey[..., None], 3, axis=3) if colour else grey
    if colour:  # a tint that the luminance must weigh, not ignore
        frames = frames.copy()
        frames[..., 0] = np.clip(frames[..., 0].astype(int) + rng.integers(0, 30), 0, 255)
    region = UltrasoundRegion(4, 3, 59, 44, 0.02, 0.02)
    path = write_cine(tmp_path / "c.dcm", frames, syntax, regions=[region])
    cine = read_cine(path)
    expected = (
        np.rint(frames.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        if colour
        else frames
    )
    tolerance = 3.0 if syntax is CineSyntax.JPEG else 0.5
    assert np.abs(cine.frames.astype(np.float32) - expected).mean() <= tolerance
    assert cine.timing.fps == pytest.approx(25.0)
    assert cine.source.zone == "L3"
    assert (cine.region.x0, cine.region.y0, cine.region.x1, cine.region.y1) == (4, 3, 60, 45)
    assert cine.region.cm_per_pixel_y == pytest.approx(0.02)


def _plain_dataset(pixels: np.ndarray, photometric: str, bits: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = pydicom.uid.UltrasoundImageStorage
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16 if bits > 8 else 8
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds


def test_a_ycbcr_jpeg_labelled_rgb_reads_as_its_luminance(tmp_path: Path) -> None:
    """Scanners label YCbCr JPEG frames RGB; the stream's markers say what it holds."""
    source = Path(str(get_testdata_file("color3d_jpeg_baseline.dcm")))
    ds = pydicom.dcmread(source)
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    ds.PhotometricInterpretation = "RGB"
    ds.save_as(tmp_path / "rgb.dcm")
    labelled, truthful = read_cine(tmp_path / "rgb.dcm"), read_cine(source)
    np.testing.assert_array_equal(labelled.frames, truthful.frames)
    assert int(labelled.frames[0].min()) == 0  # black stays black


@pytest.mark.parametrize("damage", ["unreadable", "cut short"])
def test_a_damaged_frame_does_not_move_the_tissue_region_or_the_overlay(damage: str) -> None:
    """Grey or garbage where a frame's data was lost read as moving tissue over the whole image
    and hid the still overlay (the region was the whole width, the overlay mask empty)."""
    ds = pydicom.dcmread(str(get_testdata_file("color3d_jpeg_baseline.dcm")))
    del ds.SequenceOfUltrasoundRegions  # the region found from the pixels
    intact = decode_dataset(ds, "intact")
    encoded = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    first = encoded[0]
    encoded[0] = (
        b"\xff\xd8" + bytes(200) + b"\xff\xd9"
        if damage == "unreadable"
        else first[: len(first) // 3]
    )
    cine = decode_dataset(_with_frames(ds, encoded), damage)
    assert list(cine.damaged) == [1]
    found, expected = cine.region, intact.region
    edges = (
        (found.x0, found.y0, found.x1, found.y1),
        (expected.x0, expected.y0, expected.x1, expected.y1),
    )
    assert max(abs(a - b) for a, b in zip(*edges, strict=True)) <= 2, edges
    assert cine.overlay_mask is not None
    assert intact.overlay_mask is not None
    assert abs(int(cine.overlay_mask.sum()) - int(intact.overlay_mask.sum())) <= 40


def test_a_dark_frame_of_a_16_bit_palette_stays_dark() -> None:
    """A 16-bit palette whose low entries are small values: a frame that uses only those
    was judged 8-bit by its own values (200 of 65535 read as grey 200)."""
    ds = pydicom.dcmread(str(get_testdata_file("OBXXXX1A_2frame.dcm")))
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    lut = (np.arange(256, dtype=np.uint16) * 256).astype("<u2")
    lut[:10] = 200
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", lut.tobytes())
    indices = ds.pixel_array.copy()
    indices[1] = 0  # the second frame: only entry 0, 200 of 65535
    indices[0, :10, :10] = 255
    ds.PixelData = indices.tobytes()
    cine = decode_dataset(ds, "palette")
    assert int(cine.frames[1].max()) == 0
    assert int(cine.frames[0].max()) == 255  # 255 x 256: 255 in the high byte


def test_monochrome1_is_inverted_and_16_bit_scaled() -> None:
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))
    inverted = decode_dataset(_plain_dataset(ramp, "MONOCHROME1", 8), "m1")
    np.testing.assert_array_equal(inverted.frames[0], 255 - ramp)
    wide = (ramp.astype(np.uint16) * 16 + 8).astype(np.uint16)  # 12 bits stored
    scaled = decode_dataset(_plain_dataset(wide, "MONOCHROME2", 12), "m2")
    assert np.abs(scaled.frames[0].astype(int) - ramp).max() <= 1


def test_a_file_that_is_not_dicom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.dcm"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UnreadableImageError, match=r"^noise\.dcm: not a DICOM file"):
        read_cine(path)


def test_a_segmentation_is_refused_by_class() -> None:
    path = Path(str(get_testdata_file("liver.dcm")))
    with pytest.raises(UnreadableImageError, match=r"^liver\.dcm: SOP class .*66\.4 is not"):
        read_cine(path)


def test_missing_and_corrupt_pixels_are_refused(tmp_path: Path) -> None:
    ds = _plain_dataset(np.zeros((4, 4), np.uint8), "MONOCHROME2", 8)
    del ds.PixelData
    with pytest.raises(UnreadableImageError, match="no Pixel Data"):
        decode_dataset(ds, "empty")


def _textured(n: int = 4, size: int = 64) -> np.ndarray:
    """Frames with detail in every block, so that damage to any part of a JPEG frame shows."""
    rng = np.random.default_rng(7)
    return rng.integers(40, 200, size=(n, size, size), dtype=np.uint8)


def _jpeg_frames(tmp_path: Path, frames: np.ndarray) -> tuple[Dataset, list[bytes]]:
    ds = pydicom.dcmread(write_cine(tmp_path / "j.dcm", frames, CineSyntax.JPEG))
    return ds, list(generate_frames(ds.PixelData, number_of_frames=len(frames)))


def _with_frames(ds: Dataset, encoded: list[bytes], n_frames: int | None = None) -> Dataset:
    ds.PixelData = encapsulate([f + b"\x00" * (len(f) % 2) for f in encoded])
    ds.NumberOfFrames = n_frames if n_frames is not None else len(encoded)
    return ds


def test_a_jpeg_frame_cut_short_is_read_and_named_damaged(tmp_path: Path) -> None:
    ds, encoded = _jpeg_frames(tmp_path, _textured())
    encoded[2] = encoded[2][: len(encoded[2]) // 2]  # no end-of-image marker
    cine = decode_dataset(_with_frames(ds, encoded), "cut")
    assert cine.n_frames == 4
    assert list(cine.damaged) == [3]
    assert "Premature end of JPEG file" in cine.damaged[3]
    assert cine.intact().tolist() == [True, True, False, True]


def test_jpeg_frames_of_another_size_are_refused_from_their_headers_undecoded(
    tmp_path: Path,
) -> None:
    """A header of 64 x 64 over frames that are the first 3 kB of a 4096 x 4096 JPEG: before,
    each was decoded whole, leniently (16 MB a frame from 3 kB; at libjpeg's limit of 65500
    pixels a side, gigabytes), then by pydicom again, before the size was found wrong."""
    ds, _ = _jpeg_frames(tmp_path, _textured(n=8))
    large = simplejpeg.encode_jpeg(np.zeros((4096, 4096, 1), np.uint8), colorspace="GRAY")
    tracemalloc.start()
    try:
        with pytest.raises(UnreadableImageError, match=r"frame 1 is a JPEG of 4096 x 4096 pix"):
            decode_dataset(_with_frames(ds, [large[:3000]] * 8), "bomb")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4_000_000  # no frame of 16 MB was made


def test_corrupt_entropy_data_with_its_end_marker_is_named_damaged(tmp_path: Path) -> None:
    # Case 1 of issue 19: bytes inside a frame's scan overwritten, end-of-image marker intact.
    ds, encoded = _jpeg_frames(tmp_path, _textured())
    frame = bytearray(encoded[1])
    middle = len(frame) // 2
    frame[middle : middle + 64] = bytes(range(64))
    encoded[1] = bytes(frame)
    cine = decode_dataset(_with_frames(ds, encoded), "corrupt")
    assert list(cine.damaged) == [2]
    assert "Corrupt JPEG data" in cine.damaged[2]


def test_bytes_after_the_end_of_image_marker_are_ignored(tmp_path: Path) -> None:
    # Case 2 of issue 19: a vendor's two padding bytes after EOI; pydicom and OpenCV read it.
    frames = _textured()
    ds, encoded = _jpeg_frames(tmp_path, frames)
    reference = decode_dataset(pydicom.dcmread(tmp_path / "j.dcm"), "plain").frames
    padded = _with_frames(ds, [f + b"\x0d\x0a" for f in encoded])
    cine = decode_dataset(padded, "padded")
    assert not cine.damaged
    np.testing.assert_array_equal(cine.frames, reference)


def test_a_frame_count_over_the_pixel_data_is_refused_naming_both(tmp_path: Path) -> None:
    # Case 4 of issue 19: the reason was empty after the colon.
    ds, encoded = _jpeg_frames(tmp_path, _textured())
    with pytest.raises(
        UnreadableImageError, match="NumberOfFrames is 6 but the Pixel Data holds 4 JPEG frames"
    ):
        decode_dataset(_with_frames(ds, encoded, n_frames=6), "over")
    native = _plain_dataset(np.zeros((8, 8), np.uint8), "MONOCHROME2", 8)
    native.NumberOfFrames = 3
    with pytest.raises(UnreadableImageError, match=r"over: .*\S$"):
        decode_dataset(native, "over")


def test_a_frame_count_under_the_pixel_data_reads_the_declared_frames(tmp_path: Path) -> None:
    # Case 3 of issue 19: NumberOfFrames smaller than the pixels ended a run with a traceback.
    frames = _textured()
    ds, encoded = _jpeg_frames(tmp_path, frames)
    cine = decode_dataset(_with_frames(ds, encoded, n_frames=2), "under")
    assert cine.n_frames == 2
    native = _plain_dataset(frames.reshape(-1, frames.shape[-1]), "MONOCHROME2", 8)
    native.Rows, native.NumberOfFrames = frames.shape[1], 2
    cine = decode_dataset(native, "under")
    np.testing.assert_array_equal(cine.frames, frames[:2])


def test_a_jpeg_cine_of_which_no_frame_decodes_is_refused(tmp_path: Path) -> None:
    ds, encoded = _jpeg_frames(tmp_path, _textured())
    garbage = [b"\xff\xd8" + bytes(200) + b"\xff\xd9" for _ in encoded]
    with pytest.raises(UnreadableImageError, match=r"^garbage: no JPEG frame decodes: \S"):
        decode_dataset(_with_frames(ds, garbage), "garbage")


def test_a_jpeg_cine_read_from_its_file_decodes_the_same_frames(
    synth_exams: Path, tmp_path: Path
) -> None:
    exam = sorted(p for p in synth_exams.iterdir() if p.is_dir())[0]
    source = sorted(exam.glob("*.dcm"))[0]
    header, in_file = read_header(source)
    assert in_file is not None
    assert "PixelData" not in header  # the encoded frames stay in the file
    streamed = decode_dataset(header, source.name, in_file=in_file)
    whole = decode_dataset(pydicom.dcmread(source), source.name)
    assert np.array_equal(streamed.frames, whole.frames)
    assert streamed.damaged == whole.damaged == {}
    # Native pixels are read in whole, as before.
    native = tmp_path / "native.dcm"
    ds = pydicom.dcmread(source)
    ds.decompress()
    ds.save_as(native, enforce_file_format=True)
    header, in_file = read_header(native)
    assert in_file is None
    assert "PixelData" in header


def test_a_deflated_data_set_that_inflates_past_the_limit_is_refused_before_it_is_read(
    tmp_path: Path,
) -> None:
    """A 32 x 32 header over 24 MB of zeros, deflated to a few kB: pydicom inflates it whole
    before reading one element, so the limits on frames and pixels came too late."""
    ds = pydicom.dcmread(write_cine(tmp_path / "small.dcm", _textured(n=2, size=32), "explicit"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "fits.dcm", enforce_file_format=True)
    block = ds.private_block(0x0009, "LUS-PACS TEST", create=True)
    block.add_new(0x10, "OB", bytes(24_000_000))  # what the Pixel Data would be
    ds.save_as(tmp_path / "bomb.dcm", enforce_file_format=True)
    assert (tmp_path / "bomb.dcm").stat().st_size < 100_000
    header, _ = read_header(tmp_path / "fits.dcm", max_bytes=10_000_000)
    assert decode_dataset(header, "fits").n_frames == 2
    with pytest.raises(UnreadableImageError, match=r"bomb.dcm: .*inflates to more than 10000000"):
        read_header(tmp_path / "bomb.dcm", max_bytes=10_000_000)


@pytest.mark.parametrize("inflated", [3 * 2**20, 3 * 2**20 + 12_345, 1000])
def test_bytes_after_a_deflate_stream_end_its_measure(inflated: int) -> None:
    """pydicom pads a deflated data set of odd length with a byte after the stream: inflated
    in pieces, that byte stayed zlib's unconsumed tail and the measure asked for it again for
    ever, holding the listener's thread and the interpreter's lock (CI's run timed out)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = deflate.compress(bytes(inflated)) + deflate.flush()
    answers: list[bool] = []
    for padded in (stream + b"\x00", stream + b"\x00" * 3, stream):
        measure = threading.Thread(
            target=lambda data=padded: answers.extend(
                [inflates_past(io.BytesIO(data), inflated), inflates_past(io.BytesIO(data), 999)]
            ),
            daemon=True,
        )
        measure.start()
        measure.join(timeout=20)
        assert not measure.is_alive(), "the measure never ended"
    assert answers == [False, True] * 3


def _in_fragments(encoded: list[bytes], offsets: list[int] | None) -> bytes:
    """Encapsulated Pixel Data with each frame in two fragments, under the Basic Offset
    Table ``offsets`` (None: the table a correct encoder writes)."""
    parts = []
    for frame in encoded:
        cut = len(frame) // 4 * 2  # an even first fragment; the frame's end padded
        parts += [frame[:cut], frame[cut:] + b"\x00" * (len(frame) % 2)]
    items = [b"\xfe\xff\x00\xe0" + len(part).to_bytes(4, "little") + part for part in parts]
    if offsets is None:
        offsets = [sum(len(item) for item in items[: 2 * n]) for n in range(len(encoded))]
    table = b"".join(o.to_bytes(4, "little") for o in offsets)
    head = b"\xfe\xff\x00\xe0" + len(table).to_bytes(4, "little") + table
    return head + b"".join(items) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "offsets",
    [[0, 0, 0, 0], [0, 100, 200, 300], [0, 1], [7, 8, 9, 10]],
    ids=["zeros", "inside-fragments", "too-few", "not-from-zero"],
)
def test_a_basic_offset_table_that_cannot_place_the_frames_is_ignored(
    tmp_path: Path, offsets: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    """A table of zeros made frame 1 empty and every later frame half of one: a cine of whole
    frames read as damaged frames, in memory and from its file alike."""
    frames = _textured()
    ds, encoded = _jpeg_frames(tmp_path, frames)
    reference = decode_dataset(pydicom.dcmread(tmp_path / "j.dcm"), "plain").frames
    ds.PixelData = _in_fragments(encoded, None)
    assert not decode_dataset(ds, "correct table").damaged
    assert "Basic Offset Table" not in caplog.text
    ds.PixelData = _in_fragments(encoded, offsets)
    ds.save_as(tmp_path / "bad-table.dcm", enforce_file_format=True)
    in_memory = decode_dataset(pydicom.dcmread(tmp_path / "bad-table.dcm"), "bad table")
    header, in_file = read_header(tmp_path / "bad-table.dcm")
    assert in_file is not None
    from_file = decode_dataset(header, "bad table", in_file=in_file)
    for cine in (in_memory, from_file):
        assert not cine.damaged
        np.testing.assert_array_equal(cine.frames, reference)
    assert "bad table: the Basic Offset Table is ignored" in caplog.text


def test_an_rle_cine_under_a_table_of_zeros_reads_whole(tmp_path: Path) -> None:
    """The same through pydicom's decoders (RLE here; JPEG-LS and JPEG 2000 alike)."""
    frames = _textured()
    ds = pydicom.dcmread(write_cine(tmp_path / "r.dcm", frames, CineSyntax.RLE))
    reference = decode_dataset(ds, "plain").frames
    encoded = list(generate_frames(ds.PixelData, number_of_frames=len(frames)))
    ds.PixelData = encapsulate(encoded, has_bot=False)
    table = (0).to_bytes(4, "little") * len(encoded)
    ds.PixelData = (
        b"\xfe\xff\x00\xe0"
        + len(table).to_bytes(4, "little")
        + table
        + ds.PixelData[8:]  # encapsulate() wrote an empty table
    )
    np.testing.assert_array_equal(decode_dataset(ds, "zeros").frames, reference)


@pytest.mark.parametrize(
    ("syntax", "reason"),
    [
        (pydicom.uid.JPEGLSLossless, "ends before its end marker"),
        (pydicom.uid.JPEG2000Lossless, "Unable to decode"),
    ],
    ids=["jpeg-ls", "jpeg-2000"],
)
def test_a_frame_cut_short_in_pydicoms_decoders_is_named_damaged_and_the_rest_read(
    tmp_path: Path, syntax: str, reason: str
) -> None:
    """A JPEG-LS frame cut in half decoded without a word, its lower half garbage; a JPEG 2000
    one refused the whole cine."""
    frames = _textured()
    ds = pydicom.dcmread(write_cine(tmp_path / "n.dcm", frames, "explicit"))
    ds.compress(syntax)
    encoded = list(generate_frames(ds.PixelData, number_of_frames=len(frames)))
    encoded[2] = encoded[2][: len(encoded[2]) // 2]
    cine = decode_dataset(_with_frames(ds, encoded), "cut")
    assert list(cine.damaged) == [3]
    assert reason in cine.damaged[3]
    assert "\n" not in cine.damaged[3]
    assert cine.intact().tolist() == [True, True, False, True]
    np.testing.assert_array_equal(cine.frames[cine.intact()], frames[[0, 1, 3]])
    with pytest.raises(
        UnreadableImageError, match="NumberOfFrames is 6 but the Pixel Data holds 4 frames"
    ):
        decode_dataset(_with_frames(ds, encoded, n_frames=6), "over")
    with pytest.raises(UnreadableImageError, match=r"cannot decode the pixels \(.*\): \S"):
        decode_dataset(_with_frames(ds, [b"\x00\x01" * 8] * 4), "garbage")


@pytest.mark.parametrize("declared", [True, False])
def test_an_uncompressed_ybr_full_422_cine_is_read_as_its_luminance(
    tmp_path: Path, declared: bool
) -> None:
    """Uncompressed YBR_FULL_422 (two bytes a pixel) as some scanners write their cines:
    pydicom's frame reader takes it for three bytes a pixel, and every multi-frame cine in it
    was refused ("insufficient pixel data"), or counted as 6 frames of 10 without
    NumberOfFrames."""
    source = Path(str(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")))
    ds = pydicom.dcmread(source)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.3.1")
    ds.FrameTime = 40
    row = ds.Columns * 2
    # Frames that differ (the rows turned down by 7 a frame): each must be read in its place.
    frames = [ds.PixelData[7 * k * row :] + ds.PixelData[: 7 * k * row] for k in range(10)]
    ds.PixelData = b"".join(frames)
    ds.NumberOfFrames = 10
    expected = pydicom.dcmread(source)
    ds.save_as(tmp_path / "whole.dcm")
    rgb = pydicom.dcmread(tmp_path / "whole.dcm").pixel_array  # pydicom's whole-array reader
    if not declared:
        del ds.NumberOfFrames
    ds.save_as(tmp_path / "cine.dcm")
    cine = read_cine(tmp_path / "cine.dcm")
    assert cine.frames.shape == (10, expected.Rows, expected.Columns)
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    assert np.abs(cine.frames.astype(np.float32) - grey).max() <= 2.0
    assert not np.array_equal(cine.frames[0], cine.frames[1])
    # Its colours are read from the chroma bytes, as pydicom's RGB shows them.
    colour = luminance(pydicom.dcmread(tmp_path / "cine.dcm"), "cine").colour
    assert colour is not None
    shown = np.mean([coloured_pixels(rgb[i]) for i in colour_frames(10)], axis=0)
    assert shown.mean() > 0.2  # the test image is colour bars
    assert np.mean(colour != shown) < 0.01


def test_of_a_dual_view_the_live_image_is_read_not_the_frozen_reference(tmp_path: Path) -> None:
    """A dual view declaring a frozen reference image and the live one side by side, as
    large: the first was taken (the largest, the first of equals) and the models read a frozen
    image while the live one showed B-lines."""
    rng = np.random.default_rng(1)
    frames = np.zeros((12, 200, 400), np.uint8)
    frames[:, 40:160, 10:190] = rng.integers(40, 200, (120, 180), dtype=np.uint8)  # frozen
    frames[:, 40:160, 210:390] = rng.integers(40, 200, (12, 120, 180), dtype=np.uint8)  # live
    regions = [
        UltrasoundRegion(10, 40, 189, 159, 0.05, 0.05),
        UltrasoundRegion(210, 40, 389, 159, 0.05, 0.05),
    ]
    cine = read_cine(write_cine(tmp_path / "dual.dcm", frames, CineSyntax.RLE, regions=regions))
    assert (cine.region.x0, cine.region.x1) == (210, 390)
    assert cine.region.source is RegionSource.DICOM


@pytest.mark.parametrize("syntax", [CineSyntax.EXPLICIT, CineSyntax.JPEG])
def test_a_grey_cine_is_read_as_its_window_shows_it(tmp_path: Path, syntax: CineSyntax) -> None:
    """Stored values 0-63 under a window of 32/64 (a viewer shows 0-255) were read as they
    were stored, four times too dark: consolidation present became absent and the cine "poor,
    no contact", while the radiologist's viewer showed the image as it was. A window of the
    whole range, the commonest, reads as before."""
    import simplejpeg
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    rng = np.random.default_rng(4)
    shown = rng.integers(0, 256, (6, 64, 80), dtype=np.uint8)
    path = write_cine(tmp_path / "stored.dcm", shown // 4, CineSyntax.EXPLICIT)
    if syntax is CineSyntax.JPEG:  # grey JPEG (one component), read by libjpeg-turbo
        ds = pydicom.dcmread(path)
        encoded = [
            simplejpeg.encode_jpeg(f[..., None], quality=100, colorspace="GRAY") for f in shown // 4
        ]
        ds.PixelData = encapsulate(encoded)
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(path)
    plain = read_cine(path).frames
    ds = pydicom.dcmread(path)
    ds.WindowCenter, ds.WindowWidth = 32, 64
    ds.save_as(tmp_path / "window.dcm")
    windowed = read_cine(tmp_path / "window.dcm").frames
    expected = np.clip(plain.astype(np.int32) * 4 + 2, 0, 255)  # 0..63 spread over 0..255
    assert np.abs(windowed.astype(np.int32) - expected).max() <= 4
    assert windowed.max() > 240
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.save_as(tmp_path / "whole.dcm")
    assert np.array_equal(read_cine(tmp_path / "whole.dcm").frames, plain)


def test_a_signed_grey_image_is_read_through_its_window(tmp_path: Path) -> None:
    """A signed 16-bit secondary capture with a window of 0/1024 read as a flat grey (values
    126-129 of 255) and was called blank."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    rng = np.random.default_rng(5)
    values = rng.integers(-512, 512, (64, 80)).astype(np.int16)
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.WindowCenter, ds.WindowWidth = 0, 1024
    ds.PixelData = values.tobytes()
    ds.save_as(tmp_path / "signed.dcm", enforce_file_format=True)
    frames = read_cine(tmp_path / "signed.dcm").frames
    assert frames.min() < 5
    assert frames.max() > 250
    expected = (values.astype(np.float64) + 512) * 255 / 1023
    assert np.abs(frames[0] - expected).max() <= 2


def test_a_grey_rgb_jpeg_without_colour_transform_is_not_coloured(tmp_path: Path) -> None:
    """An RGB stream with no JFIF or Adobe marker (pydicom's SC_jpeg_no_color_transform): libjpeg
    takes it for YCbCr and its grey came out magenta in the RGB output, so a grey cine from
    such a scanner read as colour flow over all of it. Colour flow in an RGB-labelled YCbCr
    stream is still seen."""
    import simplejpeg
    from pydicom.encaps import encapsulate

    grey = read_cine(Path(str(get_testdata_file("SC_jpeg_no_color_transform.dcm"))))
    assert grey.colour_share == 0.0
    rng = np.random.default_rng(7)
    frames = np.repeat(rng.integers(0, 256, (6, 64, 80, 1), dtype=np.uint8), 3, axis=3)
    for frame in frames:  # flow that changes from frame to frame
        frame[16:48, 20:50, 0] = rng.integers(150, 256, (32, 30), dtype=np.uint8)
        frame[16:48, 20:50, 1:] = 30
    path = write_cine(tmp_path / "flow.dcm", frames, CineSyntax.EXPLICIT)
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate(
        [simplejpeg.encode_jpeg(f, quality=95, colorspace="RGB") for f in frames]
    )
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    ds.PhotometricInterpretation = "RGB"  # as some scanners label a YCbCr stream
    ds.save_as(tmp_path / "labelled.dcm")
    labelled = read_cine(tmp_path / "labelled.dcm")
    assert labelled.colour_share is not None
    assert labelled.colour_share > 0.5 * (32 * 30) / (64 * 80)


def test_a_window_of_the_whole_range_or_of_two_levels_is_not_applied(tmp_path: Path) -> None:
    """127/255 moved two thirds of the pixels by one grey level; a width of 1 left two grey
    levels of a cine (a review)."""
    rng = np.random.default_rng(6)
    stored = rng.integers(0, 256, (6, 48, 64), dtype=np.uint8)
    path = write_cine(tmp_path / "stored.dcm", stored, CineSyntax.EXPLICIT)
    plain = read_cine(path).frames
    for center, width in ((127, 255), (128, 255), (100, 1)):
        ds = pydicom.dcmread(path)
        ds.WindowCenter, ds.WindowWidth = center, width
        ds.save_as(tmp_path / "window.dcm")
        assert np.array_equal(read_cine(tmp_path / "window.dcm").frames, plain), (center, width)
