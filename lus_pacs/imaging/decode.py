"""Reading an ultrasound instance as a :class:`~lus_pacs.domain.Cine` of luminance frames.

B-mode is grey, so every instance is decoded straight to luminance (BT.601 luma, the Y of the
JPEG's YCbCr). JPEG Baseline, what most scanners send, goes through libjpeg-turbo's grey output
(simplejpeg), which never computes the chroma: an order of magnitude faster than decoding to RGB
and converting. Every other transfer syntax goes through pydicom's pixel handlers.

libjpeg only warns about damaged entropy-coded data or a frame cut short, and fills what it
could not read with grey. Each JPEG frame is therefore decoded strictly first; a frame that
warns is decoded again leniently and listed in :attr:`~lus_pacs.domain.Cine.damaged` with the
warning, so that it is named in the record and never chosen as a key frame. Bytes after a
frame's end-of-image marker (vendor padding) are ignored, as libjpeg ignores them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import os
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import (
    generate_fragments,
    generate_frames,
    parse_basic_offsets,
    parse_fragments,
)
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
    iter_pixels,
)
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from lus_pacs.dicom_vocabulary import IMAGE_SOP_CLASSES, MULTI_FRAME_CLASSES
from lus_pacs.domain import Cine, GreyFrames, SourceRef
from lus_pacs.errors import UnreadableImageError, describe
from lus_pacs.imaging.metadata import frame_timing, lung_zone, ultrasound_region
from lus_pacs.imaging.region import blank_frames, find_tissue_region
from lus_pacs.settings import DEFAULT_ZONE_RULES, ZoneRule

log = logging.getLogger(__name__)

MAX_PIXELS = 1_500_000_000
MAX_FRAMES = 10_000
"""Largest cine read (frames x rows x columns): a 1.5 GB array of luminance."""

_DECODE_THREADS = min(4, os.cpu_count() or 1)

_FAST_JPEG = {JPEGBaseline8Bit, JPEGExtended12Bit}
_FAST_PHOTOMETRIC = {"YBR_FULL_422", "YBR_FULL", "MONOCHROME2", "MONOCHROME1", "RGB"}
"""JPEG colour models decoded to grey by libjpeg-turbo. For RGB it reads the stream's own
markers (JFIF, Adobe's transform) and component identifiers to tell untransformed RGB, which
it converts to luminance, from YCbCr, whose luminance it keeps: scanners often label a YCbCr
stream RGB, which pydicom, trusting the label, decodes to washed-out grey (the 120-frame
echocardiogram relabelled: black read as 91)."""

COLOUR_SAMPLES = 8
"""Frames of a colour cine, spread over the loop, whose colours are looked at (the grey
frames are all that is read otherwise); those read only in part are left out (grey filler
where the data ended would hide the colour)."""
MIN_CHROMA = 60
"""Least difference between a pixel's largest and smallest of R, G and B (0-255) for it to be
coloured: colour flow's reds, blues and yellows reach 100-200; JPEG's chroma noise on a grey
image stays under 20."""
MIN_SATURATION = 0.5
"""Least chroma over the pixel's largest component for it to be coloured: a B-mode tint (a
sepia or blue grey map) is a weak colour of every grey level, colour flow a strong one."""


def coloured_pixels(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Pixels of an 8-bit RGB frame (rows, columns, 3) shown in a strong colour
    (:data:`MIN_CHROMA`, :data:`MIN_SATURATION`): colour flow (Doppler) or a colour marker,
    not a grey echo nor a tinted one."""
    red, green, blue = (np.ascontiguousarray(rgb[..., k]) for k in range(3))
    top = cv2.max(cv2.max(red, green), blue)  # 20 times numpy's max over the last axis
    chroma = cv2.subtract(top, cv2.min(cv2.min(red, green), blue))
    return (chroma >= MIN_CHROMA) & (chroma >= MIN_SATURATION * top.astype(np.float32))


def colour_frames(n_frames: int) -> frozenset[int]:
    """The (0-based) frames whose colours are looked at: :data:`COLOUR_SAMPLES` of them, spread
    over the loop from its first frame to its last."""
    count = min(COLOUR_SAMPLES, n_frames)
    return frozenset(int(i) for i in np.linspace(0, n_frames - 1, count).round())


@dataclass(frozen=True)
class Pixels:
    """An instance's pixels as the cine is made of them."""

    grey: GreyFrames
    """uint8 luminance, shape (frames, rows, columns)."""
    damaged: dict[int, str]
    """The frames (1-based) read only in part, with the decoder's warning."""
    colour: npt.NDArray[np.float32] | None
    """(rows, columns): in what share of the :func:`colour_frames` that decoded whole each
    pixel is :func:`coloured_pixels`, burned-in colour aside (:func:`_colour_share`); None for
    an image with no colour (one sample a pixel)."""


