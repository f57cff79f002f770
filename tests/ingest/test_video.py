"""Video import: small videos made here with PyAV become valid, faithful US Multi-frame DICOM."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pydicom
import pytest

from lus_pacs.errors import UnreadableImageError
from lus_pacs.imaging.writer import CineSyntax
from lus_pacs.ingest.video import import_video, import_videos, read_video
from tests.tools import dciodvfy_errors

N_FRAMES, ROWS, COLS = 12, 45, 61  # odd sizes on purpose


def _frames() -> np.ndarray:
    """Smooth colour gradients with a bright square moving right: (frames, rows, cols, 3)."""
    y, x = np.mgrid[0:ROWS, 0:COLS]
    out = np.empty((N_FRAMES, ROWS, COLS, 3), np.uint8)
    for i in range(N_FRAMES):
        grey = (40 + 2 * x + y).astype(np.uint8)
        grey[10:20, 5 + 3 * i : 15 + 3 * i] = 230
        out[i] = np.stack([grey, grey * 0.8, grey * 0.6], axis=-1).astype(np.uint8)
    return out


def _write_video(
    path: Path,
    frames: np.ndarray,
    fps: int,
    aspect: Fraction | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """mp4 (H.264 4:4:4, near lossless) or gif (grey palette, lossless for grey frames), with
    the container's ``metadata`` tags."""
    gif = path.suffix == ".gif"
    with av.open(str(path), "w") as out:
        out.metadata.update(metadata or {})
        stream = out.add_stream("gif" if gif else "libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "gray" if gif else "yuv444p"
        if not gif:
            stream.options = {"crf": "1"}
        if aspect is not None:
            stream.codec_context.sample_aspect_ratio = aspect
        for frame in frames:
            image = av.VideoFrame.from_ndarray(
                frame[..., 0] if gif else frame, format="gray" if gif else "rgb24"
            )
            for packet in stream.encode(image):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, np.ndarray, int]]:
    """Each kind of test video: (file, the frames it was made from, fps)."""
    folder = tmp_path_factory.mktemp("videos")
    colour = _frames()
    grey = np.repeat(colour[..., :1], 3, axis=-1)
    return {
        "mp4": (_write_video(folder / "clip.mp4", colour, 25), colour, 25),
        "gif": (_write_video(folder / "clip.gif", grey, 20), grey, 20),
    }


@pytest.mark.parametrize("kind", ["mp4", "gif"])
def test_read_video_gives_the_frames_and_rate(videos: dict, kind: str) -> None:
    path, source, fps = videos[kind]
    clip = read_video(path)
    assert clip.frames.shape == (N_FRAMES, ROWS, COLS, 3)
    assert clip.frames.dtype == np.uint8
    assert clip.fps == pytest.approx(fps, rel=1e-6)
    assert clip.fps_source == "timestamps"
    assert clip.source == path.name
    error = np.abs(clip.frames.astype(np.int16) - source).mean()
    assert error < (0.01 if kind == "gif" else 1.5)


@pytest.mark.parametrize("kind", ["mp4", "gif"])
def test_import_writes_valid_faithful_dicom(videos: dict, kind: str, tmp_path: Path) -> None:
    path, source, fps = videos[kind]
    dicom = import_video(path, tmp_path, zone="R2")
    assert dciodvfy_errors(dicom) == []
    ds = pydicom.dcmread(dicom)
    assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert (ds.NumberOfFrames, ds.Rows, ds.Columns) == (N_FRAMES, ROWS, COLS)
    assert float(ds.FrameTime) == pytest.approx(1000 / fps, rel=1e-5)
    assert ds.SeriesDescription == "Lung R2"
    assert ds.ImageType[0] == "DERIVED"
    assert ds.Manufacturer == "lus-pacs video import"
    assert ds.PatientID.startswith("VID-")
    assert "SequenceOfUltrasoundRegions" not in ds
    pixels = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    assert pixels.shape == source.shape
    assert np.abs(pixels.astype(np.int16) - source).mean() < 3.0


def test_rle_monochrome_keeps_the_luminance_exactly(videos: dict, tmp_path: Path) -> None:
    path, source, _ = videos["gif"]
    dicom = import_video(path, tmp_path, syntax=CineSyntax.RLE, monochrome=True)
    assert dciodvfy_errors(dicom) == []
    ds = pydicom.dcmread(dicom)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    np.testing.assert_array_equal(ds.pixel_array, source[..., 0])


def test_same_file_same_uids(videos: dict, tmp_path: Path) -> None:
    path = videos["mp4"][0]
    first = import_video(path, tmp_path / "a")
    second = import_video(path, tmp_path / "b")
    other_patient = import_video(path, tmp_path / "c", patient_id="P42")

    def uids(dicom: Path) -> tuple[str, str, str]:
        ds = pydicom.dcmread(dicom, stop_before_pixels=True)
        return ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID

    assert first.name == second.name
    assert uids(first) == uids(second)
    assert len(set(uids(first))) == 3
    assert pydicom.dcmread(other_patient).PatientID == "P42"
    assert not set(uids(other_patient)) & set(uids(first))


