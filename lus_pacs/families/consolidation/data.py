"""Clips for the consolidation model (paper 002): what it learns from, and the augmentations.

A cine becomes a :class:`ClipSource`: its tissue region, every frame resized to
``CLIP_SIZE`` x ``CLIP_SIZE`` grey, kept as uint8 in memory (a 45-frame cine is 184 kB), with
its label (None when unknown: unlabeled data for self-supervision) and, for simulated cines,
the true consolidation boxes per frame. A clip is ``CLIP_FRAMES`` frames evenly spaced over the
cine (with a random offset in training), as a float tensor (1, T, H, W) in [0, 1].

The augmentations are the paper's Table 2, MONAI transforms on (C, T, H, W):

* spatial, the same for every frame of a clip: random affine (scale +-20 %, translation +-10 %,
  rotation +-10 degrees), horizontal flip (p 0.5), brightness and contrast jitter (0.3),
  Gaussian noise (sd 0.03), random erasing (area 0.02-0.1 of the frame, aspect 0.3-3.3);
* temporal: reversed order (p 0.5), 0-4 frames shuffled (p 0.5), 0-4 frames replaced by other
  frames of the clip (p 0.5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms import (
    Compose,
    RandAffine,
    RandFlip,
    RandGaussianNoise,
    Randomizable,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
    Transform,
)

from lus_pacs.families.consolidation.clips import (
    clip_frames,
    clip_tensor,
    frame_indices,
    to_clip_box,
)
from lus_pacs.families.consolidation.network import CLIP_SIZE

Box = tuple[int, int, int, int]


@dataclass(frozen=True, eq=False)
class ClipSource:
    """One cine, small enough to keep every frame in memory."""

    name: str
    group: str
    """Patient or publisher: the key to split by."""
    frames: npt.NDArray[np.uint8]
    """(n_frames, CLIP_SIZE, CLIP_SIZE) grey tissue region."""
    label: bool | None
    """Consolidation present; None when unknown (unlabeled)."""
    boxes: dict[int, tuple[Box, ...]] = field(default_factory=dict)
    """True consolidation boxes per 0-based frame, in clip pixels (simulated cines)."""

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


class _PerFrame(Transform):
    """Apply a 2D MONAI transform identically to every frame: time becomes the channels."""

    def __init__(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.transform = transform

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        c, t, h, w = clip.shape
        out = torch.as_tensor(self.transform(clip.reshape(c * t, h, w)))
        return out.reshape(c, t, h, w)


class RandErase(Randomizable, Transform):
    """Zero one rectangle of every frame: area 2-10 % of the frame, aspect 0.3-3.3."""

    def __init__(
        self, area: tuple[float, float] = (0.02, 0.1), aspect: tuple[float, float] = (0.3, 3.3)
    ):
        self.area, self.aspect = area, aspect

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        _, _, h, w = clip.shape
        area = self.R.uniform(*self.area) * h * w
        ratio = math.exp(self.R.uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        eh = min(h, max(1, round(math.sqrt(area * ratio))))
        ew = min(w, max(1, round(math.sqrt(area / ratio))))
        y, x = self.R.randint(0, h - eh + 1), self.R.randint(0, w - ew + 1)
        out = clip.clone()
        out[:, :, y : y + eh, x : x + ew] = 0
        return out


class RandReverse(Randomizable, Transform):
    """Play the clip backwards (p 0.5)."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return clip.flip(1) if self.R.rand() < self.prob else clip


class _RandFrameOrder(Randomizable, Transform):
    """With probability ``prob``, pick 0 to ``most`` frames and give them new places in the
    clip's frame order (:meth:`_reorder` says how)."""

    def __init__(self, prob: float = 0.5, most: int = 4) -> None:
        self.prob, self.most = prob, most

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if self.R.rand() >= self.prob:
            return clip
        t = clip.shape[1]
        k = int(self.R.randint(0, self.most + 1))
        chosen = self.R.choice(t, size=min(k, t), replace=False)
        order = np.arange(t)
        self._reorder(order, chosen)
        return clip[:, torch.from_numpy(order)]

    def _reorder(self, order: npt.NDArray[np.int64], chosen: npt.NDArray[np.int64]) -> None:
        raise NotImplementedError


