"""Frames with pixel masks for paper 003's segmentation networks: simulated truth or a site's own
LabelMe polygons, in the model's geometry, with the balancing and augmentations of the paper.

* :class:`MaskedCine`: a DICOM cine, its patient and the frames that have a mask. Simulated
  exams give every ``every``-th frame (:func:`simulated_masked_cines`); a folder of LabelMe files
  gives the frames someone drew (:func:`read_labelme_cines`).
* :func:`load_masked_frames` decodes the cines as the node does and fits frames and masks into
  200 x 260 (:func:`severity_frames`, :func:`fit_label_maps`).
* :func:`balanced_weights`: the paper balances each batch "across patients and scores"; here a
  frame is drawn by picking a score uniformly, then a patient with frames of that score, then one
  of that patient's frames of that score.
* :func:`augmentations`: the paper's on-line augmentations, each applied with probability 0.33,
  as MONAI dictionary transforms on image and mask together (section IV-C.4).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import torch
from monai.transforms import (
    Compose,
    Lambdad,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
)
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from lus_pacs.errors import AnnotationError
from lus_pacs.families.segmentation.network import BACKGROUND
from lus_pacs.imaging.decode import read_cine
from lus_pacs.inference.transforms import SEVERITY_SIZE, fit_label_maps, severity_frames
from lus_pacs.training.annotations import read_labelme
from lus_pacs.training.simulated import SimulatedCine

AUGMENTATION_PROBABILITY = 0.33
"""Each of the paper's augmentations is applied to a frame with this probability."""

UNSCORED = -1
"""The score group of frames with no score (probe off the skin): balanced as a score of its own."""


@dataclass(frozen=True)
class MaskedCine:
    """A cine and the masks of some of its frames."""

    dicom: Path
    patient_id: str
    frames: tuple[int, ...]
    """1-based frames that have a mask."""
    scores: tuple[int, ...]
    """Each listed frame's score (the highest class in its mask), or :data:`UNSCORED`."""
    load_masks: Callable[[], npt.NDArray[np.uint8]] = field(compare=False, repr=False)
    """(len(frames), rows, columns) labels 0-3 and :data:`BACKGROUND`, source geometry."""


def simulated_masked_cines(sims: Iterable[SimulatedCine], every: int = 1) -> list[MaskedCine]:
    """Every ``every``-th frame of each simulated cine with its true mask."""
    out = []
    for sim in sims:
        kept = sim.frames[::every]
        indices = [f.frame - 1 for f in kept]

        def masks(sim: SimulatedCine = sim, indices: list[int] = indices) -> npt.NDArray[np.uint8]:
            return sim.masks()[indices]

        out.append(
            MaskedCine(
                dicom=sim.dicom,
                patient_id=sim.patient_id,
                frames=tuple(f.frame for f in kept),
                scores=tuple(UNSCORED if f.severity is None else f.severity for f in kept),
                load_masks=masks,
            )
        )
    return out


