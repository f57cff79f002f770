"""Reading an ultrasound instance as a :class:`~lus_pacs.domain.Cine` of luminance frames.

B-mode is grey, so every instance is decoded straight to luminance (BT.601 luma, the Y of the
JPEG's YCbCr). JPEG Baseline, what most scanners send, goes through libjpeg-turbo's grey output
(OpenCV), which never computes the chroma: an order of magnitude faster than decoding to RGB
and converting. Every other transfer syntax goes through pydicom's pixel handlers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit

from lus_pacs.dicom_vocabulary import IMAGE_SOP_CLASSES
from lus_pacs.domain import Cine, GreyFrames, SourceRef
from lus_pacs.errors import UnreadableImageError
from lus_pacs.imaging.metadata import frame_timing, lung_zone, ultrasound_region
from lus_pacs.imaging.region import find_tissue_region
from lus_pacs.settings import DEFAULT_ZONE_RULES, ZoneRule

MAX_PIXELS = 1_500_000_000
"""Largest cine read (frames x rows x columns): a 1.5 GB array of luminance."""

_DECODE_THREADS = min(4, os.cpu_count() or 1)

_FAST_JPEG = {JPEGBaseline8Bit, JPEGExtended12Bit}
_FAST_PHOTOMETRIC = {"YBR_FULL_422", "YBR_FULL", "MONOCHROME2", "MONOCHROME1"}
"""JPEG colour models whose grey output is the luminance without looking at the markers.
An RGB-labelled JPEG may hold untransformed RGB, which libjpeg would take for YCbCr."""


def read_cine(path: Path, *, zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES) -> Cine:
    """Read a DICOM file as a cine of luminance frames.

    Parameters
    ----------
    path:
        A DICOM Part 10 file of one of :data:`~lus_pacs.dicom_vocabulary.IMAGE_SOP_CLASSES`.
    zone_rules:
        How the lung zone is found in the header (see :class:`~lus_pacs.settings.ZoneRule`).

    Raises
    ------
    UnreadableImageError
        The file is not DICOM, is not an image of an accepted SOP class, or its pixels cannot
        be decoded; the message names the file and the reason.
    """
    try:
        ds = dcmread(path)
    except (InvalidDicomError, EOFError) as exc:
        raise UnreadableImageError(path.name, f"not a DICOM file ({exc})") from exc
    except OSError as exc:
        raise UnreadableImageError(path.name, f"cannot read the file ({exc})") from exc
    return decode_dataset(ds, path.name, zone_rules=zone_rules, path=str(path))


def decode_dataset(
    ds: Dataset,
    name: str,
    *,
    zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES,
    path: str | None = None,
) -> Cine:
    """Decode a dataset already in memory; ``name`` identifies it in error messages.

    The tissue region comes from ``SequenceOfUltrasoundRegions``, or is found from the pixels
    when the file has none. The mask of the burned-in overlay is always found from the pixels
    (those bright and constant over the loop, outside the moving tissue).
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class not in IMAGE_SOP_CLASSES:
        raise UnreadableImageError(
            name,
            f"SOP class {sop_class or '(none)'} is not an ultrasound or secondary-capture image; "
            f"accepted: {', '.join(sorted(set(IMAGE_SOP_CLASSES.values())))}",
        )
    frames = luminance(ds, name)
    rows, cols = frames.shape[1:]
    region = ultrasound_region(ds, rows, cols)
    # The static overlay (paper 004's mask, found instead of drawn) is wanted even when the
    # regions are declared: a region's rectangle around a sector still holds scale marks and
    # markers. It costs 10-30 ms a cine.
    found, overlay = find_tissue_region(frames)
    if region is None:
        region = found
    source = SourceRef(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=sop_class,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        zone=lung_zone(ds, zone_rules),
        path=path,
    )
    return Cine(frames, frame_timing(ds), region, source, overlay)