def test_reuse_existing_does_not_write_again(videos: dict, tmp_path: Path) -> None:
    path = videos["gif"][0]
    dicom = import_video(path, tmp_path)
    dicom.write_bytes(b"kept")
    assert import_video(path, tmp_path, reuse_existing=True) == dicom
    assert dicom.read_bytes() == b"kept"


def test_non_square_pixels_are_made_square(tmp_path: Path) -> None:
    path = _write_video(tmp_path / "wide.mp4", _frames(), 25, aspect=Fraction(2, 1))
    assert read_video(path).frames.shape == (N_FRAMES, ROWS, 2 * COLS, 3)


def test_garbage_named_mp4_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(UnreadableImageError, match=r"^garbage\.mp4: not a video") as caught:
        import_video(path, tmp_path / "out")
    assert caught.value.source == "garbage.mp4"
    assert not (tmp_path / "out").exists()


def test_audio_only_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 8000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with pytest.raises(UnreadableImageError, match="no video stream"):
        read_video(path)


def test_too_many_frames_is_refused_with_the_limit(videos: dict) -> None:
    with pytest.raises(UnreadableImageError, match="over the limit of 5"):
        read_video(videos["mp4"][0], max_frames=5)
    with pytest.raises(UnreadableImageError, match="larger than 10000 bytes"):
        read_video(videos["gif"][0], max_bytes=10_000)


def test_monochrome_reading_keeps_each_frames_luma_in_a_third_of_the_bytes(videos: dict) -> None:
    path = videos["mp4"][0]
    rgb = read_video(path).frames
    grey = read_video(path, monochrome=True).frames
    assert grey.shape == rgb.shape[:3]
    # BT.601 luma of the RGB frames, exactly (cv2's rounding, as a JPEG YBR_FULL cine decodes).
    expected = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in rgb])
    np.testing.assert_array_equal(grey, expected)
    # The byte limit counts what is held: one byte a pixel.
    limit = grey.nbytes
    assert read_video(path, monochrome=True, max_bytes=limit).n_frames == N_FRAMES
    with pytest.raises(UnreadableImageError, match=f"larger than {limit} bytes"):
        read_video(path, max_bytes=limit)


def test_import_videos_collects_refusals_and_goes_on(videos: dict, tmp_path: Path) -> None:
    bad = tmp_path / "empty.avi"
    bad.write_bytes(b"")
    good = [videos["mp4"][0], videos["gif"][0]]
    report = import_videos([good[0], bad, good[1]], tmp_path / "out", progress=False)
    assert [i.source for i in report.imported] == good
    assert all(i.output.is_file() for i in report.imported)
    assert [r.source for r in report.refused] == [bad]
    assert report.refused[0].reason


