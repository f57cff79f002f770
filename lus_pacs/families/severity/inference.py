"""Run paper 003's severity model on a cine: a score 0-3 per frame, the clip score, and where the
frame scorer looked.

Every frame is fitted into 200 x 260 (:func:`severity_frames`) and scored by the frame scorer;
the softmax of all frames goes through the learned uninorm layer, whose output is the clip's
score probabilities. The frame with the highest score (the most probable among equals) is the
top frame; for the spatial-transformer networks, the first crop of that frame, mapped back to
source pixels, is the box reported with it.

A bundle whose network is :class:`~lus_pacs.families.severity.measured.MeasuredSeverity` (the
shipped one) takes the clip score and its probabilities from the real-data recipe on the cine's
lung measurements instead of the uninorm; the frame scores and box stay the network's, and the
top frame is the intact frame the network finds most like the clip score (the probability of
that score), so that the key frame shows the score reported, not the network's own highest.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.domain import Cine, ModelInfo, SeverityFindings
from lus_pacs.errors import ModelError
from lus_pacs.families.measurements import check_feature_version
from lus_pacs.families.severity.measured import MeasuredSeverity
from lus_pacs.families.severity.network import SeverityNet, theta_to_box
from lus_pacs.inference.bundle import load_bundle
from lus_pacs.inference.lung_features import cine_features
from lus_pacs.inference.runtime import Runtime, compile_module
from lus_pacs.inference.transforms import (
    SEVERITY_SIZE,
    box_to_source,
    frame_chunks,
    severity_frames,
)


class SeverityModel:
    """The severity network (frame scorer + uninorm aggregator); load once, predict on many.

    Parameters
    ----------
    network:
        The trained :class:`SeverityNet` or :class:`MeasuredSeverity` (put in eval mode here).
    model:
        Identifies the bundle in every result.
    batch_size:
        Frames scored at once (bounds memory on long cines). 8 rather than 32: the same speed
        on two cores, and (measured with the key-frame model's batch of 8 then) the node's
        peak memory over bench/realtime.py's exam 0.83 GB instead of 0.91.
    """

    def __init__(
        self,
        network: SeverityNet | MeasuredSeverity,
        model: ModelInfo,
        batch_size: int = 8,
        runtime: Runtime | str = Runtime.ONNX,
    ) -> None:
        self.eta_shift = 0.0
        """Added to the recipe's ordinal score: a site's calibration (:meth:`calibrate`)."""
        self.network = network.eval()
        self.model = model
        self.batch_size = batch_size
        example = torch.zeros(1, 1, *SEVERITY_SIZE)
        self._scorer = compile_module(_FrameScorer(self.paper_network), [example], runtime)

    @classmethod
    def load(cls, bundle_dir: Path, runtime: Runtime | str = Runtime.ONNX) -> SeverityModel:
        """The model of a bundle folder such as ``models/severity``.

        Raises
        ------
        ModelError
            The bundle is incomplete or is not a severity bundle, or its heads were fitted on
            lung measurements of another version.
        """
        bundle = load_bundle(bundle_dir, (SeverityNet, MeasuredSeverity))
        if isinstance(bundle.network, MeasuredSeverity):
            check_feature_version(bundle.config, bundle_dir, "lus-pacs fit severity")
        network = cast(SeverityNet | MeasuredSeverity, bundle.network)
        return cls(network, bundle.model, runtime=runtime)

    def calibrate(self, shift: float, version: str) -> None:
        """Apply a site's calibration (:mod:`lus_pacs.families.calibration`): ``shift`` added
        to every cine's ordinal score, ``version`` reported instead of the bundle's.

        Raises
        ------
        ModelError
            The bundle has no real-data recipe (paper 003's network alone).
        """
        if not isinstance(self.network, MeasuredSeverity):
            raise ModelError(
                f"severity bundle {self.model.version}: a site calibration shifts the real-data "
                "recipe's ordinal score, which this bundle (paper 003's network alone) has not."
            )
        self.eta_shift = shift
        self.model = replace(self.model, version=version)

    def clip_eta(self, cine: Cine) -> float:
        """The recipe's ordinal score of the cine, before any site calibration.

        Raises
        ------
        ModelError
            The bundle has no real-data recipe (paper 003's network alone).
        """
        if not isinstance(self.network, MeasuredSeverity):
            raise ModelError(f"severity bundle {self.model.version} has no recipe to calibrate.")
        return float(self.network.clip_etas(cine_features(cine)[1][None])[0])

    @property
    def cuts(self) -> npt.NDArray[np.float64]:
        """The recipe's ordinal cuts (empty for paper 003's network alone)."""
        if not isinstance(self.network, MeasuredSeverity):
            return np.zeros(0)
        return self.network.ordinal.cuts.double().numpy()

    @property
    def paper_network(self) -> SeverityNet:
        """Paper 003's network (frame scorer and uninorm), also inside a measured bundle."""
        if isinstance(self.network, MeasuredSeverity):
            return self.network.scorer
        return self.network

    def frame_outputs(self, cine: Cine) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Score probabilities (frames, 4) of every frame and, for spatial-transformer
        networks, each frame's first transform (frames, 2, 3) in model geometry. Each batch of
        frames is made ready just before it is scored: a 1000-frame cine never holds its
        200 MB of model input at once."""
        probabilities, thetas = [], []
        for batch in frame_chunks(cine.n_frames, self.batch_size):
            out = self._scorer(severity_frames(cine, batch))
            probabilities.append(out[0])
            if len(out) > 1:
                thetas.append(out[1])
        return torch.cat(probabilities), torch.cat(thetas) if thetas else None

    def predict(self, cine: Cine) -> SeverityFindings:
        """Score every frame of ``cine`` and aggregate them into the clip score."""
        frame_probabilities, thetas = self.frame_outputs(cine)
        if isinstance(self.network, MeasuredSeverity):
            score, clip = self.network.clip_scores(cine_features(cine)[1][None], self.eta_shift)
            clip_score, clip_probabilities = int(score[0]), clip[0]
        else:
            intact = torch.from_numpy(cine.intact())
            whole = frame_probabilities[intact] if bool(intact.any()) else frame_probabilities
            with torch.inference_mode():
                uninorm = self.network.aggregator(whole)  # damaged frames do not score the clip
            clip_score, clip_probabilities = int(uninorm.argmax()), uninorm.numpy()
        measured = isinstance(self.network, MeasuredSeverity)
        scores = frame_probabilities.argmax(dim=1).numpy()
        confidence = frame_probabilities.max(dim=1).values.numpy()
        if measured:
            # An intact frame first, then the one most like the clip score reported.
            like = frame_probabilities[:, clip_score].numpy()
            top = int(np.lexsort((-like, ~cine.intact()))[0])
        else:
            # An intact frame first, then the highest score, then the most confident of it.
            top = int(np.lexsort((-confidence, -scores, ~cine.intact()))[0])
        box = None
        if thetas is not None:
            x0, y0, x1, y1 = (float(v) for v in theta_to_box(thetas[top], *SEVERITY_SIZE))
            box = box_to_source((x0, y0, x1, y1), cine)
        p = tuple(round(float(v), 4) for v in clip_probabilities)
        return SeverityFindings(
            score=clip_score,
            probabilities=(p[0], p[1], p[2], p[3]),
            frame_scores=tuple(int(s) for s in scores),
            top_frame=top + 1,
            box=box,
            model=self.model,
            clip_from_measurements=measured,
        )


class _FrameScorer(nn.Module):
    """Paper 003's frame scorer as a function of frames to tensors (what a runtime compiles):
    the score probabilities and, for spatial-transformer networks, the first transform."""

    def __init__(self, network: SeverityNet) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network.predict(x)
        probabilities = torch.softmax(out.logits, dim=1)
        return (probabilities,) if out.thetas is None else (probabilities, out.thetas[:, 0])
