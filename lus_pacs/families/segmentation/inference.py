"""Run paper 003's segmentation ensemble on chosen frames of a cine: a label map per frame in
source geometry and its Monte-Carlo dropout uncertainty.

Each chosen frame is fitted into 200 x 260 (:func:`severity_frames`). The ensemble runs split
at its dropout layers (:func:`monte_carlo`): the part before them once per frame, the rest once
with dropout off (its mean softmax, adjusted by the ensemble's per-class bias
(:class:`SegmentationEnsemble`), gives the label map by argmax) and, with ``samples`` of 1 or
more, ``samples`` times with dropout on: the standard deviation over those passes of the chosen
class's probability is each pixel's uncertainty. With ``samples`` of 0 no uncertainty is given.
Label maps and uncertainty go back to the source geometry (:func:`to_source_geometry`); pixels
outside the tissue region are background, with no uncertainty. Both parts run on the chosen
:class:`~lus_pacs.inference.runtime.Runtime` (ONNX Runtime by default).

Dropout draws its masks from a generator seeded by the cine's SOP Instance UID and the frame:
the same cine gives the same masks and uncertainty every time it is processed (a re-sent or
re-processed cine gives identical result objects), and the global random state is untouched.

Which frames are segmented is the caller's choice (:func:`frames_to_segment`): on one CPU core
a 200 x 260 frame costs about 50 ms before the dropout and 33 ms per pass of the three
networks' decoders (ONNX Runtime, the networks arranged for the passes by
:func:`~lus_pacs.families.segmentation.network.arranged_for_passes`), so 40 passes over every
frame of a cine would take minutes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch

from lus_pacs.domain import Cine, ModelInfo, SegmentationFindings, SegmentedClass
from lus_pacs.families.segmentation.network import (
    BACKGROUND,
    SegmentationEnsemble,
    dropout_inputs,
    ensemble_parts,
    label_uncertainty,
    monte_carlo,
    split,
)
from lus_pacs.inference.bundle import count_setting, load_bundle
from lus_pacs.inference.runtime import Runtime, compile_module
from lus_pacs.inference.transforms import SEVERITY_SIZE, severity_frames, to_source_geometry

FRAME_CHOICES = ("best", "key", "all", "every")
"""``best``: the cine's first key frame (the one its KOS marks best in set and a viewer opens
first); ``key``: every key frame the other models chose (best frame, B-line frame,
highest-severity frame); ``all``: every frame; ``every``: every k-th frame."""


def frames_to_segment(
    choice: str, n_frames: int, key_frames: Sequence[int] = (), every: int = 10
) -> tuple[int, ...]:
    """The 1-based frames to segment, sorted and without repeats.

    ``key_frames`` come in the node's order (:class:`~lus_pacs.domain.KeyFrameReason`: the best
    frame first). ``best`` and ``key`` fall back to the middle frame when no key frame is known.
    """
    if choice == "all":
        return tuple(range(1, n_frames + 1))
    if choice == "every":
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}.")
        return tuple(range(1, n_frames + 1, every))
    if choice in ("best", "key"):
        known = [f for f in key_frames if 1 <= f <= n_frames]
        chosen = sorted(set(known[:1] if choice == "best" else known))
        return tuple(chosen) if chosen else ((n_frames + 1) // 2,)
    raise ValueError(f"Unknown frame choice {choice!r}; choose one of {', '.join(FRAME_CHOICES)}.")


class SegmentationModel:
    """The segmentation ensemble; load once, segment many frames.

    Parameters
    ----------
    ensemble:
        The trained :class:`SegmentationEnsemble`.
    model:
        Identifies the bundle in every result.
    samples:
        Monte-Carlo dropout passes per frame (0: one pass with dropout off, no uncertainty).
    runtime:
        Where the networks run.
    """

    def __init__(
        self,
        ensemble: SegmentationEnsemble,
        model: ModelInfo,
        samples: int = 40,
        runtime: Runtime | str = Runtime.ONNX,
    ) -> None:
        if samples < 0:
            raise ValueError(f"samples must be 0 or more, got {samples}.")
        self.ensemble = ensemble.eval()
        self.model = model
        self.samples = samples
        self.runtime = Runtime(runtime)
        members = list(ensemble.members.values())
        example = torch.zeros(1, 1, *SEVERITY_SIZE)
        trunk, tail = ensemble_parts(members, example)
        with torch.inference_mode():
            features = trunk(example)
        ones = [torch.ones(1, features[i].shape[1], 1, 1) for i in dropout_inputs(tail.counts)]
        self._trunk = compile_module(trunk, [example], self.runtime)
        self._tail = compile_module(tail, [*features, *ones], self.runtime)
        self._counts = tail.counts
        self._rates = [float(split(m).dropout.p) for m in members]

    @classmethod
    def load(
        cls, bundle_dir: Path, samples: int | None = None, runtime: Runtime | str = Runtime.ONNX
    ) -> SegmentationModel:
        """The model of a bundle folder such as ``models/segmentation``; ``samples`` defaults
        to the bundle's ``mc_samples``.

        Raises
        ------
        ModelError
            The bundle is incomplete or is not a segmentation bundle, or cannot run on
            ``runtime``.
        """
        bundle = load_bundle(bundle_dir, (SegmentationEnsemble,))
        default = count_setting(bundle, "mc_samples", Path(bundle_dir), minimum=0)
        ensemble = cast(SegmentationEnsemble, bundle.network)  # load_bundle checked the class
        return cls(ensemble, bundle.model, default if samples is None else samples, runtime)

    def probabilities(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Class probabilities ``(B, CLASSES, H, W)`` of 200 x 260 model-geometry frames, from
        the pass with dropout off (what the evaluation measures and the class bias was fitted
        on), and, with Monte-Carlo dropout, the uncertainty of the chosen class ``(B, H, W)``,
        its masks drawn from ``generator``."""
        plain, _, std = monte_carlo(
            self._trunk,
            lambda *inputs: self._tail(*inputs)[0],
            self._counts,
            self._rates,
            x,
            self.samples,
            generator,
        )
        with torch.inference_mode():
            probabilities = self.ensemble.adjust(plain)
        if std is None:
            return probabilities, None
        return probabilities, label_uncertainty(probabilities, std)

    def predict(self, cine: Cine, frames: Sequence[int]) -> SegmentationFindings:
        """Label maps (and uncertainty) of the 1-based ``frames`` of ``cine``."""
        if not frames:
            raise ValueError("Choose at least one frame to segment.")
        x = severity_frames(cine, frames)
        masks: list[npt.NDArray[np.uint8]] = []
        uncertainty: list[npt.NDArray[np.float32]] = []
        seed = zlib.crc32(cine.source.sop_instance_uid.encode())
        for i, frame in enumerate(frames):
            generator = torch.Generator().manual_seed(seed + frame)
            mean, std = self.probabilities(x[i : i + 1], generator)
            label = mean.argmax(dim=1)[0].numpy().astype(np.uint8)
            masks.append(
                np.asarray(to_source_geometry(label, cine, background=BACKGROUND), np.uint8)
            )
            if std is not None:
                u = to_source_geometry(std[0].numpy().astype(np.float32), cine, background=0)
                uncertainty.append(np.asarray(u, np.float32))
        stacked = np.stack(masks)
        u_stack = np.stack(uncertainty) if uncertainty else None
        return SegmentationFindings(
            frames=tuple(int(f) for f in frames),
            masks=stacked,
            uncertainty=u_stack,
            classes=summarise(stacked, u_stack),
            samples=self.samples,
            model=self.model,
        )


def summarise(
    masks: npt.NDArray[np.uint8], uncertainty: npt.NDArray[np.float32] | None
) -> tuple[SegmentedClass, ...]:
    """Per score present in ``masks``: its pixels over all segmented frames and, with
    uncertainty, its mean and maximum there."""
    out = []
    for label in range(BACKGROUND):
        where = masks == label
        pixels = int(where.sum())
        if pixels == 0:
            continue
        mean = maximum = None
        if uncertainty is not None:
            values = uncertainty[where]
            mean, maximum = round(float(values.mean()), 4), round(float(values.max()), 4)
        out.append(
            SegmentedClass(
                score=label,
                pixels=pixels,
                frames=tuple(int(i) for i in np.flatnonzero(where.any(axis=(1, 2)))),
                uncertainty_mean=mean,
                uncertainty_max=maximum,
            )
        )
    return tuple(out)
