"""Paper 003's video-level severity: a learnt uninorm folds the frames' score probabilities.

Roy et al., "Deep learning for classification and localization of COVID-19 markers in
point-of-care lung ultrasound" (IEEE TMI 2020), section IV-B. :class:`UninormAggregator` folds
the frames' probabilities of the :data:`SCORES` ordinal scores with a min-uninorm (product t-norm
and t-conorm) per score, each score with its own learnt neutral element, and returns the softmax
of the four aggregated values. :func:`max_argmax` and :func:`argmax_mean` are the hand-made
baselines. The frame scorers that give the probabilities are in
:mod:`lus_pacs.families.severity.network`.

Where the paper is silent, this module chooses: the aggregator's output is the aggregated values
normalised to sum 1 (the softmax of their logarithms) rather than the softmax of the values
themselves. Over a clip of tens of frames the values of the min-uninorm underflow: every score's
value ends near 0, the softmax of values in [0, 1] is then uniform and the neutral elements get
no gradient (tried: the training loss stayed at ln 4 and ``e`` barely moved on 45-frame clips).
In the log domain (:meth:`UninormAggregator.log_aggregate`, exact, no underflow) the argmax is
the same as the paper's and SORD trains ``e``. :meth:`UninormAggregator.aggregate` keeps the
paper's pairwise fold for short clips and for checking the closed form.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy.typing as npt
import torch
from torch import nn

SCORES = 4
"""Number of severity scores (0, 1, 2, 3)."""

_EPS = 1e-6


def min_uninorm(a: torch.Tensor, b: torch.Tensor, e: torch.Tensor | float) -> torch.Tensor:
    """Eq. 9's min-uninorm with the product t-norm and t-conorm, elementwise.

    ``e T(a/e, b/e)`` where both are at most ``e``, ``e + (1 - e) S((a-e)/(1-e), (b-e)/(1-e))``
    where both are at least ``e``, ``min(a, b)`` otherwise, with ``T(a, b) = ab`` and
    ``S(a, b) = a + b - ab``. ``e`` is clamped away from 0 and 1 so that the branches
    ``torch.where`` discards stay finite and gradients with respect to ``e`` do too.
    """
    e = torch.as_tensor(e, dtype=a.dtype, device=a.device).clamp(_EPS, 1 - _EPS)
    low = e * (a / e) * (b / e)
    a_high, b_high = (a - e) / (1 - e), (b - e) / (1 - e)
    high = e + (1 - e) * (a_high + b_high - a_high * b_high)
    below = (a <= e) & (b <= e)
    above = (a >= e) & (b >= e)
    return torch.where(below, low, torch.where(above, high, torch.minimum(a, b)))


class UninormAggregator(nn.Module):
    """Video score from frame score probabilities by a uninorm per score (eq. 8-9).

    Parameters
    ----------
    neutral_elements:
        Initial neutral element of every score, or one per score, in (0, 1). Each is learnt as
        ``sigmoid(parameter)``: the module's only four parameters.

    Notes
    -----
    Input: the frame scorer's softmax, (frames, 4) or (batch, frames, 4), and optionally a
    boolean mask of the valid frames, (frames,) or (batch, frames), for clips padded to a common
    length. Output: the softmax of the aggregated values, (4,) or (batch, 4).
    The paper trains it with SORD on the video prediction: that is
    ``sord_loss(aggregator.aggregate(probs), score)``, the aggregated values being the logits.

    On a long clip a score's value is, in effect, ``e`` times the product of ``a / e`` over the
    frames below ``e`` (the min of the mixed pairs keeps the lower side), or the probabilistic
    sum when no frame is below ``e``; over hundreds of frames either saturates (at 0 in float32
    once the product passes about 1e-45, or at 1), and a saturated value gives ``e`` (next to) no
    gradient. :meth:`log_aggregate` computes the same values in the log domain, where neither
    happens; :meth:`forward` uses it.
    """

    def __init__(self, neutral_elements: float | Sequence[float] = 0.5) -> None:
        super().__init__()
        e = torch.as_tensor(neutral_elements, dtype=torch.float32).expand(SCORES).clone()
        if not ((e > 0) & (e < 1)).all():
            raise ValueError(f"neutral_elements must lie in (0, 1); got {e.tolist()}.")
        self.neutral_logits = nn.Parameter(torch.logit(e))

    @property
    def neutral_elements(self) -> torch.Tensor:
        """The four neutral elements e_k, shape (4,)."""
        return torch.sigmoid(self.neutral_logits)

    def aggregate(
        self, frame_probs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The uninorm of the frames along each score, before the softmax: (4,) or (batch, 4).

        Frames outside ``mask`` are replaced by the neutral element, which leaves the uninorm
        unchanged. The fold is a pairwise tree (about log2(frames) vectorised steps), which
        associativity and commutativity make equal to the left fold of the paper.
        """
        _check_clip(frame_probs, mask)
        e = self.neutral_elements.to(frame_probs)
        values = frame_probs
        if mask is not None:
            values = torch.where(mask.unsqueeze(-1), frame_probs, e)
        while values.shape[-2] > 1:
            if values.shape[-2] % 2:
                values = torch.cat([values, e.expand(*values.shape[:-2], 1, SCORES)], dim=-2)
            values = min_uninorm(values[..., 0::2, :], values[..., 1::2, :], e)
        return values.squeeze(-2)

    def log_aggregate(
        self, frame_probs: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The logarithm of :meth:`aggregate`, in closed form and without underflow.

        With the min-uninorm, a score whose frames include any below ``e`` aggregates to
        ``e * prod(a / e)`` over those frames (the min of a mixed pair keeps the lower side, and
        associativity lets the frames be taken in any order); otherwise to the probabilistic sum
        ``e + (1 - e) (1 - prod(1 - (a - e) / (1 - e)))``. Sums of logarithms replace the
        products, so a clip of any length keeps finite values and gradients.
        """
        _check_clip(frame_probs, mask)
        e = self.neutral_elements.to(frame_probs).clamp(_EPS, 1 - _EPS)
        p = frame_probs.clamp(_EPS, 1.0)
        valid = torch.ones_like(p[..., 0], dtype=torch.bool) if mask is None else mask
        valid = valid.unsqueeze(-1)
        below = (p < e) & valid
        log_low = torch.log(e) + torch.where(below, torch.log(p) - torch.log(e), 0.0).sum(-2)
        excess = torch.where(valid & ~below, (p - e) / (1 - e), 0.0).clamp(max=1 - _EPS)
        conorm = 1 - torch.exp(torch.log1p(-excess).sum(-2))
        log_high = torch.log(e + (1 - e) * conorm)
        return torch.where(below.any(-2), log_low, log_high)

    def forward(self, frame_probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Clip score probabilities: the aggregated values normalised to sum 1 (the softmax of
        their logarithms; see the module notes)."""
        return torch.softmax(self.log_aggregate(frame_probs, mask), dim=-1)


def _check_clip(frame_probs: torch.Tensor, mask: torch.Tensor | None) -> None:
    if frame_probs.ndim not in (2, 3) or frame_probs.shape[-1] != SCORES:
        raise ValueError(
            f"frame_probs must have shape (frames, {SCORES}) or (batch, frames, {SCORES}); "
            f"got {tuple(frame_probs.shape)}."
        )
    if frame_probs.shape[-2] == 0:
        raise ValueError("frame_probs has no frames; a clip needs at least one.")
    if mask is not None and (mask.shape != frame_probs.shape[:-1] or mask.dtype != torch.bool):
        raise ValueError(
            f"mask must be boolean of shape {tuple(frame_probs.shape[:-1])}; "
            f"got {mask.dtype} {tuple(mask.shape)}."
        )


def max_argmax(frame_probs: torch.Tensor | npt.ArrayLike) -> int:
    """Baseline: the highest of the frames' predicted scores (the paper's hard rule)."""
    return int(_frames(frame_probs).argmax(dim=1).max())


def argmax_mean(frame_probs: torch.Tensor | npt.ArrayLike) -> int:
    """Baseline: the most probable score of the frames' mean probabilities."""
    return int(_frames(frame_probs).mean(dim=0).argmax())


def _frames(frame_probs: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    probs = torch.as_tensor(frame_probs)
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"frame_probs must have shape (frames, scores); got {tuple(probs.shape)}.")
    return probs
