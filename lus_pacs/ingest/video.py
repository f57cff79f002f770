"""Exported videos (mp4, avi, mov, mpeg, gif) imported as US Multi-frame instances.

A video carries no patient, no scanner and no calibration. The import writes what the file does
say (pixels, frame rate, when it was made, its name) and derives everything else from the file,
so importing the same file twice gives the same UIDs and the same instance.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import re
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
from pydicom import Dataset
from pydicom.uid import generate_uid
from tqdm import tqdm

from lus_pacs import __version__
from lus_pacs.errors import UnreadableImageError, describe
from lus_pacs.imaging.metadata import lung_zone
from lus_pacs.imaging.writer import (
    CineInstance,
    CineSyntax,
    Equipment,
    StudyIdentity,
    write_us_cine,
)

log = logging.getLogger(__name__)

MAX_FRAMES = 3000
"""Longest clip read by default: a minute at 50 fps, far beyond a lung-ultrasound loop."""
MAX_BYTES = 2 * 1024**3
"""Largest decoded clip (RGB bytes) read by default; a long HD video would exhaust memory."""
DEFAULT_FPS = 30.0
"""Frame rate assumed when the file gives none (as ``Settings.default_fps``)."""

_MIN_FPS, _MAX_FPS = 0.1, 1000.0
_GIF_MIN_DELAY_CS, _GIF_BROWSER_DELAY_S = 2, 0.1
"""A GIF frame delay under 2/100 s plays at 10/100 s in browsers."""
_MAX_STEM = 100
"""Characters of the source's name kept in the output file's name."""
_UNKNOWN_TIME = dt.datetime(1970, 1, 1)
"""Study and acquisition time of a video that does not say when it was made: fixed, not the
import time, so that the same file always gives the same instance."""
_EQUIPMENT = Equipment(
    manufacturer="lus-pacs video import",
    model_name="video import",
    software_versions=__version__,
    device_serial_number="none",
)


@dataclass(frozen=True, eq=False)
class VideoClip:
    """The decoded frames of a video file and its frame rate."""

    frames: npt.NDArray[np.uint8]
    """RGB pixels, shape (frames, rows, columns, 3), or their luminance, shape (frames, rows,
    columns) (:func:`read_video` with ``monochrome``); square pixels."""
    fps: float
    fps_source: str
    """Where ``fps`` came from: "timestamps", "average_rate", "guessed_rate" or "default"."""
    source: str
    """The file name."""
    created: dt.datetime | None = None
    """When the container says it was made (``creation_time``, UTC), if it says."""

    def __post_init__(self) -> None:
        rgb = self.frames.ndim == 4 and self.frames.shape[3] == 3
        if self.frames.dtype != np.uint8 or not (rgb or self.frames.ndim == 3):
            raise ValueError(
                "VideoClip.frames must be uint8 of shape (frames, rows, columns, 3) or (frames, "
                f"rows, columns); got {self.frames.dtype} {self.frames.shape}."
            )
        if not self.fps > 0:
            raise ValueError(f"VideoClip.fps must be positive; got {self.fps}.")

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class Imported:
    source: Path
    output: Path
    same_as: Path | None = None
    """Another file of the batch with the same content, imported once as ``output``."""


@dataclass(frozen=True)
class Refusal:
    source: Path
    reason: str


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_videos` did with each file."""

    imported: tuple[Imported, ...]
    refused: tuple[Refusal, ...]


