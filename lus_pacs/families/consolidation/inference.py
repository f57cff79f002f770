"""Running the consolidation bundle (paper 002) on a cine: presence, probability, and boxes.

The clip is ``CLIP_FRAMES`` frames evenly spaced over the cine, each frame's tissue region at
``CLIP_SIZE`` pixels. When the probability passes the bundle's threshold, a saliency map of the
classifier's logit gives a value per clip pixel; on the ``saliency_frames`` most salient clip
frames, the top 10 % of pixels are kept, split into connected regions, and each region's
enclosing box is mapped back to the source frame and its pixels.

The saliency is gradient x input by default (:func:`gradient_saliency`: one backward pass,
smoothed): on the held-out simulated cines its boxes hit the true consolidation on 0.96 of the
frames against 0.46 for occlusion sensitivity (MONAI :class:`~monai.visualize.
OcclusionSensitivity`, :func:`occlusion_saliency`, 2,048 occluded clips, seconds a cine),
which stays available (``[consolidation] saliency = "occlusion"``); see the model card.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from lus_pacs.domain import Cine, ConsolidationBox, ConsolidationFindings, ModelInfo
from lus_pacs.families.consolidation.clips import (
    cine_indices,
    clip_frames,
    clip_tensor,
    from_clip_box,
)
from lus_pacs.families.consolidation.network import CLIP_FRAMES, ConsolidationClassifier
from lus_pacs.inference.bundle import count_setting, load_bundle, probability_setting

Box = tuple[int, int, int, int]
TOP_FRACTION = 0.10
"""The share of a frame's pixels kept as salient (the paper's top 10 %)."""


SALIENCY_METHODS = ("gradient", "occlusion")

GRADIENT_SMOOTHING = (1.0, 2.0, 2.0)
"""Gaussian sigma (clip frames, rows, columns) that turns gradient x input into regions."""


def saliency(
    model: ConsolidationClassifier, clip: torch.Tensor, method: str = "gradient"
) -> npt.NDArray[np.float32]:
    """The saliency map of the logit, (T, H, W), by ``method`` (:data:`SALIENCY_METHODS`)."""
    if method == "gradient":
        return gradient_saliency(model, clip)
    if method == "occlusion":
        return occlusion_saliency(model, clip)
    raise ValueError(f"Unknown saliency {method!r}; choose one of {', '.join(SALIENCY_METHODS)}.")


def gradient_saliency(
    model: ConsolidationClassifier, clip: torch.Tensor
) -> npt.NDArray[np.float32]:
    """Gradient x input of the logit, in magnitude, smoothed by :data:`GRADIENT_SMOOTHING`,
    (T, H, W): where changing the pixels changes the logit most, weighted by how bright they
    are. One forward and one backward pass in eval mode; the model's gradients are left as
    they were (none are accumulated in its parameters)."""
    model.eval()
    x = clip.unsqueeze(0).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logit = model(x)[0]
        (grad,) = torch.autograd.grad(logit, x)
    weighted = np.abs((grad[0] * clip).detach().numpy()).reshape(clip.shape[1:])
    return ndimage.gaussian_filter(weighted, sigma=GRADIENT_SMOOTHING).astype(np.float32)


def occlusion_saliency(
    model: ConsolidationClassifier, clip: torch.Tensor
) -> npt.NDArray[np.float32]:
    """Occlusion sensitivity of the logit, (T, H, W): how much hiding a patch around each
    pixel lowers the logit (higher = more evidence of consolidation there)."""
    from monai.visualize import OcclusionSensitivity

    # activate=False: the raw logit. MONAI's default softmax over a single output is 1 everywhere.
    # mode="gaussian" darkens each patch to black at its centre (clips are in [0, 1]) and
    # blends overlapping patches by weight. Replacing a patch by the image mean (mean_img)
    # barely changes a dark, hypoechoic consolidation, so its saliency went to the bright comet
    # tails below it instead (see models/consolidation/docs/README.md).
    # The wrapper must be in eval mode: MONAI restores the wrapper's mode after its passes,
    # and a fresh module is in training mode, which would leave the classifier's batch norm
    # updating its statistics on occluded clips (and every later cine scored in train mode).
    occlusion = OcclusionSensitivity(
        nn_module=_Logit(model).eval(),
        mask_size=(4, 8, 8),
        overlap=0.5,
        n_batch=64,
        mode="gaussian",
        activate=False,
        verbose=False,
    )
    with torch.no_grad():
        maps, _ = occlusion(clip.unsqueeze(0))
        model.eval()
        logit = float(model(clip.unsqueeze(0))[0])
    # maps: the logit with the patch around each voxel hidden, (1, 1, T, H, W[, 1]).
    hidden = maps[0, 0].numpy().reshape(clip.shape[1:])
    return (logit - hidden).astype(np.float32)


class _Logit(torch.nn.Module):
    """The classifier with a class axis, as OcclusionSensitivity expects."""

    def __init__(self, model: ConsolidationClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).unsqueeze(-1)


def boxes_of(frame_saliency: npt.NDArray[np.float32], top: float = TOP_FRACTION) -> list[Box]:
    """Enclosing boxes (x0, y0, x1, y1, ends exclusive) of the connected regions of the frame's
    top ``top`` share of pixels."""
    threshold = np.quantile(frame_saliency, 1 - top)
    if not np.isfinite(threshold) or frame_saliency.max() <= frame_saliency.min():
        return []  # a flat map points nowhere
    # The ranking is what counts: hiding any patch may raise the logit a little (the
    # occluder itself looks like tissue), the most salient patches raise it least.
    # Pixels tied at the frame's minimum are background, even when they fill the quantile.
    mask = (frame_saliency >= threshold) & (frame_saliency > frame_saliency.min())
    labels, n = ndimage.label(mask)
    boxes = []
    for rows, cols in ndimage.find_objects(labels)[:n]:
        boxes.append((cols.start, rows.start, cols.stop, rows.stop))
    return boxes


def iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def weighted_iou(predicted: Sequence[Box], truth: Sequence[Box]) -> float:
    """Each predicted box's best IoU with a true box, weighted by the predicted box's area:
    a large box that misses counts more than a speck that misses. 0 when nothing predicted."""
    if not predicted:
        return 0.0
    areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) for b in predicted], dtype=np.float64)
    best = np.array([max((iou(p, t) for t in truth), default=0.0) for p in predicted])
    return float((areas * best).sum() / areas.sum())


@dataclass(frozen=True, eq=False)
class ConsolidationModel:
    """The loaded bundle and its decision settings."""

    network: ConsolidationClassifier
    model: ModelInfo
    threshold: float
    saliency_frames: int
    saliency_method: str = "gradient"
    logit_offset: float = 0.0
    """Added to the clip's logit before the threshold: a site's calibration
    (:mod:`lus_pacs.families.calibration`); 0 runs the bundle as shipped."""

    def calibrated(self, offset: float, version: str) -> ConsolidationModel:
        """This model with a site's calibration: ``offset`` added to every cine's logit,
        ``version`` reported instead of the bundle's."""
        return replace(self, logit_offset=offset, model=replace(self.model, version=version))

    def clip_logit(self, cine: Cine) -> float:
        """The network's logit of the cine, before any site calibration."""
        return self._logit(clip_tensor(clip_frames(cine), cine_indices(cine)))

    def _logit(self, clip: torch.Tensor) -> float:
        with torch.no_grad():
            return float(self.network(clip.unsqueeze(0))[0])

    @classmethod
    def load(
        cls, folder: Path, saliency_frames: int | None = None, saliency_method: str = "gradient"
    ) -> ConsolidationModel:
        bundle = load_bundle(folder, expected=(ConsolidationClassifier,))
        network = bundle.network
        assert isinstance(network, ConsolidationClassifier)
        # The bundle's own is checked whether or not the settings replace it (as segmentation's
        # mc_samples): a damaged bundle is refused alike either way.
        bundled = count_setting(bundle, "saliency_frames", folder)
        return cls(
            network=network,
            model=bundle.model,
            threshold=probability_setting(bundle, "threshold", folder),
            saliency_frames=bundled if saliency_frames is None else saliency_frames,
            saliency_method=saliency_method,
        )

    def predict(self, cine: Cine) -> ConsolidationFindings:
        indices = cine_indices(cine)
        clip = clip_tensor(clip_frames(cine), indices)
        logit = torch.tensor(self._logit(clip) + self.logit_offset, dtype=torch.float32)
        probability = float(torch.sigmoid(logit))
        present = probability >= self.threshold
        boxes: list[ConsolidationBox] = []
        if present and self.saliency_frames > 0:
            maps = saliency(self.network, clip, self.saliency_method)
            strongest = np.argsort(-maps.reshape(CLIP_FRAMES, -1).max(axis=1))
            # Boxes are drawn on intact frames only (a damaged frame is never shown as one), on
            # distinct frames: a cine of fewer frames than the clip repeats them in it, and
            # the same box came twice on one frame, in place of the next frame's.
            intact = cine.intact()
            distinct: dict[int, int] = {}
            for t in strongest:
                if intact[indices[t]]:
                    distinct.setdefault(int(indices[t]), int(t))
            strongest = np.array(list(distinct.values()), dtype=np.intp)
            for t in sorted(strongest[: self.saliency_frames]):
                frame = int(indices[t]) + 1
                for box in boxes_of(maps[t]):
                    boxes.append(ConsolidationBox(frame, from_clip_box(box, cine)))
        return ConsolidationFindings(
            present=present, probability=probability, boxes=tuple(boxes), model=self.model
        )
