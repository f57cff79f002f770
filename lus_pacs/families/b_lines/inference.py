"""Run paper 001's B-line model on a cine: clip probability, B-line frames and key frame.

The cine is cut into 1-second windows overlapping by 20 % (:func:`b_line_windows`) and every
window goes through the network in one batch. From the window outputs:

* probability: the highest window probability; B-lines are present when it reaches the bundle's
  ``threshold``.
* frame scores: each frame's attention averaged over the windows that contain it, divided by the
  highest such average, so the top frame scores 1. With two windows or more, each window
  position's attention is first divided by its mean over the cine's windows: the network gives
  the first position of every window more attention whatever it shows (1.1-1.4 times the
  uniform share) and the last less, and frame 1, seen only at a first position, was the key
  frame of 20 of the 97 real clips called positive (1 after; on the simulated held-out set
  localisation at IoU 0.3 went from 81 % to 100 %).
* key frame: the frame with the highest score inside the most probable window; None when
  B-lines are absent.
* B-line frames: the frames of windows whose probability reaches ``threshold`` and whose score
  reaches the bundle's ``attention_threshold``; the key frame is always one of them.

A bundle whose network is :class:`~lus_pacs.families.b_lines.network.MeasuredBLines` (the
shipped one, from ``lus-pacs fit b-lines``) takes the probability from its measurement head on
the cine's lung measurements instead; the frames then come from the network's most probable
windows, and only when the head calls B-lines present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.domain import BLineFindings, Cine, ModelInfo
from lus_pacs.errors import ModelError
from lus_pacs.families.b_lines.network import ARCHITECTURES, BLineOutput, MeasuredBLines
from lus_pacs.families.measurements import MeasurementHead, check_feature_version
from lus_pacs.inference.bundle import INFERENCE, load_bundle
from lus_pacs.inference.lung_features import FRAME_FEATURES, cine_features
from lus_pacs.inference.transforms import b_line_windows

WINDOW_BATCH = 8
"""1-second windows scored at once."""


class BLineModel:
    """The B-line network with its decision settings; load once, predict on many cines.

    Parameters
    ----------
    network:
        The trained network (put in eval mode here).
    model:
        Identifies the bundle in every result.
    threshold:
        Window probability from which B-lines count as present.
    attention_threshold:
        Frame score (attention, maximum 1) from which a frame of a positive window is a B-line
        frame.
    """

    def __init__(
        self,
        network: nn.Module,
        model: ModelInfo,
        threshold: float,
        attention_threshold: float,
    ) -> None:
        for name, value in (("threshold", threshold), ("attention_threshold", attention_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"BLineModel {name} must be within [0, 1]; got {value}.")
        self.network = network.eval()
        self.model = model
        self.threshold = threshold
        self.attention_threshold = attention_threshold
        self.logit_offset = 0.0
        """Added to the head's logit before the threshold: a site's calibration
        (:meth:`calibrate`); 0 runs the bundle as shipped."""

    @classmethod
    def load(cls, bundle_dir: Path) -> BLineModel:
        """The model of a bundle folder such as ``models/b_lines``.

        Raises
        ------
        ModelError
            The bundle is incomplete, is not a B-line bundle, its thresholds are invalid, or
            its head was fitted on measurements of another ``lung_features`` version.
        """
        bundle = load_bundle(bundle_dir, (*ARCHITECTURES.values(), MeasurementHead, MeasuredBLines))
        if isinstance(bundle.network, MeasurementHead | MeasuredBLines):
            check_feature_version(bundle.config, bundle_dir, "lus-pacs fit b-lines")
        thresholds = []
        for key in ("threshold", "attention_threshold"):
            value = bundle.config.get(key)
            if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ModelError(
                    f"{Path(bundle_dir) / INFERENCE}: '{key}' must be a number within [0, 1]; "
                    f"got {value!r}."
                )
            thresholds.append(float(value))
        return cls(bundle.network, bundle.model, *thresholds)

    def predict(self, cine: Cine, default_fps: float) -> BLineFindings:
        """B-line findings of one cine.

        Parameters
        ----------
        cine:
            The decoded cine.
        default_fps:
            The frame rate assumed when the file gives none (it sets the window length).
        """
        if isinstance(self.network, MeasurementHead):
            return self._predict_measured(cine)
        windows, starts = b_line_windows(cine, default_fps)
        # A few windows at a time: a long cine's windows at once would hold every frame's
        # activations (hundreds of MB); each window is scored on its own in eval mode.
        with torch.inference_mode():
            parts = [
                self.network(windows[i : i + WINDOW_BATCH])
                for i in range(0, len(windows), WINDOW_BATCH)
            ]
        out = BLineOutput(
            torch.cat([p.logit for p in parts]), torch.cat([p.attention for p in parts])
        )
        probabilities = torch.sigmoid(out.logit).numpy()
        if not isinstance(self.network, MeasuredBLines):
            return findings_from_windows(
                probabilities,
                out.attention.numpy(),
                starts,
                cine.n_frames,
                threshold=self.threshold,
                attention_threshold=self.attention_threshold,
                model=self.model,
                intact=cine.intact(),
            )
        # The head decides; the network's most probable windows say where, so a cine the head
        # calls positive always has its key frame and B-line frames.
        probability = self._calibrated(self.clip_logit(cine))
        where = findings_from_windows(
            probabilities,
            out.attention.numpy(),
            starts,
            cine.n_frames,
            threshold=min(self.threshold, float(probabilities.max())),
            attention_threshold=self.attention_threshold,
            model=self.model,
            intact=cine.intact(),
        )
        present = probability >= self.threshold
        return replace(
            where,
            present=present,
            probability=probability,
            frames=where.frames if present else (),
            key_frame=where.key_frame if present else None,
        )

    def calibrate(self, offset: float, version: str) -> None:
        """Apply a site's calibration (:mod:`lus_pacs.families.calibration`): ``offset`` added
        to every cine's logit, ``version`` reported instead of the bundle's.

        Raises
        ------
        ModelError
            The bundle has no measurement head (the offset is fitted on the head's logit).
        """
        if not isinstance(self.network, MeasuredBLines | MeasurementHead):
            raise ModelError(
                f"B-line bundle {self.model.version}: a site calibration shifts the measurement "
                "head's logit, which this bundle (paper 001's network alone) has not."
            )
        self.logit_offset = offset
        self.model = replace(self.model, version=version)

    def clip_logit(self, cine: Cine) -> float:
        """The measurement head's logit of the cine, before any site calibration.

        Raises
        ------
        ModelError
            The bundle has no measurement head (paper 001's network alone).
        """
        head = self.network.head if isinstance(self.network, MeasuredBLines) else self.network
        if not isinstance(head, MeasurementHead):
            raise ModelError(
                f"B-line bundle {self.model.version} has no measurement head to calibrate."
            )
        return float(head.logits(cine_features(cine)[1][None])[0])

    def _calibrated(self, logit: float) -> float:
        """The clip probability of the head's ``logit`` with the site's offset (float32, as
        :meth:`~lus_pacs.families.measurements.MeasurementHead.probability`)."""
        return float(torch.sigmoid(torch.tensor(logit + self.logit_offset, dtype=torch.float32)))

    def _predict_measured(self, cine: Cine) -> BLineFindings:
        """The real-data model: the head on the clip's measurements gives the probability; on
        each measured frame's own measurements (in place of the clip's pooled ones) it gives
        the frame scores, which every frame takes from the nearest measured frame."""
        assert isinstance(self.network, MeasurementHead)
        per_frame, clip, view = cine_features(cine)
        probability = self._calibrated(self.clip_logit(cine))
        n = len(FRAME_FEATURES)
        motion = np.repeat(clip[None, 2 * n :], len(per_frame), axis=0)
        by_frame = self.network.probability(np.concatenate([per_frame, per_frame, motion], 1))
        nearest = np.abs(np.arange(cine.n_frames)[:, None] - view.picks[None]).argmin(axis=1)
        scores = by_frame[nearest] / max(float(by_frame.max()), np.finfo(float).tiny)
        if cine.intact().any():  # a damaged frame is no B-line frame (the view skipped it)
            scores = np.where(cine.intact(), scores, 0.0)
        key_frame: int | None = None
        frames: tuple[int, ...] = ()
        if probability >= self.threshold:
            key_frame = int(np.argmax(scores)) + 1
            chosen = np.flatnonzero(scores >= self.attention_threshold) + 1
            frames = tuple(sorted({key_frame, *chosen.tolist()}))
        return BLineFindings(
            present=key_frame is not None,
            probability=probability,
            frames=frames,
            key_frame=key_frame,
            frame_scores=tuple(float(x) for x in scores),
            model=self.model,
        )


def findings_from_windows(
    probabilities: npt.NDArray[np.floating],
    attention: npt.NDArray[np.floating],
    starts: Sequence[int],
    n_frames: int,
    *,
    threshold: float,
    attention_threshold: float,
    model: ModelInfo,
    intact: npt.NDArray[np.bool_] | None = None,
) -> BLineFindings:
    """Merge the outputs of overlapping windows into the findings of their cine.

    Parameters
    ----------
    probabilities:
        Probability of each window, shape (windows,).
    attention:
        Attention of each window over its frames, shape (windows, window length).
    starts:
        1-based first frame of each window, as :func:`b_line_windows` gives them. Positions
        past the end of the cine (a cine shorter than a window) repeat its last frame, which
        gets their mean attention.
    n_frames:
        Frames in the cine.
    threshold, attention_threshold, model:
        As :class:`BLineModel`.
    intact:
        Per frame, whether it decoded whole (:meth:`~lus_pacs.domain.Cine.intact`); a damaged
        frame scores 0 and is never a B-line frame or the key frame.
    """
    if probabilities.shape != (len(starts),) or attention.shape[0] != len(starts):
        raise ValueError(
            f"Need one probability and one attention row per window start; got "
            f"{probabilities.shape}, {attention.shape} and {len(starts)} starts."
        )
    length = attention.shape[1]
    if len(starts) >= 2:  # the part of each position's attention its windows share goes
        attention = attention / np.maximum(attention.mean(axis=0), np.finfo(float).tiny)
        attention = attention / np.maximum(attention.sum(axis=1, keepdims=True), 1e-12)
    total = np.zeros(n_frames)
    covered = np.zeros(n_frames)
    in_positive = np.zeros(n_frames, dtype=bool)
    frames_of = []
    for p, a, start in zip(probabilities, attention, starts, strict=True):
        index = np.minimum(np.arange(start - 1, start - 1 + length), n_frames - 1)
        frames_of.append(index)
        counts = np.bincount(index, minlength=n_frames)
        seen = counts > 0
        total[seen] += np.bincount(index, weights=a, minlength=n_frames)[seen] / counts[seen]
        covered[seen] += 1
        if p >= threshold:
            in_positive[index] = True
    scores = total / np.maximum(covered, 1)
    if intact is not None and intact.any():
        scores = np.where(intact, scores, 0.0)
    scores /= max(float(scores.max()), np.finfo(float).tiny)

    best = int(np.argmax(probabilities))
    probability = float(np.clip(probabilities[best], 0.0, 1.0))
    key_frame: int | None = None
    frames: tuple[int, ...] = ()
    if probability >= threshold:
        candidates = frames_of[best]
        if intact is not None and intact.any():
            whole = candidates[intact[candidates]]
            candidates = whole if len(whole) else np.flatnonzero(intact)
        key = int(candidates[np.argmax(scores[candidates])])
        key_frame = key + 1
        if intact is not None and intact.any():
            in_positive &= intact
        chosen = np.flatnonzero(in_positive & (scores >= attention_threshold))
        frames = tuple(f + 1 for f in sorted({key, *chosen.tolist()}))
    return BLineFindings(
        present=key_frame is not None,
        probability=probability,
        frames=frames,
        key_frame=key_frame,
        frame_scores=tuple(float(s) for s in scores),
        model=model,
    )