def read_video(
    path: Path,
    *,
    max_frames: int = MAX_FRAMES,
    max_bytes: int = MAX_BYTES,
    default_fps: float = DEFAULT_FPS,
    monochrome: bool = False,
) -> VideoClip:
    """Decode the first video stream of ``path`` to RGB frames, or to their luminance.

    The container is recognised from its content, not its extension (several ``.avi`` files of
    the POCUS dataset are MP4 inside). Non-square pixels are resampled to square ones and a
    frame coded sideways with a display rotation is turned, the way a player shows them, and
    transparent GIF pixels become black. The frame rate is the median interval between the
    frames' timestamps (see :func:`_frame_rate`).

    Parameters
    ----------
    path:
        The video file.
    max_frames, max_bytes:
        A clip with more frames, or more decoded bytes, is refused instead of filling memory.
    default_fps:
        The frame rate used when neither the frame timestamps nor the stream give one.
    monochrome:
        Keep each frame's BT.601 luma (the Y that a JPEG YBR_FULL scanner cine decodes to),
        taken as it is decoded: a third of the memory, and no RGB copy of the whole clip.

    Raises
    ------
    UnreadableImageError
        The file is not a video, has no video stream, no decodable frame, fails to decode or is
        over the limits.
    """
    name = _printable(path.name)
    try:
        # Tags in another encoding than UTF-8 (a Latin-1 title) are not worth a refusal.
        container = av.open(str(path), metadata_errors="replace")
    except (av.FFmpegError, OSError) as exc:
        raise UnreadableImageError(name, f"not a video file PyAV can open ({exc})") from exc
    with container:
        if not container.streams.video:
            raise UnreadableImageError(name, "the file has no video stream")
        stream = container.streams.video[0]
        if stream.frames > max_frames:
            raise UnreadableImageError(name, _too_many_frames(stream.frames, max_frames))
        stream.thread_type = "AUTO"
        try:
            frames, times = _decode(container, stream, name, max_frames, max_bytes, monochrome)
        except av.FFmpegError as exc:
            raise UnreadableImageError(name, f"the video decoder failed: {exc}") from exc
        if not frames:
            raise UnreadableImageError(name, "the video stream has no decodable frame")
        gif = container.format.name == "gif"
        fps, fps_source = _frame_rate(times, stream, default_fps, gif=gif)
        created = _creation_time(container.metadata, stream.metadata)
    return VideoClip(np.stack(frames), fps, fps_source, name, created)


def import_video(
    path: Path,
    out_dir: Path,
    *,
    patient_id: str | None = None,
    zone: str | None = None,
    syntax: CineSyntax | str = CineSyntax.JPEG,
    monochrome: bool = False,
    reuse_existing: bool = False,
    max_frames: int = MAX_FRAMES,
    max_bytes: int = MAX_BYTES,
    content_hash: str | None = None,
) -> Path:
    """Write the video ``path`` as one US Multi-frame instance in ``out_dir``.

    Each video becomes its own study. The UIDs come from the file's content and the arguments,
    so the same file imported the same way always gives the same instance.

    Parameters
    ----------
    path:
        The video file.
    out_dir:
        Where the instance is written, as ``<file stem>-<12 hex digits>.dcm``.
    patient_id:
        Defaults to ``VID-`` and a hash of the file's content.
    zone:
        The lung zone (for example ``R1``), written to SeriesDescription as ``Lung R1``.
    syntax:
        The transfer syntax; RLE avoids a second lossy step after the video codec.
    monochrome:
        Store luminance only (B-mode is grey): a third of the size, what the pipeline decodes to.
    reuse_existing:
        Return the instance already in ``out_dir`` for this file and arguments without
        decoding again (a cache).
    max_frames, max_bytes:
        Longer videos, or larger once decoded, are refused.
    content_hash:
        The SHA-256 of the file's bytes, where the caller has it (:func:`import_videos`
        hashes every file to find duplicates): not read again.

    Returns
    -------
    Path
        The written (or reused) DICOM file.

    Raises
    ------
    UnreadableImageError
        The file cannot be read as a video (see :func:`read_video`).
    """
    syntax = CineSyntax(syntax)
    check_labels(zone, patient_id)
    try:
        content_hash = content_hash or _sha256(path)
    except OSError as exc:
        raise UnreadableImageError(_printable(path.name), f"cannot read the file ({exc})") from exc
    patient = patient_id if patient_id is not None else _default_patient_id(content_hash)
    key = hashlib.sha256(
        "\n".join([content_hash, patient, zone or "", syntax.value, str(monochrome)]).encode()
    ).hexdigest()
    target = out_dir / f"{_safe_stem(path.stem)}-{key[:12]}.dcm"
    if reuse_existing and target.is_file():
        return target
    # The same content imported the same way under another name is the same instance (its
    # UIDs come from the content): a second file of one SOP Instance UID is not written.
    if out_dir.is_dir():
        for same in sorted(out_dir.glob(f"*-{key[:12]}.dcm")):
            if same != target and same.is_file():
                return same

    clip = read_video(path, max_frames=max_frames, max_bytes=max_bytes, monochrome=monochrome)
    when = clip.created or _UNKNOWN_TIME
    study = StudyIdentity(
        patient_id=patient,
        # A bare ID in PN reads as the retired name form (dciodvfy warns); give it components.
        patient_name=f"Video^{patient}",
        study_instance_uid=generate_uid(entropy_srcs=[key, "study"]),
        study_date=when.date(),
        study_time=when.time(),
        study_id=key[:8],
        accession_number="",
        study_description="Lung ultrasound (imported video)",
        # A container's creation_time is UTC; a video that gives none keeps no zone.
        timezone_offset="+0000" if clip.created else "",
    )
    instance = CineInstance(
        series_instance_uid=generate_uid(entropy_srcs=[key, "series"]),
        series_number=1,
        series_description=f"Lung {zone.strip()}" if zone else "Imported video",
        sop_instance_uid=generate_uid(entropy_srcs=[key, "instance"]),
        instance_number=1,
        fps=clip.fps,
        acquisition_datetime=when,
        image_comments=f"Imported from {clip.source}; frame rate from {clip.fps_source}",
        derived=True,
    )
    write_us_cine(
        target, clip.frames, study=study, instance=instance, equipment=_EQUIPMENT, syntax=syntax
    )
    return target