STILL_LEVELS = 2
"""Grey levels a pixel may vary by over the sampled frames and still be still."""


def _colour_share(
    masks: dict[int, npt.NDArray[np.bool_]], grey: GreyFrames, damaged: Iterable[int]
) -> npt.NDArray[np.float32] | None:
    """The share of the sampled frames in which each pixel is coloured, from the ``masks`` of
    the frames (0-based) not among the ``damaged`` (1-based). A pixel coloured in every one of
    two or more frames while its grey stays still is burned in (a body marker, a colour bar),
    not flow, which changes from frame to frame: it counts as not coloured."""
    if not masks:
        return None
    left_out = set(damaged)
    whole = {i: mask for i, mask in masks.items() if i + 1 not in left_out}
    if not whole:
        return np.zeros(grey.shape[1:], np.float32)
    share: npt.NDArray[np.float32] = np.stack(list(whole.values())).mean(axis=0, dtype=np.float32)
    if len(whole) > 1:
        sampled = grey[sorted(whole)]
        still = (sampled.max(axis=0) - sampled.min(axis=0)) <= STILL_LEVELS
        share[still & (share == 1.0)] = 0.0
    return share


def decodable_syntaxes(syntaxes: Iterable[str]) -> list[str]:
    """Those of ``syntaxes`` whose pixel data this module can decode (pydicom has a decoder
    for it here): not MPEG-2, MPEG-4, HEVC, JPEG XL or JPIP. The listener accepts images only in
    these, so that a scanner sends an image in one it offers beside them, or is told at
    association, instead of being acknowledged for a cine that cannot be read."""
    decodable = []
    for syntax in syntaxes:
        try:
            available = get_decoder(UID(syntax)).is_available
        except NotImplementedError:  # pydicom knows no decoder for it at all
            available = False
        if available:
            decodable.append(syntax)
    return decodable


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


