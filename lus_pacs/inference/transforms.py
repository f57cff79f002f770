"""MONAI transforms that turn a :class:`~lus_pacs.domain.Cine` into each model's input.

Array transforms do the work; the dictionary versions (``...d``) are thin wrappers for training
pipelines that carry an image and its label together.

* Paper 001 (B-lines): the tissue region at 64 x 64, cut into 1-second windows overlapping by
  20 %: :func:`b_line_windows`.
* Paper 003 (severity, segmentation): each frame fitted into 200 rows x 260 columns, aspect kept,
  zero padded, scaled to [-1, 1]: :func:`severity_frames`; :func:`fit_label_maps` brings source
  label maps into that geometry and :func:`to_source_geometry` maps them back.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import torch
from monai.config import KeysCollection
from monai.networks.layers.convutils import gaussian_1d
from monai.transforms import (
    MapTransform,
    Resize,
    SpatialPad,
    Transform,
)
from monai.utils import convert_to_tensor, ensure_tuple_rep

from lus_pacs.domain import Cine

B_LINE_SIZE = (64, 64)
"""Rows and columns of a paper 001 frame."""
SEVERITY_SIZE = (200, 260)
"""Rows and columns of a paper 003 frame."""


class CropTissue(Transform):
    """The tissue region of a cine as a (1, frames, rows, columns) float32 array in [0, 1].

    Parameters
    ----------
    frames:
        1-based frame numbers to keep, in the order given; all frames when None.
    """

    def __init__(self, frames: Sequence[int] | None = None) -> None:
        self.frames = None if frames is None else tuple(frames)

    def __call__(self, cine: Cine) -> npt.NDArray[np.float32]:
        tissue = cine.tissue()
        if self.frames is not None:
            tissue = tissue[_frame_indices(self.frames, cine.n_frames)]
        return np.divide(tissue[None], 255, dtype=np.float32)


class CropTissued(MapTransform):
    """Dictionary version of :class:`CropTissue`: replaces each key's Cine by its tissue array."""

    def __init__(
        self,
        keys: KeysCollection,
        frames: Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop = CropTissue(frames)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.crop(d[key])
        return d


class TemporalWindows(Transform):
    """Cut (channels, frames, rows, columns) into fixed-length windows of time.

    Windows last ``round(fps * seconds)`` frames (at least one) and start every
    ``round(length * (1 - overlap))`` frames; the last window is aligned to the end of the clip so
    that every frame is in at least one window. A clip shorter than one window is padded by
    repeating its last frame, and gives one window.

    Parameters
    ----------
    fps:
        Frame rate of the clip.
    seconds:
        Duration of a window.
    overlap:
        Fraction of a window shared with the next one, in [0, 1).
    """

    def __init__(self, fps: float, seconds: float = 1.0, overlap: float = 0.2) -> None:
        if not fps > 0 or not seconds > 0:
            raise ValueError(
                f"TemporalWindows needs a positive fps and seconds; got fps={fps}, "
                f"seconds={seconds}."
            )
        if not 0 <= overlap < 1:
            raise ValueError(f"TemporalWindows overlap must be in [0, 1); got {overlap}.")
        self.length = max(1, round(fps * seconds))
        self.stride = max(1, round(self.length * (1 - overlap)))

    def starts(self, n_frames: int) -> list[int]:
        """0-based first frame of each window of a clip of ``n_frames`` frames."""
        last = max(0, n_frames - self.length)
        starts = list(range(0, last + 1, self.stride))
        if starts[-1] != last:
            starts.append(last)
        return starts

    def __call__(
        self, img: npt.NDArray[np.float32] | torch.Tensor
    ) -> tuple[torch.Tensor, list[int]]:
        """Windows, shape (windows, channels, length, rows, columns), and their 0-based starts."""
        x = convert_to_tensor(img, track_meta=False)
        if x.ndim != 4:
            raise ValueError(
                "TemporalWindows needs (channels, frames, rows, columns); "
                f"got shape {tuple(x.shape)}."
            )
        missing = self.length - x.shape[1]
        if missing > 0:
            x = torch.cat([x, x[:, -1:].expand(-1, missing, -1, -1)], dim=1)
        starts = self.starts(int(x.shape[1]))
        return torch.stack([x[:, s : s + self.length] for s in starts]), starts


class FitAndPad(Transform):
    """Resize channel-first 2D images to fit ``spatial_size`` keeping the aspect ratio, then pad.

    The image is scaled by the largest factor that fits both sides and padded with zeros, centred
    (an odd remainder goes after). :func:`to_source_geometry` undoes it.

    Parameters
    ----------
    spatial_size:
        Rows and columns of the output.
    mode:
        Interpolation, as MONAI's ``Resize``: "bilinear" for images (anti-aliased when shrinking),
        "nearest-exact" for label maps (pixel centres, as :func:`to_source_geometry` samples).
    """

    def __init__(self, spatial_size: tuple[int, int], mode: str = "bilinear") -> None:
        self.spatial_size = spatial_size
        self.mode = mode
        self.pad = SpatialPad(spatial_size, method="symmetric")

    def __call__(self, img: npt.NDArray[np.generic] | torch.Tensor) -> torch.Tensor:
        x = convert_to_tensor(img, track_meta=False)
        size = _fitted_size((int(x.shape[-2]), int(x.shape[-1])), self.spatial_size)
        if self.mode == "bilinear" and x.ndim == 3 and x.dtype == torch.float32:
            resized = anti_aliased_resize(x, size)
        else:
            smooth = self.mode not in ("nearest", "nearest-exact")
            resized = Resize(size, mode=self.mode, anti_aliasing=smooth)(x)
        return convert_to_tensor(self.pad(resized), track_meta=False)


def anti_aliased_resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """MONAI's ``Resize(size, mode="bilinear", anti_aliasing=True)`` of a float32 (channels,
    rows, columns) image, six (640 x 480) to twelve (1080p) times faster on a CPU.

    The same steps and the same kernel: where a side shrinks, MONAI's Gaussian (its ``erf``
    kernel of sigma (factor - 1) / 2, truncated at 4 sigma, zeros beyond the edge) smooths it,
    here run by OpenCV's separable filter instead of two torch convolutions; then torch's
    bilinear interpolation. Equal to MONAI's within 1e-5 (``tests/inference/test_transforms``).
    """
    rows, columns = int(image.shape[-2]), int(image.shape[-1])
    if size[0] < rows or size[1] < columns:
        kernels = [
            gaussian_1d(torch.tensor(max(0.0, (n / m - 1) / 2)), truncated=4.0, approx="erf")
            .numpy()
            .astype(np.float32)
            for n, m in ((rows, size[0]), (columns, size[1]))
        ]
        smoothed = np.stack(
            [
                cv2.sepFilter2D(
                    channel, cv2.CV_32F, kernels[1], kernels[0], borderType=cv2.BORDER_CONSTANT
                )
                for channel in image.numpy()
            ]
        )
        image = torch.from_numpy(smoothed)
    return torch.nn.functional.interpolate(image[None], size=size, mode="bilinear")[0]


class FitAndPadd(MapTransform):
    """Dictionary version of :class:`FitAndPad`, with one interpolation mode per key."""

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: tuple[int, int],
        mode: str | Sequence[str] = "bilinear",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modes = ensure_tuple_rep(mode, len(self.keys))
        self.fits = {
            key: FitAndPad(spatial_size, m) for key, m in zip(self.keys, modes, strict=True)
        }

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.fits[key](d[key])
        return d


def b_line_windows(cine: Cine, default_fps: float) -> tuple[torch.Tensor, list[int]]:
    """Paper 001's input: the tissue at 64 x 64 in 1-second windows overlapping by 20 %.

    Parameters
    ----------
    cine:
        The cine loop.
    default_fps:
        The frame rate used when the file does not give one.

    Returns
    -------
    windows:
        float32 in [0, 1], shape (windows, 1, frames per second, 64, 64).
    starts:
        1-based number of the first frame of each window; a window covers ``starts[i]`` to
        ``starts[i] + frames per second - 1`` (a clip shorter than a second repeats its last
        frame).
    """
    fps = cine.timing.fps or default_fps
    tissue = cine.tissue()
    # Area averaging is the anti-aliased shrink here (trilinear with smoothing is 200x slower):
    # MONAI's ``Compose([CropTissue, Resize((-1, 64, 64), mode="area")])`` written out, chunk by
    # chunk of frames (what bounds its memory), the same numbers (tests/inference/
    # test_transforms.py) without building a transform chain per chunk.
    pieces = []
    for chunk in frame_chunks(cine.n_frames):
        grey = torch.from_numpy(np.divide(tissue[chunk[0] - 1 : chunk[-1]], 255, dtype=np.float32))
        size = (len(chunk), *B_LINE_SIZE)
        pieces.append(torch.nn.functional.interpolate(grey[None, None], size=size, mode="area")[0])
    frames = torch.cat(pieces, dim=1)
    windows, starts = TemporalWindows(fps)(frames)
    return windows, [s + 1 for s in starts]


def severity_frames(cine: Cine, frames: Sequence[int] | None = None) -> torch.Tensor:
    """Paper 003's input: frames fitted into 200 x 260, zero padded, intensities in [-1, 1].

    The steps of ``Compose([CropTissue, FitAndPad(SEVERITY_SIZE), ScaleIntensityRange(0, 1,
    -1, 1)])`` on one frame at a time (what bounds their memory), written out so that a
    60-frame cine does not build and run 60 transform chains (107 against 31 ms on a 640 x 480
    cine): the same numbers (``tests/inference/test_transforms.py``).

    Parameters
    ----------
    cine:
        The cine loop; only its tissue region is used.
    frames:
        1-based frame numbers, in the order wanted; all frames when None.

    Returns
    -------
    torch.Tensor
        float32, shape (frames, 1, 200, 260); padding is -1 (black).
    """
    wanted = list(frames) if frames is not None else list(range(1, cine.n_frames + 1))
    tissue = cine.tissue()
    indices = _frame_indices(wanted, cine.n_frames)
    top, left, rows, columns = _fitted_place(
        (int(tissue.shape[1]), int(tissue.shape[2])), SEVERITY_SIZE
    )
    # Padding is black, 0, which the intensity scaling maps to -1.
    out = torch.full((len(wanted), 1, *SEVERITY_SIZE), -1.0, dtype=torch.float32)
    for i, index in enumerate(indices):
        grey = torch.from_numpy(np.divide(tissue[index][None], 255, dtype=np.float32))
        resized = anti_aliased_resize(grey, (rows, columns))
        out[i, 0, top : top + rows, left : left + columns] = resized[0] * 2.0 - 1.0
    return out


CHUNK_FRAMES = 1
"""Frames the B-line shrink takes to float at full resolution at once: what bounds the
pre-processing's memory whatever the cine's length (paper 003's input is made one frame at a
time always: its anti-aliased resize costs about 0.3 GB above the cine for 4 frames of
1920 x 1080, 0.25 GB for 2 and 0.1 GB for 1, bench/memory.py). Since the B-line shrink is
written out, one frame at a time is also its fastest: 13 ms for a 60-frame 640 x 480 cine,
18 ms with the whole cine at once (one core)."""


def frame_chunks(n_frames: int, size: int | None = None) -> list[list[int]]:
    """The 1-based frame numbers 1..``n_frames`` in consecutive chunks of at most ``size``
    (:data:`CHUNK_FRAMES` when None)."""
    size = size or CHUNK_FRAMES
    return [list(range(a, min(a + size, n_frames + 1))) for a in range(1, n_frames + 1, size)]


def fit_label_maps(
    masks: npt.NDArray[np.integer[Any]], cine: Cine, background: int
) -> npt.NDArray[np.uint8]:
    """Label maps of source frames in paper 003's model geometry, as :func:`severity_frames`
    makes the frames: the tissue region fitted into 200 x 260 by nearest-neighbour sampling
    (pixel centres) and padded with ``background``.

    Parameters
    ----------
    masks:
        Labels 0..``background``, shape (frames, rows, columns) of the source image.
    cine:
        The cine the masks belong to (its tissue region is cut out).
    background:
        The largest label; padding gets it.

    Returns
    -------
    numpy.ndarray
        uint8, shape (frames, 200, 260).
    """
    if masks.ndim != 3 or masks.shape[1:] != cine.frames.shape[1:3]:
        raise ValueError(
            f"Label maps of shape {masks.shape} do not fit frames of "
            f"{cine.frames.shape[1]} x {cine.frames.shape[2]}."
        )
    r = cine.region
    labels = np.asarray(masks[:, r.y0 : r.y1, r.x0 : r.x1], np.uint8)
    # FitAndPad pads with 0: shift the labels so that 0 is the background while it runs.
    shifted = (labels + 1) % (background + 1)
    fitted = FitAndPad(SEVERITY_SIZE, mode="nearest-exact")(shifted).numpy()
    return np.asarray((fitted.astype(np.int64) + background) % (background + 1), np.uint8)


def to_source_geometry(
    mask: npt.NDArray[np.generic], cine: Cine, background: int = 0
) -> npt.NDArray[np.generic]:
    """Map a label map from the fitted model geometry back onto the full source image.

    Undoes :class:`FitAndPad` (as used by :func:`severity_frames`) with nearest-neighbour
    sampling, so labels stay labels, and places the result in the tissue region.

    Parameters
    ----------
    mask:
        Labels, shape (rows, columns) of the model's input (200 x 260 for paper 003).
    cine:
        The cine the model's input was made from.
    background:
        The label written outside the tissue region.

    Returns
    -------
    numpy.ndarray
        Same dtype as ``mask``, shape (rows, columns) of the source image.
    """
    if mask.ndim != 2:
        raise ValueError(f"to_source_geometry needs a 2D label map; got shape {mask.shape}.")
    r = cine.region
    top, left, rows, cols = _fitted_place(
        (r.height, r.width), (int(mask.shape[0]), int(mask.shape[1]))
    )
    fitted = mask[top : top + rows, left : left + cols]
    # Nearest neighbour by pixel centres, for any label dtype (cv2 has no int64).
    ys = ((np.arange(r.height) + 0.5) * rows / r.height).astype(np.intp)
    xs = ((np.arange(r.width) + 0.5) * cols / r.width).astype(np.intp)
    out = np.full(cine.frames.shape[1:], background, dtype=mask.dtype)
    out[r.y0 : r.y1, r.x0 : r.x1] = fitted[np.ix_(ys, xs)]
    return out


def box_to_source(
    box: tuple[float, float, float, float], cine: Cine, model_size: tuple[int, int] = SEVERITY_SIZE
) -> tuple[int, int, int, int]:
    """Map a box (x0, y0, x1, y1) in the fitted model geometry onto source image pixels.

    The inverse of :class:`FitAndPad` for coordinates, as :func:`to_source_geometry` is for
    label maps: padding is removed, the box is scaled to the tissue region and shifted to its
    place in the image. The result is clipped to the tissue region, ends exclusive; a box lying
    entirely in the padding collapses to a zero-area box on the region's edge.
    """
    r = cine.region
    top, left, rows, cols = _fitted_place((r.height, r.width), model_size)
    sx, sy = r.width / cols, r.height / rows
    x0, y0, x1, y1 = box
    xs = np.clip([(x0 - left) * sx, (x1 - left) * sx], 0, r.width)
    ys = np.clip([(y0 - top) * sy, (y1 - top) * sy], 0, r.height)
    return (
        r.x0 + int(np.floor(xs[0])),
        r.y0 + int(np.floor(ys[0])),
        r.x0 + int(np.ceil(xs[1])),
        r.y0 + int(np.ceil(ys[1])),
    )


def _fitted_place(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where :class:`FitAndPad` puts an image of ``size`` in ``box``: the top and left of the
    fitted image (centred, an odd remainder of padding after, as its symmetric pad) and its
    rows and columns."""
    rows, columns = _fitted_size(size, box)
    return (box[0] - rows) // 2, (box[1] - columns) // 2, rows, columns


def _fitted_size(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The largest (rows, columns) with the aspect ratio of ``size`` that fits in ``box``."""
    scale = min(box[0] / size[0], box[1] / size[1])
    return (
        min(box[0], max(1, round(size[0] * scale))),
        min(box[1], max(1, round(size[1] * scale))),
    )


def _frame_indices(frames: Sequence[int], n_frames: int) -> npt.NDArray[np.intp]:
    numbers = np.asarray(frames, dtype=np.intp)
    if numbers.ndim != 1 or numbers.size == 0:
        raise ValueError("Frame numbers must be a non-empty sequence of integers.")
    if numbers.min() < 1 or numbers.max() > n_frames:
        raise ValueError(
            f"Frame numbers must be between 1 and {n_frames}; got {frames}. "
            "Frame indexing is 1-based."
        )
    return numbers - 1