def import_videos(
    paths: Iterable[Path],
    out_dir: Path,
    *,
    patient_id: str | None = None,
    zone: str | None = None,
    syntax: CineSyntax | str = CineSyntax.JPEG,
    monochrome: bool = False,
    reuse_existing: bool = False,
    max_frames: int = MAX_FRAMES,
    max_bytes: int = MAX_BYTES,
    progress: bool = True,
    workers: int = 1,
) -> ImportReport:
    """Import many videos with :func:`import_video`; a file that cannot be read is recorded
    with its reason and the others go on.

    Parameters
    ----------
    paths:
        The video files.
    progress:
        Show a progress bar (on stderr).
    workers:
        Processes importing at once (each file is imported by one of them); the report keeps
        the order of ``paths``.

    Other parameters are those of :func:`import_video`, applied to every file.
    """
    paths = list(paths)
    # A video given twice (under two names, or two paths to one file) is imported once: in
    # parallel both would write an instance of the same UIDs.
    first: dict[str, Path] = {}
    same_as: dict[Path, Path] = {}
    hashes: dict[Path, str] = {}
    for path in paths:
        with contextlib.suppress(OSError):  # import_video reports it
            hashes[path] = _sha256(path)
            same_as[path] = first.setdefault(hashes[path], path)
    unique = list(dict.fromkeys(same_as.get(path, path) for path in paths))
    one = functools.partial(
        _import_one,
        out_dir=out_dir,
        patient_id=patient_id,
        zone=zone,
        syntax=syntax,
        monochrome=monochrome,
        reuse_existing=reuse_existing,
        max_frames=max_frames,
        max_bytes=max_bytes,
    )
    bar = functools.partial(
        tqdm, total=len(paths), desc="Importing videos", unit="file", disable=not progress
    )
    known = [hashes.get(path) for path in unique]
    if workers > 1:
        # Forked from a clean server process, not from the caller: a caller with threads
        # (a trainer's, a test process's) forked as it is can leave a child waiting for good
        # on a lock one of those threads held.
        with ProcessPoolExecutor(workers, mp_context=get_context("forkserver")) as pool:
            results = dict(zip(unique, bar(pool.map(one, unique, known)), strict=True))
    else:
        results = dict(zip(unique, bar(map(one, unique, known)), strict=True))
    imported: list[Imported] = []
    refused: list[Refusal] = []
    for path in paths:
        original = same_as.get(path, path)
        output, reason = results[original]
        if original != path:
            reason = f"the same video as {original}: {reason}"
        if output is None:
            log.warning("Refused %s: %s", path, reason)
            refused.append(Refusal(path, reason))
        else:
            imported.append(Imported(path, output, original if original != path else None))
    return ImportReport(tuple(imported), tuple(refused))