@dataclass(frozen=True)
class PixelsInFile:
    """Encapsulated Pixel Data left in its file: the frames are read from it a batch at a
    time, so a long cine's encoded frames are never all in memory."""

    path: Path
    offset: int
    """Where the element's value (its Basic Offset Table item) starts."""

    def frames(self, stack: contextlib.ExitStack, number_of_frames: int) -> Iterator[bytes]:
        """The encoded frames, read from the file (closed with ``stack``)."""
        f = stack.enter_context(self.path.open("rb"))
        f.seek(self.offset)
        return generate_frames(f, number_of_frames=number_of_frames)

    def offset_table_fault(self, number_of_frames: int) -> str | None:
        """Why the Basic Offset Table in the file cannot place the frames, or None."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            return offset_table_fault(f, number_of_frames)

    def load(self, ds: Dataset, name: str) -> None:
        """Read the whole Pixel Data into ``ds`` (the decoders other than libjpeg-turbo's need
        it in memory).

        Raises
        ------
        UnreadableImageError
            The file cannot be read again, or its Pixel Data is cut short.
        """
        try:
            whole = dcmread(self.path)
        except Exception as exc:  # the trust boundary, as for the first read
            raise UnreadableImageError(
                name, f"cannot read the Pixel Data: {describe(exc)}"
            ) from exc
        if "PixelData" not in whole:
            raise UnreadableImageError(name, "the Pixel Data is cut short (no end delimiter)")
        ds.PixelData = whole.PixelData


def offset_table_fault(buffer: BinaryIO, number_of_frames: int) -> str | None:
    """Why the Basic Offset Table at ``buffer``'s position cannot say where the frames start,
    or None when it can or is empty (then pydicom finds the frames from their fragments and
    end markers). The buffer is left where it was.

    pydicom trusts a table it is given: one of zeros (some encoders' placeholder) made frame
    1 empty and shifted every later frame by one, each a half frame, so a cine of whole
    frames was read as damaged ones.
    """
    start = buffer.tell()
    try:
        offsets = parse_basic_offsets(buffer)
        if not offsets:
            return None
        first = buffer.tell()
        fragments, starts = parse_fragments(buffer)
    except ValueError:
        return None  # the fragments cannot be split at all: splitting them says so, named
    finally:
        buffer.seek(start)
    if len(offsets) < number_of_frames <= fragments:  # fewer fragments: too few frames, named
        return f"it holds {len(offsets)} offsets for {number_of_frames} frames"
    if offsets[0] != 0 or any(b <= a for a, b in itertools.pairwise(offsets)):
        return f"its offsets do not rise from 0 ({_some(offsets)})"
    fragment_starts = {at - first for at in starts}
    if stray := [o for o in offsets if o not in fragment_starts]:
        return f"offset {stray[0]} is not where a fragment starts"
    return None


def _is_encapsulated(syntax: str | None) -> bool:
    uid = UID(syntax or "")
    return uid.is_transfer_syntax and uid.is_encapsulated


def _some(values: list[int], shown: int = 4) -> str:
    return ", ".join(map(str, values[:shown])) + (", ..." if len(values) > shown else "")


def _trusted_offsets(pixel_data: bytes, number_of_frames: int, name: str) -> bytes:
    """``pixel_data`` (encapsulated), its Basic Offset Table emptied when it cannot place the
    frames (logged), so that the frames are found from the fragments themselves."""
    buffer = io.BytesIO(pixel_data)
    fault = offset_table_fault(buffer, number_of_frames)
    if fault is None:
        return pixel_data
    log.warning("%s: the Basic Offset Table is ignored, %s", name, fault)
    parse_basic_offsets(buffer)
    return _EMPTY_OFFSET_TABLE + pixel_data[buffer.tell() :]


_EMPTY_OFFSET_TABLE = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
"""An empty Basic Offset Table item (little endian)."""


_ENCAPSULATED_PIXEL_DATA = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
"""(7FE0,0010), OB, undefined length, in explicit VR little endian: encapsulated pixels."""


def read_header(path: Path, max_bytes: int | None = None) -> tuple[Dataset, PixelsInFile | None]:
    """A DICOM file's data set, its encapsulated Pixel Data left in the file (with where it
    is); other Pixel Data (native pixels) is read in, and then no place is returned. With
    ``max_bytes``, a deflated data set is first inflated only to be measured: pydicom
    inflates it whole before it reads a single element, and a few MB of zeros inflate a
    thousandfold, past every limit on frames and pixels, which are checked after.

    Raises
    ------
    OSError, InvalidDicomError
        The file cannot be read, or is not DICOM.
    UnreadableImageError
        Its deflated data set inflates to more than ``max_bytes``.
    """
    if max_bytes is not None:
        _check_inflated_size(path, max_bytes)
    with path.open("rb") as f:
        ds = dcmread(f, stop_before_pixels=True)
        at = f.tell()
        head = f.read(len(_ENCAPSULATED_PIXEL_DATA))
    if head == _ENCAPSULATED_PIXEL_DATA:
        return ds, PixelsInFile(path, at + len(head))
    return dcmread(path), None


def _check_inflated_size(path: Path, max_bytes: int) -> None:
    with path.open("rb") as f:
        read_preamble(f, False)
        meta = _read_file_meta_info(f)  # pydicom's own reader of group 2 (pinned to 3.0)
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        if inflates_past(f, max_bytes):
            raise UnreadableImageError(
                path.name,
                f"its deflated data set inflates to more than {max_bytes} bytes "
                "(max_instance_bytes)",
            )


def inflates_past(deflated: BinaryIO, limit: int) -> bool:
    """Whether the deflated data set read from ``deflated`` (from where it stands) inflates to
    more than ``limit`` bytes: inflated a chunk at a time and counted, never held whole (the
    listener asks it of a received data set before pynetdicom inflates it in one piece).
    Bytes after the end of the stream (pydicom pads an odd length with one) are not inflated:
    zlib leaves them as the tail it did not take, and asking again inflated nothing for ever."""
    inflate = zlib.decompressobj(-zlib.MAX_WBITS)
    size = 0
    while not inflate.eof and size <= limit:
        chunk = inflate.unconsumed_tail or deflated.read(_CHUNK)
        if not chunk:
            break
        size += len(inflate.decompress(chunk, _CHUNK))
    return size > limit


_CHUNK = 1 << 20
"""Bytes read, and inflated, at once when a deflated data set is measured."""


def decode_dataset(
    ds: Dataset,
    name: str,
    *,
    zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES,
    path: str | None = None,
    max_frames: int = MAX_FRAMES,
    max_pixels: int = MAX_PIXELS,
    in_file: PixelsInFile | None = None,
) -> Cine:
    """Decode a dataset already in memory; ``name`` identifies it in error messages.

    A multi-frame cine whose NumberOfFrames is absent or 0 is counted
    from its Pixel Data and ``ds`` gets the count (logged), so its results reference the frames
    read. The tissue region comes from ``SequenceOfUltrasoundRegions``, or is found from the
    pixels when the file has none. The mask of the burned-in overlay is always found from the pixels
    (those bright and constant over the loop, outside the moving tissue).
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if len(ds) == 0:
        raise UnreadableImageError(name, "the file holds no data set (empty, or cut short)")
    if sop_class not in IMAGE_SOP_CLASSES:
        raise UnreadableImageError(
            name,
            f"SOP class {sop_class or '(none)'} is not an ultrasound or secondary-capture image; "
            f"accepted: {', '.join(sorted(set(IMAGE_SOP_CLASSES.values())))}",
        )
    pixels = luminance(ds, name, max_frames=max_frames, max_pixels=max_pixels, in_file=in_file)
    frames, damaged = pixels.grey, pixels.damaged
    rows, cols = frames.shape[1:]
    # The static overlay (paper 004's mask, found instead of drawn) is wanted even when the
    # regions are declared: a region's rectangle around a sector still holds scale marks and
    # markers. It costs 10-30 ms a cine.
    usable = [i for i in range(len(frames)) if i + 1 not in damaged] if damaged else None
    found = find_tissue_region(frames, usable)
    overlay = found.overlay
    moving = found.region if found.moving else None
    region = ultrasound_region(ds, rows, cols, moving) or found.region
    source = SourceRef(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=sop_class,
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        patient_id=str(ds.get("PatientID", "")),
        zone=lung_zone(ds, zone_rules),
        path=path,
    )
    blank = blank_frames(frames, region, overlay)
    colour_share = None
    if pixels.colour is not None:
        inside = pixels.colour[region.y0 : region.y1, region.x0 : region.x1]
        if overlay is not None:  # a coloured marker burned in is not drawn over the tissue
            inside = inside[~overlay[region.y0 : region.y1, region.x0 : region.x1]]
        colour_share = float(inside.mean()) if inside.size else 0.0
    if blank:
        log.info("%s: frames with no echo: %s", name, _some(sorted(blank)))
    return Cine(
        frames,
        frame_timing(ds),
        region,
        source,
        overlay,
        damaged,
        found_region=moving,
        blank=blank,
        moving=found.moving,
        colour_share=colour_share,
    )


