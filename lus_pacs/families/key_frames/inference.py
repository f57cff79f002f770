"""Running the key-frame bundle (paper 004) on a cine: which frame a clinician would keep, and
whether any is worth keeping.

Every frame is prepared as in training: the tissue region with the burned-in overlay set to
black (:func:`lus_pacs.families.key_frames.similarity.masked_tissue`), fitted into a 256 x 256
square with its aspect kept, then the 224 x 224 centre crop, grey levels in [0, 1]. The network
gives each frame a keep probability and three reason probabilities (:data:`OUTPUTS`).

* The best frame is the one with the highest keep probability.
* The cine is USABLE when that probability reaches the bundle's ``threshold``; otherwise it is
  POOR, and its reasons are those whose probability, averaged over the frames, reaches
  ``reason_threshold``, strongest first.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.domain import Cine, KeyFrameFindings, ModelInfo, PoorReason, Quality
from lus_pacs.families.key_frames.network import (
    INPUT_SIZE,
    OUTPUTS,
    RESIZE,
    FrameOutput,
    KeyFrameNet,
)
from lus_pacs.families.key_frames.similarity import tissue_mask
from lus_pacs.inference.bundle import load_bundle, probability_setting
from lus_pacs.inference.runtime import Compiled, Runtime, compile_module

_BATCH = 4
"""Frames through the network at once: on one core 4 is as fast as 8 (8.6 against 8.7 ms a
frame) and 32 is slower; at 4 the network's largest tensor (12 MB) stays below the compact
allocator's mmap threshold (:func:`~lus_pacs.inference.threads.compact_allocator`), so it is
reused from the heap instead of mapped and faulted in at every call."""
_REASONS = {
    FrameOutput.NO_CONTACT: PoorReason.NO_CONTACT,
    FrameOutput.RIB_SHADOW: PoorReason.RIB_SHADOW,
    FrameOutput.NO_PLEURA: PoorReason.NO_PLEURA,
}


def fit_square(frame: npt.NDArray[np.uint8], size: int = RESIZE) -> npt.NDArray[np.uint8]:
    """``frame`` scaled to fit ``size`` x ``size`` with its aspect kept, centred on black."""
    rows, cols = frame.shape
    scale = size / max(rows, cols)
    new_rows = min(size, max(1, round(rows * scale)))
    new_cols = min(size, max(1, round(cols * scale)))
    smooth = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(frame, (new_cols, new_rows), interpolation=smooth)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = small
    return out


def frame_images(cine: Cine) -> npt.NDArray[np.uint8]:
    """Every frame of the cine as the network's training images: (frames, 256, 256) uint8."""
    return np.concatenate(list(image_batches(cine)))


def image_batches(cine: Cine, size: int = _BATCH) -> Iterator[npt.NDArray[np.uint8]]:
    """:func:`frame_images` ``size`` frames at a time, made as they are asked for: a 1000-frame
    cine never holds its 65 MB of images at once.

    Frame by frame (the overlay blacked out in a copy of one frame at a time), so that no copy
    of the whole cine is made."""
    valid = tissue_mask(cine)
    tissue = cine.tissue()
    for first in range(0, len(tissue), size):
        chunk = tissue[first : first + size]
        yield np.stack([fit_square(np.where(valid, f, 0).astype(np.uint8)) for f in chunk])


def to_input(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """(n, 256, 256) uint8 images as the network's input: (n, 1, 224, 224) centre crops in
    [0, 1]."""
    start = (images.shape[1] - INPUT_SIZE) // 2
    crop = images[:, start : start + INPUT_SIZE, start : start + INPUT_SIZE]
    return torch.from_numpy(np.ascontiguousarray(crop)).unsqueeze(1).float() / 255.0


def frame_probabilities(
    network: KeyFrameNet | Compiled, images: npt.NDArray[np.uint8]
) -> npt.NDArray[np.float32]:
    """Sigmoid of every output for each image, (n, len(OUTPUTS)): the network run in eval mode,
    or the network compiled for a runtime (:func:`~lus_pacs.inference.runtime.compile_module`)."""
    run = compile_module(network, [], Runtime.TORCH) if isinstance(network, nn.Module) else network
    out = []
    for start in range(0, len(images), _BATCH):
        (logits,) = run(to_input(images[start : start + _BATCH]))
        out.append(torch.sigmoid(logits).numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def decide(
    probabilities: npt.NDArray[np.float32],
    model: ModelInfo,
    threshold: float = 0.5,
    reason_threshold: float = 0.5,
    intact: npt.NDArray[np.bool_] | None = None,
) -> KeyFrameFindings:
    """The findings from per-frame probabilities (frames, len(OUTPUTS)); the best frame is
    chosen among the ``intact`` ones (:meth:`~lus_pacs.domain.Cine.intact`) when any is."""
    keep = probabilities[:, OUTPUTS.index(FrameOutput.KEEP)]
    eligible = intact if intact is not None and intact.any() else np.ones(len(keep), bool)
    best = int(np.argmax(np.where(eligible, keep, -np.inf)))
    usable = bool(keep[best] >= threshold)
    reasons: tuple[PoorReason, ...] = ()
    if not usable:
        means = {
            reason: float(probabilities[:, OUTPUTS.index(output)].mean())
            for output, reason in _REASONS.items()
        }
        strongest = sorted(means, key=lambda r: -means[r])
        reasons = tuple(r for r in strongest if means[r] >= reason_threshold)
    return KeyFrameFindings(
        best_frame=best + 1,
        frame_scores=tuple(float(p) for p in keep),
        quality=Quality.USABLE if usable else Quality.POOR,
        reasons=reasons,
        model=model,
    )


@dataclass(frozen=True, eq=False)
class KeyFrameModel:
    """The loaded bundle and its decision thresholds."""

    network: KeyFrameNet
    model: ModelInfo
    threshold: float
    reason_threshold: float
    compiled: Compiled
    """The network on the runtime it was loaded for."""

    @classmethod
    def load(cls, folder: Path, runtime: Runtime | str = Runtime.ONNX) -> KeyFrameModel:
        bundle = load_bundle(folder, expected=(KeyFrameNet,))
        network = bundle.network
        assert isinstance(network, KeyFrameNet)
        example = torch.zeros(1, 1, INPUT_SIZE, INPUT_SIZE)
        return cls(
            network=network.eval(),
            model=bundle.model,
            threshold=probability_setting(bundle, "threshold", folder),
            reason_threshold=probability_setting(bundle, "reason_threshold", folder),
            compiled=compile_module(network, [example], runtime),
        )

    def predict(self, cine: Cine) -> KeyFrameFindings:
        probabilities = np.concatenate(
            [frame_probabilities(self.compiled, images) for images in image_batches(cine)]
        )
        return decide(
            probabilities, self.model, self.threshold, self.reason_threshold, cine.intact()
        )