def _import_one(
    path: Path, content_hash: str | None = None, **options: Any
) -> tuple[Path | None, str]:
    """:func:`import_video` of one file: (output, "") or (None, why it was refused)."""
    try:
        return import_video(path, content_hash=content_hash, **options), ""
    except UnreadableImageError as exc:
        return None, exc.reason
    except Exception as exc:  # the encoders and the disk, for this file: the others go on
        return None, f"could not be written as DICOM ({describe(exc)})"


def _decode(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    name: str,
    max_frames: int,
    max_bytes: int,
    monochrome: bool,
) -> tuple[list[npt.NDArray[np.uint8]], list[float | None]]:
    frames: list[npt.NDArray[np.uint8]] = []
    times: list[float | None] = []
    size: tuple[int, int] | None = None
    channels = 1 if monochrome else 3
    for frame in container.decode(stream):
        if size is None:
            size = _square_pixels(frame.width, frame.height, stream.sample_aspect_ratio)
        if len(frames) == max_frames:
            raise UnreadableImageError(name, _too_many_frames(len(frames) + 1, max_frames))
        if (len(frames) + 1) * size[0] * size[1] * channels > max_bytes:
            raise UnreadableImageError(
                name,
                f"the decoded clip is larger than {max_bytes} bytes after {len(frames)} frames "
                f"of {size[0]}x{size[1]}; cut or downscale the video, import it in grey "
                "(--monochrome: a third of the bytes) or raise the limit (--max-bytes)",
            )
        rgb = _upright(_rgb(frame, size), frame)
        frames.append(
            np.asarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), np.uint8) if monochrome else rgb
        )
        times.append(frame.time)
    return frames, times


def _square_pixels(width: int, height: int, aspect: Fraction | None) -> tuple[int, int]:
    """The frame size with square pixels; grows one side so no resolution is lost."""
    if not aspect or aspect == 1:
        return width, height
    if aspect > 1:
        return round(width * aspect), height
    return width, round(height / aspect)