class RandShuffleFrames(_RandFrameOrder):
    """Permute up to ``most`` randomly chosen frames among themselves (p 0.5)."""

    def _reorder(self, order: npt.NDArray[np.int64], chosen: npt.NDArray[np.int64]) -> None:
        order[chosen] = self.R.permutation(chosen)


class RandReplaceFrames(_RandFrameOrder):
    """Replace up to ``most`` frames by copies of other frames of the clip (p 0.5)."""

    def _reorder(self, order: npt.NDArray[np.int64], chosen: npt.NDArray[np.int64]) -> None:
        order[chosen] = self.R.randint(0, len(order), size=len(chosen))


def augmentation(*, temporal: bool = True, seed: int = 0) -> Compose:
    """The paper's Table 2 on a (1, T, H, W) clip; ``temporal=False`` for the ablation."""
    spatial: list[Callable[..., object]] = [
        _PerFrame(
            RandAffine(
                prob=1.0,
                rotate_range=(math.radians(10),),
                translate_range=(0.1 * CLIP_SIZE, 0.1 * CLIP_SIZE),
                scale_range=(0.2, 0.2),
                padding_mode="zeros",
            )
        ),
        RandFlip(prob=0.5, spatial_axis=2),
        RandScaleIntensity(factors=0.3, prob=1.0),  # brightness
        RandScaleIntensityFixedMean(factors=0.3, prob=1.0),  # contrast
        RandGaussianNoise(prob=1.0, std=0.03),
        RandErase(),
    ]
    timing: list[Callable[..., object]] = (
        [RandReverse(), RandShuffleFrames(), RandReplaceFrames()] if temporal else []
    )
    transform = Compose([*spatial, *timing])
    transform.set_random_state(seed=seed)
    return transform


def batch(
    sources: Sequence[ClipSource],
    rng: np.random.Generator,
    size: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[ClipSource]]:
    """``size`` random clips (with replacement), augmented when ``transform`` is given."""
    chosen = [sources[i] for i in rng.integers(0, len(sources), size)]
    clips = []
    for source in chosen:
        clip = clip_tensor(source.frames, frame_indices(source.n_frames, rng))
        clips.append(transform(clip) if transform is not None else clip)
    return torch.stack([torch.as_tensor(c, dtype=torch.float32) for c in clips]), chosen


def simulated_clips(root: Path) -> list[ClipSource]:
    """Every simulated cine under ``root`` with its consolidation label and boxes."""
    from lus_pacs.training.simulated import find_simulated

    out = []
    for sim in find_simulated(root):
        cine = sim.load()
        boxes = {
            f.frame - 1: tuple(to_clip_box(b, cine) for b in f.consolidation_boxes)
            for f in sim.frames
            if f.consolidation_boxes
        }
        out.append(
            ClipSource(
                name=f"{sim.patient_id}/{sim.zone}",
                group=sim.patient_id,
                frames=clip_frames(cine),
                label=sim.consolidation,
                boxes=boxes,
            )
        )
    return out


def dicom_clips(paths: Iterable[Path]) -> list[ClipSource]:
    """Unlabeled cines from any folder of DICOM files a site points at (unreadable skipped)."""
    from lus_pacs.errors import LusPacsError
    from lus_pacs.imaging.decode import read_cine

    out = []
    for path in paths:
        try:
            cine = read_cine(path)
        except LusPacsError:
            continue
        out.append(ClipSource(path.name, cine.source.patient_id, clip_frames(cine), None))
    return out


def pocus_clips(pocus_dir: Path, cache_dir: Path) -> list[ClipSource]:
    """The real POCUS clips, labelled by the dataset's ``consolidations`` column (None where
    not recorded), grouped by publisher."""
    from lus_pacs.errors import LusPacsError
    from lus_pacs.training.pocus import cache_clips, load_clip, read_labels

    clips = read_labels(pocus_dir / "labels.csv")
    cache_clips(clips, pocus_dir, cache_dir, progress=False)
    out = []
    for clip in clips:
        try:
            cine = load_clip(clip, pocus_dir, cache_dir)
        except LusPacsError:  # a video the importer refused: nothing to learn from
            continue
        out.append(ClipSource(clip.file, clip.group, clip_frames(cine), clip.consolidations))
    return out