def luminance(
    ds: Dataset,
    name: str,
    *,
    max_frames: int = MAX_FRAMES,
    max_pixels: int = MAX_PIXELS,
    in_file: PixelsInFile | None = None,
) -> Pixels:
    """The pixels of ``ds`` as uint8 luminance, the frames read only in part and where a few
    frames are coloured (:class:`Pixels`). With ``in_file``, the Pixel Data is in the file
    there, not in ``ds``.

    Raises
    ------
    UnreadableImageError
        No pixel data, more than ``max_frames`` frames or ``max_pixels`` pixels (the message
        names the limit), or pixels the decoders cannot read.
    """
    if "PixelData" not in ds and in_file is None:
        raise UnreadableImageError(name, "the instance has no Pixel Data (7FE0,0010)")
    declared = ds.get("NumberOfFrames")
    if in_file is not None and not declared:
        in_file.load(ds, name)  # counting frames needs them (rare: a faulty header)
        in_file = None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        n_frames = int(declared or 0) or _count_frames(ds, rows, cols)
    except (AttributeError, TypeError, ValueError) as exc:
        raise UnreadableImageError(
            name, f"Rows, Columns or NumberOfFrames is unusable ({exc})"
        ) from exc
    if not declared and (n_frames > 1 or "NumberOfFrames" in ds):
        log.warning(
            "%s: NumberOfFrames is %s; the Pixel Data holds %d frames, read as such",
            name,
            "absent" if declared is None else repr(declared),
            n_frames,
        )
        ds.NumberOfFrames = n_frames  # the result objects reference the frames read
    if min(rows, cols, n_frames) < 1:
        raise UnreadableImageError(
            name, f"empty image: {n_frames} frames of {rows} rows x {cols} columns"
        )
    if n_frames > max_frames:
        raise UnreadableImageError(
            name, f"{n_frames} frames is over the limit of {max_frames} (max_cine_frames)"
        )
    if n_frames * rows * cols > max_pixels:
        raise UnreadableImageError(
            name,
            f"{n_frames} frames of {rows}x{cols} is over the limit of {max_pixels} pixels "
            "(max_cine_pixels); send shorter loops",
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if in_file is not None and in_file.offset_table_fault(n_frames) is not None:
        in_file.load(ds, name)  # rare: the table is mended in memory, below
        in_file = None
    if in_file is None and _is_encapsulated(syntax):
        ds.PixelData = _trusted_offsets(ds.PixelData, n_frames, name)
    display = display_table(ds, photometric, name)
    if syntax in _FAST_JPEG and ds.get("BitsAllocated") == 8 and photometric in _FAST_PHOTOMETRIC:
        jpeg = _jpeg_luminance(ds, name, n_frames, rows, cols, in_file)
        grey = display.apply(jpeg.grey) if display is not None else jpeg.grey
        return dataclasses.replace(jpeg, grey=_invert_if_monochrome1(grey, photometric))
    if in_file is not None:
        in_file.load(ds, name)
    if _native_ybr_422(ds, syntax, photometric) and cols % 2 == 0:
        return _ybr_422_luminance(ds, name, n_frames, rows, cols)
    # Frame by frame into the cine's array: the decoded (maybe RGB) pixels of one frame at a
    # time, never of the whole cine. Encapsulated frames are streams of their own: one that
    # does not decode, or ends before its end marker, is a damaged frame, as for JPEG above.
    encapsulated = _is_encapsulated(syntax)
    damaged = _encoded_frame_faults(ds, name, n_frames, syntax) if encapsulated else {}
    failed: dict[int, str] = {}
    grey = np.zeros((n_frames, rows, cols), np.uint8)
    sampled = colour_frames(n_frames)
    colours: dict[int, npt.NDArray[np.bool_]] = {}
    read = 0
    try:
        # Pixel decoders raise many kinds of error on corrupt input: this is the trust boundary.
        # A palette's 16-bit scale is judged once, over the palette (a damaged one raises).
        high_byte = photometric == "PALETTE COLOR" and _palette_max(ds) > 255
        for index, pixels in _each_frame(ds, n_frames, failed if encapsulated else None):
            frame = _to_luminance(pixels, ds, photometric, high_byte=high_byte, display=display)
            if frame.size != rows * cols:
                raise UnreadableImageError(
                    name,
                    f"frame {index + 1} decodes to {frame.size} values, not Rows x Columns = "
                    f"{rows} x {cols}",
                )
            grey[index] = frame.reshape(rows, cols)
            if index in sampled and (rgb := _rgb8(pixels, ds, photometric, high_byte)) is not None:
                colours[index] = coloured_pixels(rgb.reshape(rows, cols, 3))
            read += 1
    except UnreadableImageError:
        raise
    except Exception as exc:
        raise UnreadableImageError(
            name, f"cannot decode the pixels ({syntax}, {photometric}): {describe(exc)}"
        ) from exc
    if not read and failed:
        raise UnreadableImageError(
            name, f"cannot decode the pixels ({syntax}, {photometric}): {failed[1]}"
        )
    if read + len(failed) < n_frames:
        raise UnreadableImageError(
            name, f"NumberOfFrames is {n_frames} but the Pixel Data holds {read} frames"
        )
    faults = damaged | failed
    return Pixels(
        _invert_if_monochrome1(grey, photometric), faults, _colour_share(colours, grey, faults)
    )


_END_MARKED = {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes}
"""Syntaxes whose every frame ends with the marker FFD9 (JPEG's end of image, JPEG-LS's,
JPEG 2000's end of codestream)."""


def _encoded_frame_faults(
    ds: Dataset, name: str, n_frames: int, syntax: str | None
) -> dict[int, str]:
    """The frames (1-based) of an encapsulated Pixel Data that end before their end marker,
    each with the reason. Such a frame decodes without a word from some decoders (JPEG-LS:
    the missing part of the image filled with whatever the decoder's state gives).

    Raises
    ------
    UnreadableImageError
        The Pixel Data cannot be split into frames, or holds fewer than ``n_frames``.
    """
    faults: dict[int, str] = {}
    count = 0
    try:
        for count, data in enumerate(generate_frames(ds.PixelData, number_of_frames=n_frames), 1):
            if count > n_frames:
                break  # more frames than NumberOfFrames declares: the declared ones are the cine
            if syntax in _END_MARKED and b"\xff\xd9" not in data[-_END_MARKER_SLACK:]:
                faults[count] = "the frame ends before its end marker (FFD9): cut short"
    except ValueError as exc:
        raise UnreadableImageError(
            name, f"the encapsulated Pixel Data cannot be split into frames: {describe(exc)}"
        ) from exc
    if count < n_frames:
        raise UnreadableImageError(
            name, f"NumberOfFrames is {n_frames} but the Pixel Data holds {count} frames"
        )
    return faults


_END_MARKER_SLACK = 10
"""Bytes at a frame's end searched for its end marker: vendors pad after it (pydicom's own
frame splitter searches as far)."""


def _each_frame(
    ds: Dataset, n_frames: int, failed: dict[int, str] | None
) -> Iterator[tuple[int, npt.NDArray[np.generic]]]:
    """Each frame of ``ds`` that decodes, with its (0-based) index. With ``failed``, a frame
    whose decoder raises is recorded there (1-based, with the reason) and the frames after it
    are decoded; without, the error is raised."""
    start = 0
    while start < n_frames:
        # The whole Pixel Data in one pass first; after a failure, frame by frame from the
        # next one (pydicom finds each frame again, slower).
        indices = range(start, n_frames) if start else None
        try:
            for pixels in iter_pixels(ds, indices=indices):
                if start == n_frames:
                    return  # more frames than NumberOfFrames declares
                yield start, pixels
                start += 1
            return
        except Exception as exc:  # the decoders raise many kinds on damaged frames
            if failed is None:
                raise
            failed[start + 1] = " ".join(describe(exc).split())  # one line, for the log
            start += 1


def _jpeg_luminance(
    ds: Dataset, name: str, n_frames: int, rows: int, cols: int, in_file: PixelsInFile | None
) -> Pixels:
    """libjpeg-turbo's grey output of each frame, the frames it warned about, and where the
    :func:`colour_frames` of a colour JPEG are coloured (from their RGB output).

    Raises
    ------
    UnreadableImageError
        The Pixel Data holds fewer frames than NumberOfFrames, a frame is a JPEG of another
        size than the header's (found from its own header, before it is decoded), or no frame
        decodes at all.
    """
    # Each frame is decoded into its place in the cine: no second copy of the whole cine, and
    # the encoded frames are taken from the Pixel Data a batch at a time, not all copied out.
    out = np.zeros((n_frames, rows, cols), np.uint8)
    results: list[tuple[bool, str | None]] = []
    sampled = colour_frames(n_frames)
    colours: dict[int, npt.NDArray[np.bool_]] = {}
    labelled_rgb = str(ds.get("PhotometricInterpretation", "")) == "RGB"

    def decode_into(item: tuple[int, bytes]) -> tuple[bool, str | None]:
        index, data = item
        # The frame's own size first: a frame of 8000 x 8000 under a header of 32 x 32 would
        # otherwise be decoded whole (hundreds of MB from a few kB) before it is found wrong.
        try:
            height, width, colourspace, _ = simplejpeg.decode_jpeg_header(data, strict=False)
        except Exception:  # a damaged header (ValueError; KeyError for garbage): decoding says
            height, width, colourspace = rows, cols, "Gray"
        if (height, width) != (rows, cols):
            raise _WrongSizeError(index, width, height)
        frame, warning = _decode_jpeg_frame(data)
        if frame is None:
            return False, warning
        if frame.shape != (rows, cols):
            raise _WrongSizeError(index, frame.shape[1], frame.shape[0])
        out[index] = frame
        if index in sampled and colourspace != "Gray":
            with contextlib.suppress(ValueError):  # damaged: its grey is what is read
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False)
                coloured = coloured_pixels(rgb)
                if labelled_rgb:
                    # An RGB stream with no JFIF or Adobe marker is taken for YCbCr by
                    # libjpeg, and its grey turns magenta in the RGB output (a grey cine was
                    # colour flow over all of it): coloured read either way, or not.
                    coloured &= coloured_pixels(_jpeg_components(data))
                colours[index] = coloured
        return True, warning

    # libjpeg-turbo releases the GIL while decoding, so frames decode in parallel on threads.
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(max_workers=_DECODE_THREADS) as pool:
        frames = (
            in_file.frames(stack, n_frames)
            if in_file is not None
            else generate_frames(ds.PixelData, number_of_frames=n_frames)
        )
        while len(results) < n_frames:
            try:
                batch = list(itertools.islice(frames, min(_BATCH, n_frames - len(results))))
            except ValueError as exc:
                raise UnreadableImageError(
                    name,
                    f"the encapsulated Pixel Data cannot be split into frames: {describe(exc)}",
                ) from exc
            if not batch:
                raise UnreadableImageError(
                    name,
                    f"NumberOfFrames is {n_frames} but the Pixel Data holds {len(results)} "
                    "JPEG frames",
                )
            try:
                results.extend(pool.map(decode_into, enumerate(batch, start=len(results))))
            except _WrongSizeError as wrong:
                index, width, height = wrong.args
                raise UnreadableImageError(
                    name,
                    f"frame {index + 1} is a JPEG of {width} x {height} pixels, not Columns x "
                    f"Rows = {cols} x {rows}",
                ) from None
    # Fragments past the declared frames are ignored: NumberOfFrames says what the cine is.
    if not any(read for read, _ in results):
        raise UnreadableImageError(name, f"no JPEG frame decodes: {results[0][1]}")
    damaged = {n: w for n, (_, w) in enumerate(results, start=1) if w is not None}
    return Pixels(out, damaged, _colour_share(colours, out, damaged))


