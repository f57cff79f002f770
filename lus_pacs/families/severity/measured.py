"""The real-data severity recipe: the clip score from what the lung measurements say about
B-lines and consolidation, on an ordinal scale fitted to the real clips' scores.

Paper 003's networks, trained on simulated exams, score real clips from other devices near
chance (quadratic kappa 0.05 leave-source-out on the 81 scored trainable clips), and an ordinal
head fitted straight on the 32 lung measurements does no better (0.04-0.15): 81 clips are too
few for 32 weights. The ICLUS score itself is built from B-lines and consolidation (0 A-lines,
1 separate B-lines, 2 coalescent B-lines or small consolidation, 3 white lung or large
consolidation), and those two have more labels (108 trainable clips each). So the recipe fits
one :class:`~lus_pacs.families.measurements.MeasurementHead` per finding on the measurements
and an :class:`~lus_pacs.families.measurements.OrdinalHead` on the two heads' logits, every
fit stratified by source (see :func:`~lus_pacs.families.measurements.fit_head`).

:class:`MeasuredSeverity` ships it beside paper 003's network, which keeps giving the frame
scores, the top frame and its box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.families.measurements import (
    HEAD_L2,
    ORDINAL_L2,
    MeasurementHead,
    OrdinalHead,
    fit_head,
    fit_ordinal,
)
from lus_pacs.families.severity.network import SeverityNet, SeverityOutput

FINDINGS = ("b_lines", "consolidations")
"""The label columns whose heads feed the ordinal head, in its input order."""


class MeasuredSeverity(nn.Module):
    """Paper 003's network beside the measurement recipe, as one bundle network.

    ``forward`` is the network's frame scorer; :meth:`clip_scores` gives the clip score and its
    probabilities from a clip's lung measurements.

    Parameters
    ----------
    scorer:
        Paper 003's :class:`SeverityNet`, trained as before.
    b_lines, consolidation:
        Heads on the clip measurements, fitted to the real clips' labels of those findings.
    ordinal:
        The score 0-3 from the two heads' logits.
    """

    def __init__(
        self,
        scorer: SeverityNet,
        b_lines: MeasurementHead,
        consolidation: MeasurementHead,
        ordinal: OrdinalHead,
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.b_lines = b_lines
        self.consolidation = consolidation
        self.ordinal = ordinal

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        out: SeverityOutput = self.scorer(x)
        return out

    def clip_scores(
        self, features: npt.NDArray[np.floating], shift: float = 0.0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Scores 0-3 and their probabilities (clips, 4) of clip measurements (clips, n);
        ``shift`` is added to the ordinal score (a site's calibration)."""
        logits = finding_logits(self.b_lines, self.consolidation, features)
        return self.ordinal.predict(logits, shift)

    def clip_etas(self, features: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """The ordinal score ``eta`` of clip measurements (clips, n), before any shift."""
        logits = finding_logits(self.b_lines, self.consolidation, features)
        with torch.inference_mode():
            return self.ordinal(torch.tensor(np.asarray(logits, np.float32))).double().numpy()


@dataclass(frozen=True)
class SeverityRecipe:
    """The three fitted heads of the recipe."""

    b_lines: MeasurementHead
    consolidation: MeasurementHead
    ordinal: OrdinalHead

    def clip_scores(
        self, features: npt.NDArray[np.floating]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """As :meth:`MeasuredSeverity.clip_scores`."""
        return self.ordinal.predict(finding_logits(self.b_lines, self.consolidation, features))


def finding_logits(
    b_lines: MeasurementHead, consolidation: MeasurementHead, features: npt.NDArray[np.floating]
) -> npt.NDArray[np.float64]:
    """The two heads' logits of clip measurements, shaped (clips, 2)."""
    x = torch.tensor(np.asarray(features, np.float32))
    with torch.inference_mode():
        return torch.stack([b_lines(x), consolidation(x)], dim=1).double().numpy()


def fit_recipe(
    features: npt.NDArray[np.floating],
    groups: Sequence[str],
    b_lines: Sequence[bool | None],
    consolidation: Sequence[bool | None],
    severity: Sequence[int | None],
    *,
    head_l2: float = HEAD_L2,
    ordinal_l2: float = ORDINAL_L2,
) -> SeverityRecipe:
    """Fit the recipe on clips' measurements (clips, n) and labels (None where a clip has no
    label of that kind); each head on the clips labelled for it, all stratified by ``groups``.

    The ordinal head is fitted on the finding heads' in-sample logits of the scored clips.

    Raises
    ------
    ValueError
        A finding's labelled clips hold one class only, or the scored clips one score only.
    """
    x = np.asarray(features, np.float64)
    heads = []
    for labels in (b_lines, consolidation):
        chosen = [i for i, v in enumerate(labels) if v is not None]
        heads.append(
            fit_head(
                x[chosen],
                np.array([bool(labels[i]) for i in chosen]),
                head_l2,
                groups=[groups[i] for i in chosen],
            )
        )
    scored = [i for i, v in enumerate(severity) if v is not None]
    logits = finding_logits(heads[0], heads[1], x[scored])
    ordinal = fit_ordinal(
        logits,
        np.array([severity[i] for i in scored]),
        ordinal_l2,
        groups=[groups[i] for i in scored],
    )
    return SeverityRecipe(heads[0], heads[1], ordinal)
