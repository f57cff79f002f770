"""How alike two frames of a cine are, as paper 004 measures it to pick frames for training.

Müller, Eccel and Robert, "Extracting high value lung ultrasound images from video" (EPFL
2020). Every measure looks at the tissue region only, with the burned-in overlay removed
(:func:`tissue_mask`): the paper's static mask, here ``Cine.region`` and ``Cine.overlay_mask``.

* :func:`mean_brightness`: one number per frame, the mean grey level of the tissue. The paper's
  first selection rule keeps frames whose brightness lies outside the mean +- one standard
  deviation of the true frames: air (probe lifted) and bone are extreme in echogenicity.
* :func:`local_brightness`: the mean grey level in N x N windows moved by N/2, a coarse map of
  where the image is bright. The paper's N = 200 pixels on 1080 x 792 images gives 10 x 7
  windows; :func:`window_size` scales N with the side of the tissue region (square root of its
  area) so that a region of any size gets about as many windows.
* :class:`CnnEncoder`: the per-frame CNN of our own trained B-line bundle (paper 001), frozen,
  its last feature map average-pooled to 4 x 4 and flattened. The paper uses an ImageNet
  ResNet-18 and averages its 512 pooled maps over channels into one 4 x 4 matrix; no ImageNet
  weights can be downloaded here, and averaging our encoder's 16 channels makes every frame look
  alike (a frame of noise scores about 0.93 against a lung frame, the flattened maps about
  0.5; the paper's bounds start at 0.75, above its noise level of 0.77).
* :func:`cosine_similarity`: one frame's encoding against every frame's, for either encoding.
"""

from __future__ import annotations

import logging
import math
from enum import StrEnum
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.domain import Cine, GreyFrames, ModelInfo
from lus_pacs.errors import ModelError
from lus_pacs.families.b_lines.network import (
    C2DLSTM,
    C2DAttention,
    C2DLSTMAttention,
    MeasuredBLines,
)
from lus_pacs.inference.bundle import load_bundle
from lus_pacs.inference.transforms import B_LINE_SIZE

FloatArray = npt.NDArray[np.float64]
_log = logging.getLogger(__name__)

PAPER_WINDOW = 200
"""The paper's local-brightness window, in pixels of its 1080 x 792 images."""
PAPER_IMAGE = (1080, 792)
POOLED = 4
"""Rows and columns the CNN's last feature map is pooled to (the paper's 4 x 4)."""
_BATCH = 64
"""Frames through the CNN at once: bounds memory on long loops."""


class Encoding(StrEnum):
    """The two encodings the paper compares frames by."""

    LOCAL_BRIGHTNESS = "local_brightness"
    """:func:`local_brightness`, the paper's "bright matrix"."""
    CNN = "cnn"
    """:class:`CnnEncoder`."""


def tissue_mask(cine: Cine) -> npt.NDArray[np.bool_]:
    """Pixels of the tissue region that are not burned-in overlay, shape of ``cine.tissue()``.

    An overlay that would cover the whole region is not believed (a region declared by the
    scanner over a still, bright image, say): then every pixel of the region counts, and a
    warning names the cine.
    """
    r = cine.region
    valid = np.ones((r.height, r.width), np.bool_)
    if cine.overlay_mask is not None:
        without = ~cine.overlay_mask[r.y0 : r.y1, r.x0 : r.x1]
        if without.any():
            valid = without
        else:
            _log.warning(
                "cine %s: the static overlay found covers its whole tissue region %s; "
                "the region is used unmasked",
                cine.source.sop_instance_uid or cine.source.path,
                r,
            )
    return valid


def masked_tissue(cine: Cine) -> GreyFrames:
    """The tissue region of every frame with overlay pixels set to black (a copy)."""
    tissue = cine.tissue().copy()
    tissue[:, ~tissue_mask(cine)] = 0
    return tissue