_BATCH = 32
"""JPEG frames taken out of the Pixel Data at once."""


def _jpeg_components(data: bytes) -> npt.NDArray[np.uint8]:
    """A colour JPEG frame's three components as stored, with no colour transform (as pydicom
    reads an RGB-labelled stream without an Adobe marker).

    Raises
    ------
    ValueError
        The frame cannot be read.
    """
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG",)) as image:
            if "adobe_transform" not in image.info:
                image.draft("YCbCr", image.size)
            components = np.asarray(image, np.uint8)
    except Exception as exc:  # Pillow raises several kinds on damaged data
        raise ValueError(describe(exc)) from exc
    if components.ndim != 3 or components.shape[2] != 3:
        raise ValueError(f"not three components: {components.shape}")
    return components


class _WrongSizeError(Exception):
    """A JPEG frame whose size is not the header's: its index, width and height."""


def _decode_jpeg_frame(data: bytes) -> tuple[npt.NDArray[np.uint8] | None, str | None]:
    """One JPEG frame as grey, and libjpeg's warning when it could read the frame only in part
    (then the frame is what a lenient decode gives, or None when nothing could be read)."""
    try:
        return _grey_jpeg(data, strict=True), None
    except ValueError as exc:
        warning = describe(exc)
    try:
        return _grey_jpeg(data, strict=False), warning
    except ValueError:
        return None, warning


