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

import logging
from collections.abc import Iterator, Sequence
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
    shift_to_reach,
)
from lus_pacs.families.severity.network import SeverityNet, SeverityOutput

log = logging.getLogger(__name__)

FINDINGS = ("b_lines", "consolidations")
"""The label columns whose heads feed the ordinal head, in its input order."""
SEVERE = 2
"""The score from which a clip counts as severe for the operating point: coalescent B-lines or
consolidation (scores 2 and 3)."""
OPERATING_SHARE = 0.80
"""Share of the severe clips (:data:`SEVERE` or more) the shipped recipe scores severe on
sources it was not fitted on (leave-source-out on the trainable clips): its cuts are moved to
that operating point (:func:`operating_shift`), as the B-line head's intercept is."""
_ABOVE_CUT = 1e-4
"""Added to the shift so that the clip it is set by lands above its cut, not on it: a score
counts the cuts ``eta`` is strictly above."""


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
        return self.ordinal.etas(finding_logits(self.b_lines, self.consolidation, features))


@dataclass(frozen=True)
class SeverityRecipe:
    """The three fitted heads of the recipe."""

    b_lines: MeasurementHead
    consolidation: MeasurementHead
    ordinal: OrdinalHead

    def clip_scores(
        self, features: npt.NDArray[np.floating], shift: float = 0.0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """As :meth:`MeasuredSeverity.clip_scores`."""
        logits = finding_logits(self.b_lines, self.consolidation, features)
        return self.ordinal.predict(logits, shift)


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


Labels = tuple[Sequence[str], Sequence[bool | None], Sequence[bool | None], Sequence[int | None]]
"""A clip list's groups, B-line and consolidation labels and scores, in :func:`fit_recipe`'s
order."""


def _take(labels: Labels, rows: Sequence[int]) -> Labels:
    groups, b_lines, consolidation, severity = labels
    return (
        [str(groups[i]) for i in rows],
        [b_lines[i] for i in rows],
        [consolidation[i] for i in rows],
        [severity[i] for i in rows],
    )


def _without_each_source(
    x: npt.NDArray[np.float64], labels: Labels
) -> Iterator[tuple[str, npt.NDArray[np.bool_], list[int], SeverityRecipe | None]]:
    """For each group holding a scored clip: the group, its scored clips (a mask over all
    clips), the other groups' clips and the recipe fitted on them only (None where they cannot
    be fitted on: a finding of one class, or one score)."""
    names = np.asarray(labels[0])
    scored = np.array([s is not None for s in labels[3]], bool)
    for group in sorted(set(names[scored].tolist())):
        rest = np.flatnonzero(names != group).tolist()
        try:
            recipe: SeverityRecipe | None = fit_recipe(x[rest], *_take(labels, rest))
        except ValueError:
            recipe = None
        yield str(group), (names == group) & scored, rest, recipe


def held_out_margins(
    features: npt.NDArray[np.floating],
    groups: Sequence[str],
    b_lines: Sequence[bool | None],
    consolidation: Sequence[bool | None],
    severity: Sequence[int | None],
    level: int = SEVERE,
) -> npt.NDArray[np.float64]:
    """Each scored clip's ordinal score ``eta`` less the cut it must pass to score ``level``
    or more, by the recipe fitted on the other groups only: positive where the recipe of the
    other sources scores it ``level`` or more. NaN for a clip without a score and for a group
    whose others cannot be fitted on (a finding of one class, or one score)."""
    x = np.asarray(features, np.float64)
    margins = np.full(len(groups), np.nan)
    for _, target, _, recipe in _without_each_source(x, (groups, b_lines, consolidation, severity)):
        if recipe is not None:
            logits = finding_logits(recipe.b_lines, recipe.consolidation, x[target])
            cut = float(recipe.ordinal.cuts[level - 1])
            margins[target] = recipe.ordinal.etas(logits) - cut
    return margins


def held_out_scores(
    features: npt.NDArray[np.floating],
    groups: Sequence[str],
    b_lines: Sequence[bool | None],
    consolidation: Sequence[bool | None],
    severity: Sequence[int | None],
    share: float | None = None,
) -> npt.NDArray[np.int64]:
    """Each scored clip's score by the recipe fitted on the other groups only (-1 for a clip
    without a score): what the recipe says of a source it has never seen.

    With ``share``, each group's scores are given at the :func:`operating_shift` fitted on the
    other groups alone (as the shipped recipe's is on all of them), so the shift never sees
    the group it scores; where the other groups cannot give one, at the recipe as fitted.

    Raises
    ------
    ValueError
        The other groups of a group cannot be fitted on (a finding of one class, or one score).
    """
    x = np.asarray(features, np.float64)
    scores = np.full(len(groups), -1, np.int64)
    labels: Labels = (groups, b_lines, consolidation, severity)
    for group, target, rest, recipe in _without_each_source(x, labels):
        if recipe is None:
            raise ValueError(f"severity: the sources other than {group} cannot be fitted on.")
        shift = 0.0
        if share is not None:
            try:
                shift = operating_shift(x[rest], *_take(labels, rest), share=share)
            except ValueError as exc:  # no severe clip of another source can be held out
                log.warning("severity without %s: scored as fitted (%s)", group, exc)
        scores[target] = recipe.clip_scores(x[target], shift)[0]
    return scores


def operating_shift(
    features: npt.NDArray[np.floating],
    groups: Sequence[str],
    b_lines: Sequence[bool | None],
    consolidation: Sequence[bool | None],
    severity: Sequence[int | None],
    share: float = OPERATING_SHARE,
    level: int = SEVERE,
) -> float:
    """The shift of ``eta`` at which the recipe, on sources it was not fitted on, scores
    ``share`` of the clips of score ``level`` or more at ``level`` or more: the smallest that
    puts that share of their :func:`held_out_margins` above 0.

    The recipe's cuts fit the training sources' own level; on a device none of them had it
    scored the severe clips of a handheld scanner mostly 1 (the model card). Held-out margins
    carry the spread of the sources' levels, so a shift chosen on them keeps the share on an
    unseen source, at the cost of calling some milder clips more severe.

    Raises
    ------
    ValueError
        ``share`` outside (0, 1], ``level`` not a score above 0, or no clip of ``level`` or
        more has a held-out margin.
    """
    if not 1 <= level <= 3:
        raise ValueError(f"operating_shift: level {level} is not a score of 1 to 3.")
    margins = held_out_margins(features, groups, b_lines, consolidation, severity, level)
    severe = np.array([s is not None and s >= level for s in severity], bool)
    return shift_to_reach(margins[severe], share) + _ABOVE_CUT