def mean_brightness(cine: Cine) -> FloatArray:
    """Mean grey level (0-255) of each frame over its tissue, overlay excluded; shape (frames,)."""
    valid = tissue_mask(cine)
    sums = np.sum(cine.tissue(), axis=(1, 2), where=valid, dtype=np.float64)
    return np.asarray(sums / np.count_nonzero(valid), np.float64)


def window_size(rows: int, cols: int) -> int:
    """The local-brightness window N for a tissue region of ``rows`` x ``cols`` pixels.

    The paper's 200 pixels scaled by the ratio of the sides (square roots of the areas) of the
    region and of the paper's 1080 x 792 images, rounded to an even number (the stride is N/2)
    and at least 2. A 370 x 485 region, our simulated convex probe's, gets N = 92: 8 x 10
    windows where the paper had 10 x 7.
    """
    if rows < 1 or cols < 1:
        raise ValueError(
            f"window_size needs a region of at least 1 x 1 pixels; got {rows} x {cols}."
        )
    scale = math.sqrt(rows * cols / (PAPER_IMAGE[0] * PAPER_IMAGE[1]))
    return max(2, 2 * round(PAPER_WINDOW * scale / 2))


def local_brightness(cine: Cine, window: int | None = None) -> FloatArray:
    """The paper's local-brightness matrix of every frame, shape (frames, rows, columns).

    Windows of ``window`` x ``window`` pixels start every ``window // 2`` pixels from the top
    left corner, as long as they start inside the region less the last half window; a window
    that reaches past the region's edge is cut there (the paper's 1080 x 792 images give 10 x 7
    windows of 200). Each value is the mean grey level (0-255) of the window's tissue pixels,
    overlay excluded; a window with no such pixel is 0.

    Parameters
    ----------
    cine:
        The cine.
    window:
        N, even and at least 2; :func:`window_size` of the tissue region when None.
    """
    valid = tissue_mask(cine)
    n = window_size(*valid.shape) if window is None else window
    if n < 2 or n % 2:
        raise ValueError(f"The local-brightness window must be even and at least 2; got {n}.")
    step = n // 2
    # A window is 2 x 2 blocks of step x step pixels: sum blocks once, then add neighbours.
    pixel_sums = _block_sums(masked_tissue(cine), step)
    counts = _block_sums(valid[None].astype(np.uint8), step)
    window_sums = _pairs(pixel_sums)
    window_counts = _pairs(counts)
    return np.divide(
        window_sums,
        window_counts,
        out=np.zeros_like(window_sums),
        where=window_counts > 0,
    )