def _grey_jpeg(data: bytes, *, strict: bool) -> npt.NDArray[np.uint8]:
    grey = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=strict)
    return np.ascontiguousarray(grey[:, :, 0], dtype=np.uint8)


@dataclass(frozen=True)
class DisplayTable:
    """The grey level (0-255) a viewer shows for each stored value of a grey image whose header
    says how to show it (:func:`display_table`)."""

    first: int
    """The stored value of the table's first entry (negative for signed pixels)."""
    table: npt.NDArray[np.uint8]

    def apply(self, pixels: npt.NDArray[np.generic]) -> GreyFrames:
        """``pixels`` (stored values) as shown."""
        if self.first == 0 and len(self.table) == 256 and pixels.dtype == np.uint8:
            # In place: a second copy of a long cine would be memory the budget does not count.
            flat = np.ascontiguousarray(pixels).reshape(-1, pixels.shape[-1])
            cv2.LUT(flat, self.table, dst=flat)
            return flat.reshape(pixels.shape)
        index = np.clip(pixels.astype(np.int64) - self.first, 0, len(self.table) - 1)
        return self.table[index]


_DISPLAY_ATTRIBUTES = (
    "WindowCenter",
    "VOILUTSequence",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
)


def display_table(
    ds: Dataset, photometric: str, name: str, *, keep_plain: bool = False
) -> DisplayTable | None:
    """How a viewer shows the stored values of a grey image whose header sets a window, a VOI
    LUT or a modality rescale or LUT: pydicom's modality LUT, then the first VOI transform,
    spread over 0-255 by what they give over every value the pixels can hold. None when the
    header sets none, or what it sets is the plain scaling to 8 bits (a window of the whole
    range, the commonest); an unusable one is logged and left out.

    Without it, stored values 0-63 under a window of 32/64 (shown 0-255) were read four times
    too dark: consolidation present became absent and the cine "poor, no contact", while the
    radiologist's viewer showed the image as it was. With ``keep_plain`` the plain scaling is
    a table too (a presentation state must state how the source is shown)."""
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    if not any(keyword in ds for keyword in _DISPLAY_ATTRIBUTES):
        return None
    bits = int(ds.get("BitsStored") or 8)
    if not 1 <= bits <= 16:
        return None
    signed = ds.get("PixelRepresentation") == 1
    first = -(2 ** (bits - 1)) if signed else 0
    stored = np.arange(first, first + 2**bits, dtype=np.int32)
    try:
        shown = np.asarray(apply_voi_lut(apply_modality_lut(stored, ds), ds, index=0), np.float64)
    except Exception as exc:  # a header the transforms cannot use: read as stored
        log.warning("%s: its window or LUT is unusable and ignored: %s", name, describe(exc))
        return None
    low, high = float(shown.min()), float(shown.max())
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        log.warning("%s: its window or LUT shows every value alike; ignored", name)
        return None
    table = np.rint((shown - low) * (255.0 / (high - low))).astype(np.uint8)
    plain = _to_uint8(stored.astype(np.int16 if signed else np.uint16), ds)
    # 127/255, 128/255: the whole range (unless asked for: a presentation state states it).
    if not keep_plain and np.abs(table.astype(np.int16) - plain).max() <= 1:
        return None
    if len(np.unique(table)) < _MIN_DISPLAY_LEVELS:
        log.warning(
            "%s: its window (or LUT) shows only %d grey levels; ignored, read as stored",
            name,
            len(np.unique(table)),
        )
        return None
    return DisplayTable(first, table)