def read_labelme_cines(folder: Path) -> list[MaskedCine]:
    """The frames drawn in the LabelMe files under ``folder`` (searched recursively).

    Each file's ``imagePath`` names the DICOM cine relative to the file and its ``frame`` the
    1-based frame (a file without ``frame`` is frame 1). The patient is the cine's PatientID.

    Raises
    ------
    AnnotationError
        A file is not LabelMe JSON, names a missing or non-DICOM cine, a frame outside it, or has
        another size than the cine's frames.
    """
    drawn: dict[Path, dict[int, Path]] = defaultdict(dict)
    for path in sorted(folder.rglob("*.json")):
        frame = read_labelme(path)
        dicom = (path.parent / frame.image_path).resolve()
        number = 1 if frame.frame is None else frame.frame
        if number < 1:
            raise AnnotationError(f"{path}: frame {number}; frames are 1-based")
        drawn[dicom][number] = path
    cines = []
    for dicom, files in drawn.items():
        try:
            header = pydicom.dcmread(dicom, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise AnnotationError(
                f"{next(iter(files.values()))}: cine {dicom.name}: {exc}"
            ) from exc
        n_frames = int(header.get("NumberOfFrames", 1) or 1)
        size = (int(header.Rows), int(header.Columns))
        outside = sorted(f for f in files if f > n_frames)
        if outside:
            raise AnnotationError(
                f"{files[outside[0]]}: cine {dicom.name} has {n_frames} frames, not {outside[0]}"
            )
        numbers = tuple(sorted(files))
        masks = [read_labelme(files[n]).mask for n in numbers]
        wrong = [files[n] for n, m in zip(numbers, masks, strict=True) if m.shape != size]
        if wrong:
            raise AnnotationError(f"{wrong[0]}: image size differs from {dicom.name}'s {size}")
        stack = np.stack(masks)

        def drawn_masks(stack: npt.NDArray[np.uint8] = stack) -> npt.NDArray[np.uint8]:
            return stack

        cines.append(
            MaskedCine(
                dicom=dicom,
                patient_id=str(header.get("PatientID", "")) or dicom.name,
                frames=numbers,
                scores=tuple(_highest_score(m) for m in stack),
                load_masks=drawn_masks,
            )
        )
    return cines


def _highest_score(mask: npt.NDArray[np.uint8]) -> int:
    present = [int(c) for c in np.unique(mask) if c != BACKGROUND]
    return max(present) if present else UNSCORED


@dataclass(frozen=True)
class MaskedFrames:
    """Frames and masks in model geometry."""

    x: torch.Tensor
    """(frames, 1, 200, 260) float16 in [-1, 1], padding -1."""
    y: torch.Tensor
    """(frames, 200, 260) uint8 labels 0-4."""
    patient: tuple[str, ...]
    score: npt.NDArray[np.intp]
    """Each frame's score group (:data:`UNSCORED` for none)."""

    def __len__(self) -> int:
        return len(self.score)


def load_masked_frames(cines: Sequence[MaskedCine], progress: bool = True) -> MaskedFrames:
    """Decode each cine as the node does and fit its masked frames and masks into 200 x 260."""
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    patients: list[str] = []
    scores: list[int] = []
    for masked in tqdm(cines, desc="frames", unit="cine", disable=not progress):
        cine = read_cine(masked.dicom)
        xs.append(severity_frames(cine, masked.frames).to(torch.float16))
        ys.append(torch.from_numpy(fit_label_maps(masked.load_masks(), cine, BACKGROUND)))
        patients.extend([masked.patient_id] * len(masked.frames))
        scores.extend(masked.scores)
    if not xs:
        raise ValueError("No masked frame to load.")
    return MaskedFrames(
        x=torch.cat(xs),
        y=torch.cat(ys),
        patient=tuple(patients),
        score=np.asarray(scores, dtype=np.intp),
    )


def balanced_weights(patients: Sequence[str], scores: Sequence[int]) -> torch.Tensor:
    """Sampling weights (summing to 1) that make every score group equally likely, every
    patient equally likely within a score group and every frame within its patient and group."""
    groups = Counter(zip(scores, patients, strict=True))
    patients_per_score = Counter(score for score, _ in groups)
    weights = [
        1.0 / (len(patients_per_score) * patients_per_score[s] * groups[(s, p)])
        for s, p in zip(scores, patients, strict=True)
    ]
    return torch.tensor(weights, dtype=torch.float64)


def augmentations(probability: float = AUGMENTATION_PROBABILITY) -> Compose:
    """The paper's on-line augmentations on ``{"image": (1, H, W) in [0, 1], "label": (1, H, W)}``.

    Affine (translation 15 %, rotation 15 degrees, scale 45 %, shear 4.5 degrees), multiplication
    by a constant (45 %), Gaussian blur (sigma up to 3/4 pixel), contrast (45 % about the mean),
    horizontal flip and additive Gaussian noise (sigma up to 0.015), each with ``probability``.
    The label is resampled by nearest neighbour. Callers shift the labels so that the background
    is 0 while the affine runs (its padding is 0), see :func:`augment_batch`.
    """
    rows, cols = SEVERITY_SIZE
    shear = math.tan(math.radians(4.5))
    return Compose(
        [
            RandAffined(
                keys=("image", "label"),
                prob=probability,
                rotate_range=math.radians(15),
                shear_range=(shear, shear),
                translate_range=(0.15 * rows, 0.15 * cols),
                scale_range=(0.45, 0.45),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandScaleIntensityd(keys="image", factors=0.45, prob=probability),
            RandGaussianSmoothd(
                keys="image", sigma_x=(0.25, 0.75), sigma_y=(0.25, 0.75), prob=probability
            ),
            RandScaleIntensityFixedMeand(keys="image", factors=0.45, prob=probability),
            RandFlipd(keys=("image", "label"), spatial_axis=1, prob=probability),
            RandGaussianNoised(keys="image", std=0.015, prob=probability),
            Lambdad(keys="image", func=lambda x: x.clamp(0.0, 1.0)),
        ]
    )


def augment_batch(
    transform: Compose, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment frames ``(B, 1, H, W)`` in [-1, 1] and labels ``(B, H, W)`` sample by sample."""
    images, labels = [], []
    for image, label in zip(x, y, strict=True):
        shifted = ((label.long() + 1) % (BACKGROUND + 1)).float()[None]
        out = transform({"image": (image.float() + 1) / 2, "label": shifted})
        images.append(torch.as_tensor(out["image"]) * 2 - 1)
        labels.append(
            (torch.as_tensor(out["label"])[0].round().long() + BACKGROUND) % (BACKGROUND + 1)
        )
    return torch.stack(images).as_subclass(torch.Tensor), torch.stack(labels).as_subclass(
        torch.Tensor
    )