def _block_sums(frames: npt.NDArray[np.uint8], step: int) -> FloatArray:
    """Sums over step x step blocks, (frames, block rows, block columns); zero padded to at
    least 2 x 2 blocks so that at least one window exists."""
    count, rows, cols = frames.shape
    block_rows = max(2, -(-rows // step))
    block_cols = max(2, -(-cols // step))
    padded = np.zeros((count, block_rows * step, block_cols * step), np.uint8)
    padded[:, :rows, :cols] = frames
    blocks = padded.reshape(count, block_rows, step, block_cols, step)
    return np.asarray(blocks.sum(axis=(2, 4), dtype=np.float64), np.float64)


def _pairs(blocks: FloatArray) -> FloatArray:
    """Sums over 2 x 2 neighbouring blocks: the windows of N = 2 blocks, stride one block."""
    return np.asarray(
        blocks[:, :-1, :-1] + blocks[:, 1:, :-1] + blocks[:, :-1, 1:] + blocks[:, 1:, 1:],
        np.float64,
    )


class CnnEncoder:
    """The frozen per-frame CNN of a B-line bundle as an image encoder (paper 004's CNN encoder).

    Frames are prepared as the B-line model sees them (tissue region resized to 64 x 64 by area
    averaging, grey levels in [0, 1]), except that the overlay is black here. The convolutions'
    last feature map is average-pooled to 4 x 4 and flattened to ``channels x 16`` values per
    frame.

    Parameters
    ----------
    cnn:
        The convolutional part of the bundle's per-frame CNN, without its final ``Flatten``.
    model:
        The bundle the weights come from, to record with what the encoding was made.
    """

    def __init__(self, cnn: nn.Module, model: ModelInfo) -> None:
        self.network = nn.Sequential(cnn, nn.AdaptiveAvgPool2d(POOLED), nn.Flatten()).eval()
        self.network.requires_grad_(False)
        self.model = model

    @classmethod
    def load(cls, bundle_dir: Path) -> CnnEncoder:
        """The encoder of a B-line bundle folder such as ``models/b_lines``.

        Raises
        ------
        ModelError
            The bundle is incomplete, or its network (the localiser of a measured bundle) has no
            per-frame 2D CNN (the C3D baseline convolves over time and has none).
        """
        bundle = load_bundle(bundle_dir, (C2DLSTMAttention, C2DAttention, C2DLSTM, MeasuredBLines))
        network = bundle.network
        if isinstance(network, MeasuredBLines):  # the shipped bundle: its network localises
            network = network.localiser
        cnn = network.cnn
        if not isinstance(cnn, nn.Sequential) or not isinstance(cnn[-1], nn.Flatten):
            raise ModelError(
                f"{bundle_dir}: the network's 'cnn' is not the per-frame CNN of "
                "lus_pacs.families.b_lines.network (a Sequential ending in Flatten); "
                "train the bundle again."
            )
        return cls(nn.Sequential(*list(cnn)[:-1]), bundle.model)

    def __call__(self, cine: Cine) -> npt.NDArray[np.float32]:
        """Encodings of every frame of the cine, shape (frames, channels x 16)."""
        return self.encode(masked_tissue(cine))

    def encode(self, frames: GreyFrames) -> npt.NDArray[np.float32]:
        """Encodings of grey frames (frames, rows, columns), already cut to the tissue and with
        the overlay black; shape (frames, channels x 16)."""
        if frames.ndim != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"CnnEncoder needs uint8 frames (frames, rows, columns); got {frames.dtype} "
                f"{frames.shape}."
            )
        out = []
        with torch.inference_mode():
            for start in range(0, len(frames), _BATCH):
                x = torch.from_numpy(frames[start : start + _BATCH]).unsqueeze(1).float() / 255.0
                # Area averaging, as b_line_windows prepares the B-line model's input.
                small = nn.functional.interpolate(x, size=B_LINE_SIZE, mode="area")
                out.append(self.network(small).numpy())
        if not out:
            raise ValueError("CnnEncoder needs at least one frame.")
        return np.concatenate(out).astype(np.float32, copy=False)


def cosine_similarity(
    reference: npt.NDArray[np.floating], encodings: npt.NDArray[np.floating]
) -> FloatArray:
    """Cosine similarity of one frame's encoding to each of ``encodings``; shape (frames,).

    Parameters
    ----------
    reference:
        One frame's encoding, e.g. ``encodings[i]``: a local-brightness matrix or a CNN
        encoding (any shape; it is flattened).
    encodings:
        The frames to compare with, shape (frames, *reference.shape).

    Notes
    -----
    A zero encoding (an all-black frame) has no direction: its similarity is 1 to another zero
    encoding and 0 to anything else.
    """
    if encodings.shape[1:] != reference.shape:
        raise ValueError(
            f"Encodings of shape {encodings.shape[1:]} per frame cannot be compared with a "
            f"reference of shape {reference.shape}; pass one frame's encoding as the reference."
        )
    ref = reference.reshape(-1).astype(np.float64)
    many = encodings.reshape(len(encodings), -1).astype(np.float64)
    norms = np.linalg.norm(many, axis=1) * np.linalg.norm(ref)
    zero = norms == 0
    both_zero = zero & ~ref.any() & ~many.any(axis=1)
    cosine = np.divide(many @ ref, norms, out=both_zero.astype(np.float64), where=~zero)
    return np.asarray(np.clip(cosine, -1.0, 1.0), np.float64)