def _rgb(frame: av.VideoFrame, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    width, height = size
    if any(component.is_alpha for component in frame.format.components):
        rgba = frame.reformat(width=width, height=height, format="rgba").to_ndarray()
        alpha = rgba[..., 3:].astype(np.uint16)
        premultiplied: npt.NDArray[np.uint8] = (rgba[..., :3] * alpha // 255).astype(np.uint8)
        return premultiplied
    return np.asarray(
        frame.reformat(width=width, height=height, format="rgb24").to_ndarray(), np.uint8
    )


def _upright(rgb: npt.NDArray[np.uint8], frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """The frame as players show it: a phone's recording of a scanner's screen, held
    upright, is coded sideways with a display matrix that turns it (``frame.rotation``, the
    angle counterclockwise, as ffmpeg's autorotate reads it)."""
    turns = round(float(getattr(frame, "rotation", 0) or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _frame_rate(
    times: list[float | None],
    stream: av.video.stream.VideoStream,
    default_fps: float,
    *,
    gif: bool = False,
) -> tuple[float, str]:
    # The timestamps of the frames actually decoded come first. average_rate is the stream's
    # frame count over its duration, and QuickTime edit lists break that: one POCUS .mov reports
    # 55.5 fps for a 60 fps clip whose first 18 frames the edit list drops, and variable-rate
    # screen recordings report r_frame_rate (guessed_rate) 60 for an average of 50. The rate is
    # the median interval between frames, not their average: a title frame held three seconds,
    # a GIF whose last frames are held longer or a recording that dropped frames keep the rate
    # at which the loop moves (the models' one-second windows follow it). GIF timestamps come
    # from the frame delays; a delay of 0 or 1/100 s plays at 10/100 s in browsers, and is read
    # so here. The stream rates remain for files whose frames carry no timestamps, and the
    # default for a one-frame file.
    known = [t for t in times if t is not None]
    if len(known) == len(times) >= 2:
        steps = np.diff(np.sort(np.asarray(known, np.float64)))
        if gif:  # in whole hundredths: 0.02 - 0.0 can come out as 0.0199999
            hundredths = np.rint(steps / 0.01)
            steps = np.where(hundredths < _GIF_MIN_DELAY_CS, _GIF_BROWSER_DELAY_S, steps)
        steps = steps[steps > 0]
        if steps.size and _MIN_FPS <= (fps := 1.0 / float(np.median(steps))) <= _MAX_FPS:
            return fps, "timestamps"
    for source, rate in (
        ("average_rate", stream.average_rate),
        ("guessed_rate", stream.guessed_rate),
    ):
        if rate and _MIN_FPS <= float(rate) <= _MAX_FPS:
            return float(rate), source
    return default_fps, "default"


def _creation_time(*metadata: dict[str, str]) -> dt.datetime | None:
    for tags in metadata:
        try:
            when = dt.datetime.fromisoformat(tags.get("creation_time", ""))
        except ValueError:
            continue
        if when.tzinfo is not None:
            when = when.astimezone(dt.UTC).replace(tzinfo=None)
        return when
    return None


def _too_many_frames(count: int, max_frames: int) -> str:
    return (
        f"the video has {count} frames or more, over the limit of {max_frames}; "
        "cut it into loops or raise the limit (--max-frames)"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_labels(zone: str | None, patient_id: str | None) -> None:
    """Refuse a zone the node would not read as one (written all the same, the cine had no
    zone, and left its study's LUS score unsaid) and a patient ID DICOM does not take.

    Raises
    ------
    ValueError
        Naming the value and what is expected.
    """
    if zone is not None and lung_zone(_described(f"Lung {zone.strip()}")) is None:
        raise ValueError(
            f"zone must be a label such as 'R1' or 'L3' (side and number); got {zone!r}"
        )
    if patient_id is not None and not (_PATIENT_ID.fullmatch(patient_id) and patient_id.strip()):
        raise ValueError(
            f"a patient ID is 1-{_PATIENT_ID_MAX} characters, not all spaces, without a "
            "backslash, ^, = or control character (DICOM LO, and the patient's name "
            f"Video^<ID> a PN); got {patient_id!r}"
        )


_PATIENT_ID_MAX = 58
_PATIENT_ID = re.compile(rf"[^\\^=\x00-\x1f\x7f]{{1,{_PATIENT_ID_MAX}}}")
"""A patient ID the import writes: DICOM's LO (no backslash or control character) that also
makes the patient's name ``Video^<ID>`` a PN (64 characters, no further ^ or =)."""


def _described(description: str) -> Dataset:
    """A data set holding only ``description`` as its SeriesDescription."""
    described = Dataset()
    described.SeriesDescription = description
    return described


def _default_patient_id(content_hash: str) -> str:
    """From the video's content: clips of one name in two folders (``R1.mp4`` of two
    patients) were one patient when it came from the name."""
    return "VID-" + content_hash[:10].upper()


def _safe_stem(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:_MAX_STEM] or "video"


def _printable(name: str) -> str:
    """A file name as text: bytes of the name that are no UTF-8 (a Latin-1 name unpacked
    from an archive) become U+FFFD instead of failing where the name is written."""
    return os.fsencode(name).decode("utf-8", "replace")