def luminance(ds: Dataset, name: str) -> GreyFrames:
    """The pixels of ``ds`` as uint8 luminance, shape (frames, rows, columns).

    Raises
    ------
    UnreadableImageError
        No pixel data, a size over :data:`MAX_PIXELS`, or pixels the decoders cannot read.
    """
    if "PixelData" not in ds:
        raise UnreadableImageError(name, "the instance has no Pixel Data (7FE0,0010)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(ds.get("NumberOfFrames") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnreadableImageError(
            name, f"Rows, Columns or NumberOfFrames is unusable ({exc})"
        ) from exc
    if min(rows, cols, n_frames) < 1:
        raise UnreadableImageError(
            name, f"empty image: {n_frames} frames of {rows} rows x {cols} columns"
        )
    if n_frames * rows * cols > MAX_PIXELS:
        raise UnreadableImageError(
            name,
            f"{n_frames} frames of {rows}x{cols} is over the limit of {MAX_PIXELS} pixels; "
            "send shorter loops",
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if syntax in _FAST_JPEG and ds.get("BitsAllocated") == 8 and photometric in _FAST_PHOTOMETRIC:
        grey = _jpeg_luminance(ds, name, n_frames, rows, cols)
        if grey is not None:
            return _invert_if_monochrome1(grey, photometric)
    try:
        # Pixel decoders raise many kinds of error on corrupt input: this is the trust boundary.
        pixels = pixel_array(ds)
        grey = _to_luminance(pixels, ds, photometric)
    except Exception as exc:
        raise UnreadableImageError(
            name, f"cannot decode the pixels ({syntax}, {photometric}): {exc}"
        ) from exc
    grey = grey.reshape(n_frames, rows, cols)
    return _invert_if_monochrome1(grey, photometric)


def _jpeg_luminance(
    ds: Dataset, name: str, n_frames: int, rows: int, cols: int
) -> GreyFrames | None:
    """libjpeg-turbo's grey output of each frame; None when a frame does not decode as
    expected (pydicom then gets its chance and reports the error).

    libjpeg fills a truncated frame with grey and only warns, so a frame without its
    end-of-image marker is refused here.
    """
    try:
        encoded = list(generate_frames(ds.PixelData, number_of_frames=n_frames))
    except ValueError:
        return None
    if len(encoded) != n_frames:
        return None
    for number, data in enumerate(encoded, start=1):
        if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
            raise UnreadableImageError(
                name, f"JPEG frame {number} is truncated (no end-of-image marker)"
            )
    flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION

    def decode(data: bytes) -> npt.NDArray[np.uint8] | None:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        return None if frame is None else np.asarray(frame, np.uint8)

    # OpenCV releases the GIL while decoding, so frames decode in parallel on threads.
    with ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool:
        frames = list(pool.map(decode, encoded))
    if any(f is None or f.shape != (rows, cols) for f in frames):
        return None
    return np.stack(frames)  # type: ignore[arg-type]


def _to_luminance(pixels: npt.NDArray[np.generic], ds: Dataset, photometric: str) -> GreyFrames:
    samples = int(ds.get("SamplesPerPixel", 1))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        # 16-bit entries carry the colour in their high byte, but some writers put 8-bit
        # values there: judge by the values.
        return _rgb_to_grey(rgb >> 8 if rgb.max() > 255 else rgb, 8)
    if samples == 3:
        # pydicom hands back RGB for every colour model (YBR is converted on decoding).
        return _rgb_to_grey(pixels, int(ds.get("BitsStored", 8)))
    return _to_uint8(pixels, ds)


def _rgb_to_grey(rgb: npt.NDArray[np.generic], bits: int) -> GreyFrames:
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    scale = 255.0 / (2**bits - 1) if bits > 8 else 1.0
    grey = np.rint(rgb.astype(np.float32) @ (weights * scale))
    return np.clip(grey, 0, 255).astype(np.uint8)


def _to_uint8(pixels: npt.NDArray[np.generic], ds: Dataset) -> GreyFrames:
    bits = int(ds.get("BitsStored", 8))
    values = pixels.astype(np.float32)
    if ds.get("PixelRepresentation") == 1:
        values += 2 ** (bits - 1)
    if bits == 8 and pixels.dtype == np.uint8:
        return pixels.astype(np.uint8, copy=False)
    scaled = np.rint(values * (255.0 / (2**bits - 1)))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _invert_if_monochrome1(grey: GreyFrames, photometric: str) -> GreyFrames:
    return 255 - grey if photometric == "MONOCHROME1" else grey