_MIN_DISPLAY_LEVELS = 32
"""Fewest grey levels a window may leave to be applied: a width of 1 left two (a thresholded
image), which no one reads an ultrasound cine through."""


def _to_luminance(
    pixels: npt.NDArray[np.generic],
    ds: Dataset,
    photometric: str,
    *,
    high_byte: bool = False,
    display: DisplayTable | None = None,
) -> GreyFrames:
    """One frame's luminance. ``high_byte``: a palette's entries carry the colour in their high
    byte (16-bit entries; some writers put 8-bit values there, so :func:`_palette_max` judges
    by the palette's values: a dark frame of a 16-bit palette holds only entries up to 255)."""
    samples = int(ds.get("SamplesPerPixel", 1))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return _rgb_to_grey(rgb >> 8 if high_byte else rgb, 8)
    if samples == 3:
        # pydicom hands back RGB for every colour model (YBR is converted on decoding).
        return _rgb_to_grey(pixels, int(ds.get("BitsStored", 8)))
    if display is not None:
        return display.apply(pixels)
    return _to_uint8(pixels, ds)


def _rgb8(
    pixels: npt.NDArray[np.generic], ds: Dataset, photometric: str, high_byte: bool
) -> npt.NDArray[np.uint8] | None:
    """One decoded frame as 8-bit RGB, or None when it has no colour (one sample a pixel)."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)
        return np.asarray(rgb >> 8 if high_byte else rgb, np.uint8)
    if int(ds.get("SamplesPerPixel", 1)) != 3:
        return None
    bits = int(ds.get("BitsStored", 8))
    if bits > 8:
        return np.asarray(pixels.astype(np.uint32) >> (bits - 8), np.uint8)
    return np.asarray(pixels, np.uint8)


def _palette_max(ds: Dataset) -> int:
    """The largest value of the cine's palette, over every index its pixels can hold."""
    bits = int(ds.get("BitsStored", 8))
    indices = np.arange(2 ** min(bits, 16), dtype=np.uint16 if bits > 8 else np.uint8)
    return int(apply_color_lut(indices, ds).max())


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