def test_a_file_that_cannot_be_written_is_refused_and_the_batch_goes_on(tmp_path: Path) -> None:
    """A 2-frame GIF 65535 pixels wide (1 kB) decodes, but JPEG stops at 65500: Pillow's
    OSError ended the whole batch, the good file's report with it."""
    from PIL import Image

    wide, good = tmp_path / "wide.gif", tmp_path / "good.gif"
    for path, shape in ((wide, (2, 65535)), (good, (64, 64))):
        frames = [Image.fromarray(np.full(shape, v, np.uint8)) for v in (10, 200)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    report = import_videos([wide, good], tmp_path / "out", progress=False)
    assert [i.source for i in report.imported] == [good]
    (refused,) = report.refused
    assert refused.source == wide
    assert refused.reason.startswith("could not be written as DICOM")


def _gif(path: Path, delays_ms: list[int]) -> Path:
    from PIL import Image

    frames = [Image.fromarray(np.full((32, 32), 2 * i, np.uint8)) for i in range(len(delays_ms))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=delays_ms, loop=0)
    return path


def test_the_frame_rate_is_the_one_the_loop_moves_at(tmp_path: Path) -> None:
    """The rate was the frames over the clip's span: a title frame held 3 s before 40 ms
    frames gave 3 fps (the models' one-second windows then took 8 s of motion), a GIF of 100
    ms frames whose last ones are held 200 ms 8.3 fps for 10. A GIF delay of 1/100 s plays
    at 10/100 s in browsers; it was read as 100 fps."""
    cases = {
        "title.gif": ([3000] + [40] * 10, 25.0),
        "held.gif": ([100] * 36 + [200] * 9, 10.0),
        "one-hundredth.gif": ([10] * 8, 10.0),
        # 2/100 s is no short delay, though some of its steps come out as 0.0199999 s.
        "fifty.gif": ([20] * 60 + [30] * 50, 50.0),
    }
    for name, (delays, fps) in cases.items():
        clip = read_video(_gif(tmp_path / name, delays))
        assert (clip.fps, clip.fps_source) == (pytest.approx(fps), "timestamps"), name


def test_a_video_coded_sideways_is_imported_as_players_show_it(tmp_path: Path) -> None:
    """A phone held upright over a scanner's screen codes its frames landscape with a
    display rotation; they were imported sideways."""
    path = tmp_path / "upright.mp4"
    coded = np.zeros((N_FRAMES, 48, 64, 3), np.uint8)
    coded[:, :8] = 255  # a white band along the coded top
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv444p"
        stream.set_display_rotation(90)  # turn 90 degrees counterclockwise to show
        for frame in coded:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    frames = read_video(path, monochrome=True).frames
    assert frames.shape == (N_FRAMES, 64, 48)
    # Turned counterclockwise, the coded top is the left edge.
    assert frames[:, :, :6].min() > 200
    assert frames[:, :, 10:].max() < 60


def test_clips_of_one_name_in_two_folders_are_two_patients(videos: dict, tmp_path: Path) -> None:
    """The patient came from a hash of the file name: R1.mp4 of every patient's folder was
    one patient."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "R1.gif"
    first.write_bytes(videos["gif"][0].read_bytes())
    second = _gif(tmp_path / "b" / "R1.gif", [100] * 4)
    ids = {pydicom.dcmread(import_video(p, tmp_path / "out")).PatientID for p in (first, second)}
    assert len(ids) == 2


def test_one_video_under_two_names_is_one_instance(videos: dict, tmp_path: Path) -> None:
    """The same bytes under two names were written twice with one SOP Instance UID (dcentvfy:
    duplicate), in a batch and across runs alike."""
    copy = tmp_path / "copy of clip.gif"
    copy.write_bytes(videos["gif"][0].read_bytes())
    out = tmp_path / "out"
    report = import_videos([videos["gif"][0], copy], out, progress=False, workers=2)
    first, second = report.imported
    assert (second.output, second.same_as) == (first.output, videos["gif"][0])
    assert list(out.iterdir()) == [first.output]
    again = tmp_path / "again.gif"
    again.write_bytes(copy.read_bytes())
    assert import_video(again, out) == first.output
    assert list(out.iterdir()) == [first.output]


def test_names_and_tags_that_are_no_utf8_do_not_refuse_a_video(
    videos: dict, tmp_path: Path
) -> None:
    """A title tag in Latin-1 refused the video at opening; a Latin-1 file name (an archive
    unpacked from Windows) and a name too long for the disk with the suffix added did too."""
    import os

    source = videos["mp4"][0].read_bytes()
    tagged = _write_video(
        tmp_path / "tagged.mp4", _frames(), 25, metadata={"title": "Poumon d\u00e9j\u00e0"}
    )
    data = tagged.read_bytes()
    latin = data.replace("d\u00e9j\u00e0".encode(), b"d\xe9j\xe0  ")
    assert latin != data
    assert len(latin) == len(data)
    tagged.write_bytes(latin)
    assert read_video(tagged).n_frames == N_FRAMES

    latin_name = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"Lunge_\xfcbersicht.mp4")))
    latin_name.write_bytes(source)
    dicom = import_video(latin_name, tmp_path / "out")
    assert "Imported from Lunge_\ufffdbersicht.mp4" in pydicom.dcmread(dicom).ImageComments

    long_name = tmp_path / ("L" * 240 + ".gif")
    long_name.write_bytes(_gif(tmp_path / "short.gif", [100] * 3).read_bytes())
    assert import_video(long_name, tmp_path / "out").is_file()


def test_a_video_made_at_a_known_time_says_it_is_utc(tmp_path: Path) -> None:
    """creation_time is UTC; it was written as local StudyTime with no zone."""
    path = _write_video(
        tmp_path / "timed.mp4",
        _frames(),
        25,
        metadata={"creation_time": "2025-03-04T16:51:36.000000Z"},
    )
    ds = pydicom.dcmread(import_video(path, tmp_path / "out"), stop_before_pixels=True)
    assert (ds.StudyTime, ds.TimezoneOffsetFromUTC) == ("165136", "+0000")
    assert dciodvfy_errors(import_video(path, tmp_path / "out")) == []


def test_a_batch_reads_each_file_once_to_hash_it(
    videos: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch hashes every file to find the same video under two names; each import then
    hashed it again (a second full read of every video)."""
    from lus_pacs.ingest import video

    hashed: list[Path] = []
    original = video._sha256

    def counting(path: Path) -> str:
        hashed.append(path)
        return original(path)

    monkeypatch.setattr(video, "_sha256", counting)
    paths = [videos["mp4"][0], videos["gif"][0]]
    report = import_videos(paths, tmp_path / "out", progress=False)
    assert [i.source for i in report.imported] == paths
    assert sorted(hashed) == sorted(paths)