def _count_frames(ds: Dataset, rows: int, cols: int) -> int:
    """The frames in the Pixel Data of a multi-frame cine whose NumberOfFrames is absent or 0:
    one per fragment when encapsulated (what a scanner writes), the whole frames of native
    data. One for the single-frame classes, whose one frame may span several fragments."""
    if str(ds.get("SOPClassUID", "")) not in MULTI_FRAME_CLASSES:
        return 1
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        try:
            # Every item but the first, the Basic Offset Table (which may be empty).
            return max(1, sum(1 for _ in generate_fragments(ds.PixelData)) - 1)
        except Exception:  # the decode that follows names what is wrong
            return 1
    samples = int(ds.get("SamplesPerPixel") or 1)
    if _native_ybr_422(ds, syntax, str(ds.get("PhotometricInterpretation", ""))):
        samples = 2  # two luminance values and one pair of chrominance values per two pixels
    bits = int(ds.get("BitsAllocated") or 8)
    frame_bytes = rows * cols * samples * max(1, bits // 8)
    return max(1, len(ds.PixelData) // frame_bytes) if frame_bytes else 1


def _native_ybr_422(ds: Dataset, syntax: str | None, photometric: str) -> bool:
    """Uncompressed 8-bit YBR_FULL_422: Y1 Y2 Cb Cr for every two pixels of a row, two bytes
    a pixel. pydicom 3.0's frame reader takes it for three bytes a pixel and refuses every
    multi-frame cine in it (its whole-array reader gets it right)."""
    known = UID(syntax or "")
    return (
        photometric == "YBR_FULL_422"
        and known.is_transfer_syntax  # an unknown one is refused by the decoders, named
        and not known.is_compressed
        and int(ds.get("BitsAllocated") or 0) == 8
        and int(ds.get("SamplesPerPixel") or 0) == 3
    )


def _ybr_422_luminance(ds: Dataset, name: str, n_frames: int, rows: int, cols: int) -> Pixels:
    """The luminance of native YBR_FULL_422 frames: their Y bytes as they are (Y is the
    weighted sum of R, G and B that :func:`_rgb_to_grey` computes); and where the
    :func:`colour_frames` are coloured (their Cb and Cr as RGB)."""
    frame_bytes = rows * cols * 2
    data = ds.PixelData
    if len(data) < n_frames * frame_bytes:
        raise UnreadableImageError(
            name,
            f"the Pixel Data holds {len(data)} bytes, under the {n_frames * frame_bytes} of "
            f"{n_frames} frames of {rows} x {cols} pixels in YBR_FULL_422",
        )
    pairs = np.frombuffer(data, np.uint8, n_frames * frame_bytes).reshape(
        n_frames, rows, cols // 2, 4
    )
    colours = {}
    for index in colour_frames(n_frames):
        luma = pairs[index, ..., :2].astype(np.float32)
        cb, cr = (np.repeat(pairs[index, ..., k : k + 1], 2, axis=-1) - 128.0 for k in (2, 3))
        rgb = np.stack(
            [luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], axis=-1
        )
        colours[index] = coloured_pixels(
            np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(rows, cols, 3)
        )
    grey = np.ascontiguousarray(pairs[..., :2]).reshape(n_frames, rows, cols)
    return Pixels(grey, {}, _colour_share(colours, grey, ()))
