"""Paper 003's COVID-19 severity scorer: Reg-STN frame scores and a uninorm video aggregation.

Roy et al., "Deep learning for classification and localization of COVID-19 markers in
point-of-care lung ultrasound" (IEEE TMI 2020), sections IV-A and IV-B. A frame gets one of
:data:`SCORES` ordinal scores (0 healthy to 3 severe).

Frame level (IV-A). A spatial transformer's localisation network predicts, from the whole frame,
restricted affine transforms (eq. 2: rotation, isotropic scale, translation); each transform
crops the frame and a CNN scores the crop. Reg-STN predicts two transforms whose scales are pulled
towards the priors 0.50 and 0.75 (eq. 6), runs the same CNN on both crops, and asks the two sets
of logits to agree (eq. 5); the first crop's logits are the prediction. Training uses soft ordinal
labels (SORD, eq. 3-4) in which score 0 is set further apart from the others. The ablations of the
paper's table of frame results share the CNN: :data:`FRAME_SCORERS` names them.

Video level (IV-B): the uninorm aggregator and the baselines are in
:mod:`lus_pacs.families.severity.aggregation`. :class:`SeverityNet` holds a frame scorer and the
aggregator for a model bundle.

Where the paper is silent, this module chooses:

* The CNN (the paper reuses that of its reference [17] and does not describe it) is four blocks
  of a 3 x 3 convolution and a stride-2 3 x 3 convolution, each with batch norm and ReLU,
  widths (16, 32, 64, 96), global average pooling, dropout 0.2 and a linear layer: about
  0.21 M parameters. The localisation network is four stride-2 convolutions (8, 16, 32, 32
  channels), a 4 x 4 adaptive average pooling and the two fully connected layers of the paper
  (512 -> 64 -> 4 per transform): about 0.05 M parameters.
* Eq. 2's parameters are bounded so that training is stable: ``sigma = 0.1 + 0.9 sigmoid(.)``,
  ``tau = tanh(.) (1 - sigma)`` (an unrotated crop stays inside the frame) and
  ``r = tanh(.) pi/6``. The last layer starts at zero weights with biases that give each
  transform its prior scale, no rotation and no shift, as Jaderberg et al. start at the identity.
* ``theta`` acts on normalised coordinates (``affine_grid``), where a rotation of a frame that
  is not square would shear it; :func:`restricted_affine` corrects the off-diagonal terms by the
  frame's aspect ratio so that the crop is a true rotation of the frame. On a square frame it is
  eq. 2 exactly.
* Every CNN sees :data:`CNN_INPUT` (100 x 130): the whole frame shrunk by half for the CNN
  baselines, crops sampled at that size for the transformer variants.
* Reg-STN runs the two crops through the CNN as one batch, so batch norm sees both.
* Eq. 5 is the mean over the batch of ``||l1 - l2||^2 / 4`` (the mean squared difference of the
  logits), gradients flowing into both branches; eq. 7 adds the three terms with unit weights.
* STN + SORD is trained on SORD alone: the paper brings in the scale prior only to stop Reg-STN's
  consistency loss from collapsing its two transforms. Its single transform starts at scale 0.50,
  the scale of Reg-STN's predicting branch.
* CNN + Random Crop draws each training crop's scale from the two priors with equal chance and
  its shift uniformly so that the crop stays inside the frame, without rotation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy.typing as npt
import torch
from torch import nn
from torch.nn.functional import affine_grid, grid_sample, interpolate, mse_loss

from lus_pacs.families.severity.aggregation import SCORES, UninormAggregator

CNN_INPUT = (100, 130)
"""Rows and columns every scorer's CNN sees: the whole frame (200 x 260) shrunk by half, or a
crop sampled at this size. A crop at scale 0.50 then keeps the frame's own pixel density (the
spatial transformer zooms in rather than throwing detail away), and the CNN costs a quarter of
what it would at full size, which is what makes CPU training of five variants affordable."""

SCALE_PRIORS = (0.50, 0.75)
"""The paper's priors on the two Reg-STN crop scales (a crop covers 25 % and 56 % of the frame)."""


class SeverityOutput(NamedTuple):
    """What the frame scorers return for a batch of frames."""

    logits: torch.Tensor
    """Score logits of the (first) crop, shape (batch, 4): the prediction."""
    logits2: torch.Tensor | None
    """Reg-STN's logits of the second crop, shape (batch, 4); None for the other scorers."""
    thetas: torch.Tensor | None
    """The crops' affine matrices, shape (batch, transforms, 2, 3); None without crops."""
    sigmas: torch.Tensor | None
    """The crops' scales, shape (batch, transforms); None without crops."""


class Transforms(NamedTuple):
    """What :class:`STNLocaliser` predicts for a batch of frames."""

    thetas: torch.Tensor
    """Affine matrices for ``affine_grid``, shape (batch, transforms, 2, 3)."""
    sigmas: torch.Tensor
    """Their isotropic scales, shape (batch, transforms)."""


class FrameCNN(nn.Module):
    """Convolutional feature extractor and a linear layer to the score logits.

    Parameters
    ----------
    widths:
        Channels of the four blocks; each block halves the rows and columns.
    dropout:
        Dropout on the pooled features.

    Notes
    -----
    Input: float (batch, 1, rows, columns), any size (this project's frames are 200 x 260 in
    [-1, 1]). Output: logits (batch, 4).
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96), dropout: float = 0.2) -> None:
        super().__init__()
        if len(widths) != 4 or min(widths) < 1:
            raise ValueError(f"widths must give the four blocks' channels; got {tuple(widths)}.")
        blocks: list[nn.Module] = []
        c_in = 1
        for c in widths:
            blocks += [_conv(c_in, c), _conv(c, c, stride=2)]
            c_in = c
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths[-1], SCORES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features, shape (batch, widths[-1])."""
        return torch.as_tensor(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.classifier(self.dropout(self.features(x))))


class STNLocaliser(nn.Module):
    """The spatial transformer's localisation network: restricted affine transforms of a frame.

    Parameters
    ----------
    n_transforms:
        How many transforms to predict (1 for STN, 2 for Reg-STN).
    initial_scales:
        Scale of each transform at initialisation; by default the paper's priors
        ``(0.50, 0.75)[:n_transforms]``.
    max_rotation:
        Largest rotation in radians.
    channels:
        Output channels of the four stride-2 convolutions.
    hidden:
        Width of the first fully connected layer.

    Notes
    -----
    Input: float (batch, 1, rows, columns). Output: :class:`Transforms`. Scales lie in
    (0.1, 1.0); see :func:`restricted_affine` for the matrices.
    """

    min_scale = 0.1
    max_scale = 1.0

    def __init__(
        self,
        n_transforms: int = 1,
        initial_scales: Sequence[float] | None = None,
        max_rotation: float = math.pi / 6,
        channels: Sequence[int] = (8, 16, 32, 32),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if n_transforms not in (1, 2):
            raise ValueError(f"n_transforms must be 1 (STN) or 2 (Reg-STN); got {n_transforms}.")
        scales = tuple(SCALE_PRIORS[:n_transforms] if initial_scales is None else initial_scales)
        if len(scales) != n_transforms:
            raise ValueError(
                f"initial_scales must give one scale per transform ({n_transforms}); got {scales}."
            )
        if not all(self.min_scale < s < self.max_scale for s in scales):
            raise ValueError(
                f"initial_scales must lie in ({self.min_scale}, {self.max_scale}); got {scales}."
            )
        self.n_transforms = n_transforms
        self.max_rotation = max_rotation
        layers: list[nn.Module] = []
        c_in = 1
        for c in channels:
            layers.append(_conv(c_in, c, stride=2))
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(c_in * 16, hidden), nn.ReLU(inplace=True))
        self.head = nn.Linear(hidden, 4 * n_transforms)  # rotation, scale, shift x, shift y
        nn.init.zeros_(self.head.weight)
        span = self.max_scale - self.min_scale
        bias = torch.zeros(n_transforms, 4)
        bias[:, 1] = torch.logit(torch.tensor([(s - self.min_scale) / span for s in scales]))
        with torch.no_grad():
            self.head.bias.copy_(bias.flatten())

    def forward(self, x: torch.Tensor) -> Transforms:
        raw = self.head(self.fc(self.body(x))).view(x.shape[0], self.n_transforms, 4)
        rotation = torch.tanh(raw[..., 0]) * self.max_rotation
        sigma = self.min_scale + (self.max_scale - self.min_scale) * torch.sigmoid(raw[..., 1])
        translation = torch.tanh(raw[..., 2:]) * (1 - sigma).unsqueeze(-1)
        aspect = x.shape[-1] / x.shape[-2]
        return Transforms(restricted_affine(rotation, sigma, translation, aspect), sigma)


def restricted_affine(
    rotation: torch.Tensor, scale: torch.Tensor, translation: torch.Tensor, aspect: float = 1.0
) -> torch.Tensor:
    """Eq. 2's affine matrix from a rotation, an isotropic scale and a translation.

    Parameters
    ----------
    rotation, scale:
        Radians and scale factors, shape (...).
    translation:
        Shift (tau_a, tau_b) of the crop's centre in normalised coordinates, shape (..., 2).
    aspect:
        Columns / rows of the frame. The off-diagonal terms are divided and multiplied by it so
        that the transform rotates the frame rigidly in pixels rather than in normalised
        coordinates (which would shear a frame that is not square).

    Returns
    -------
    torch.Tensor
        ``[[s cos r, -s sin r / aspect, tau_a], [s sin r * aspect, s cos r, tau_b]]``, shape
        (..., 2, 3), mapping output to input coordinates as ``affine_grid`` expects.
    """
    cos, sin = scale * torch.cos(rotation), scale * torch.sin(rotation)
    row_x = torch.stack([cos, -sin / aspect, translation[..., 0]], dim=-1)
    row_y = torch.stack([sin * aspect, cos, translation[..., 1]], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def crop(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Resample the part of ``x`` that ``theta`` selects (the STN's grid generator and sampler).

    Parameters
    ----------
    x:
        Frames (batch, channels, rows, columns).
    theta:
        Affine matrices (batch, 2, 3) from output to input normalised coordinates, where -1 and 1
        are the outer edges of the first and last pixels (``align_corners=False``).
    size:
        Rows and columns of the crop; the input's by default.

    Returns
    -------
    torch.Tensor
        Bilinearly sampled crops (batch, channels, *size); zero outside the frame.
    """
    rows, cols = x.shape[-2:] if size is None else size
    grid = affine_grid(theta, [x.shape[0], x.shape[1], rows, cols], align_corners=False)
    return grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def theta_to_box(theta: torch.Tensor | npt.ArrayLike, height: int, width: int) -> torch.Tensor:
    """The axis-aligned box in the input frame around the crop that ``theta`` selects.

    Parameters
    ----------
    theta:
        Affine matrices (..., 2, 3) as for :func:`crop` (a tensor or an array).
    height, width:
        Rows and columns of the input frame.

    Returns
    -------
    torch.Tensor
        ``(x0, y0, x1, y1)`` of shape (..., 4): the bounding box of the four transformed corners
        of the output square ``[-1, 1]^2``, clipped to the frame, in continuous pixel coordinates
        whose origin is the top-left corner of the top-left pixel. Column ``j`` spans
        ``[j, j + 1)``, so the whole frame is ``(0, 0, width, height)``.
    """
    theta = torch.as_tensor(theta)
    corners = theta.new_tensor([[-1, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]]).T
    points = theta @ corners  # (..., 2, 4): normalised (x, y) of the corners
    x = ((points[..., 0, :] + 1) / 2 * width).clamp(0, width)
    y = ((points[..., 1, :] + 1) / 2 * height).clamp(0, height)
    return torch.stack([x.amin(-1), y.amin(-1), x.amax(-1), y.amax(-1)], dim=-1)


class CNNScorer(nn.Module):
    """CNN + CE and CNN + SORD: the CNN on the whole frame. Parameters as :class:`FrameCNN`."""

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 96),
        dropout: float = 0.2,
        cnn_input: tuple[int, int] = CNN_INPUT,
    ) -> None:
        super().__init__()
        self.cnn = FrameCNN(widths, dropout)
        self.cnn_input = cnn_input

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        _check_frames(self, x)
        return SeverityOutput(self.cnn(_shrink(x, self.cnn_input)), None, None, None)


class STNScorer(nn.Module):
    """STN + SORD: one predicted crop, scored by the CNN.

    Parameters
    ----------
    widths, dropout:
        As :class:`FrameCNN`.
    initial_scale:
        The crop's scale at initialisation (Reg-STN's first prior).
    max_rotation:
        As :class:`STNLocaliser`.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 96),
        dropout: float = 0.2,
        initial_scale: float = SCALE_PRIORS[0],
        max_rotation: float = math.pi / 6,
        cnn_input: tuple[int, int] = CNN_INPUT,
    ) -> None:
        super().__init__()
        self.localiser = STNLocaliser(1, (initial_scale,), max_rotation)
        self.cnn = FrameCNN(widths, dropout)
        self.cnn_input = cnn_input

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        _check_frames(self, x)
        thetas, sigmas = self.localiser(x)
        logits = self.cnn(crop(x, thetas[:, 0], self.cnn_input))
        return SeverityOutput(logits, None, thetas, sigmas)


class RegSTNScorer(nn.Module):
    """Reg-STN + SORD: two predicted crops, the same CNN on both; the first one predicts.

    Parameters
    ----------
    widths, dropout:
        As :class:`FrameCNN`.
    scale_priors:
        The two crops' prior scales, sigma_p1 and sigma_p2 (the localiser starts at them);
        kept as ``scale_priors`` for :func:`reg_stn_loss`.
    max_rotation:
        As :class:`STNLocaliser`.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 96),
        dropout: float = 0.2,
        scale_priors: tuple[float, float] = SCALE_PRIORS,
        max_rotation: float = math.pi / 6,
        cnn_input: tuple[int, int] = CNN_INPUT,
    ) -> None:
        super().__init__()
        self.cnn_input = cnn_input
        if scale_priors[0] == scale_priors[1]:
            raise ValueError(
                f"scale_priors must differ, or the two crops collapse into one; got {scale_priors}."
            )
        self.scale_priors = scale_priors
        self.localiser = STNLocaliser(2, scale_priors, max_rotation)
        self.cnn = FrameCNN(widths, dropout)

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        _check_frames(self, x)
        thetas, sigmas = self.localiser(x)
        size = self.cnn_input
        crops = torch.cat([crop(x, thetas[:, 0], size), crop(x, thetas[:, 1], size)])
        logits, logits2 = self.cnn(crops).chunk(2)
        return SeverityOutput(logits, logits2, thetas, sigmas)

    def predict(self, x: torch.Tensor) -> SeverityOutput:
        """:meth:`forward` without the second crop, which only trains (its logits are the
        consistency term of the loss): the same prediction in eval mode, where batch norm uses
        its running statistics, for half the CNN's work. ``logits2`` is None. In training mode
        batch norm would see the first crops alone: :meth:`forward` runs instead."""
        if self.training:
            return self.forward(x)
        _check_frames(self, x)
        thetas, sigmas = self.localiser(x)
        logits = self.cnn(crop(x, thetas[:, 0], self.cnn_input))
        return SeverityOutput(logits, None, thetas, sigmas)


class RandomCropScorer(nn.Module):
    """CNN + Random Crop + SORD: random crops at the priors' scales in training, whole frames
    in evaluation.

    Parameters
    ----------
    widths, dropout:
        As :class:`FrameCNN`.
    scale_priors:
        Each training crop takes one of these scales with equal chance; its centre is uniform
        over the positions that keep it inside the frame; no rotation.
    generator:
        Random generator (CPU) for the crops; the global one when None.
    """

    def __init__(
        self,
        widths: Sequence[int] = (16, 32, 64, 96),
        dropout: float = 0.2,
        scale_priors: Sequence[float] = SCALE_PRIORS,
        generator: torch.Generator | None = None,
        cnn_input: tuple[int, int] = CNN_INPUT,
    ) -> None:
        super().__init__()
        self.cnn_input = cnn_input
        if not scale_priors or not all(0 < s <= 1 for s in scale_priors):
            raise ValueError(f"scale_priors must lie in (0, 1]; got {tuple(scale_priors)}.")
        self.scale_priors = tuple(scale_priors)
        self.generator = generator
        self.cnn = FrameCNN(widths, dropout)

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        _check_frames(self, x)
        if not self.training:
            return SeverityOutput(self.cnn(_shrink(x, self.cnn_input)), None, None, None)
        batch = x.shape[0]
        pick = torch.randint(len(self.scale_priors), (batch,), generator=self.generator)
        sigmas = torch.tensor(self.scale_priors)[pick]
        shift = (torch.rand(batch, 2, generator=self.generator) * 2 - 1) * (1 - sigmas)[:, None]
        thetas = restricted_affine(torch.zeros(batch), sigmas, shift).to(x)
        logits = self.cnn(crop(x, thetas, self.cnn_input))
        return SeverityOutput(logits, None, thetas.unsqueeze(1), sigmas.to(x).unsqueeze(1))


FRAME_SCORERS: dict[str, type[nn.Module]] = {
    "cnn_ce": CNNScorer,
    "cnn_sord": CNNScorer,
    "stn_sord": STNScorer,
    "cnn_random_crop_sord": RandomCropScorer,
    "reg_stn_sord": RegSTNScorer,
}
"""The paper's frame-level rows by name; every class takes (batch, 1, rows, columns)."""

LOSSES: dict[str, str] = {
    "cnn_ce": "ce",
    "cnn_sord": "sord",
    "stn_sord": "sord",
    "cnn_random_crop_sord": "sord",
    "reg_stn_sord": "sord",
}
"""Classification loss of each frame scorer: ``"ce"`` (cross entropy on hard labels) or
``"sord"`` (:func:`sord_loss`). ``reg_stn_sord`` is trained with :func:`reg_stn_loss`, which adds
the consistency and scale-prior terms to SORD."""


def sord_targets(
    scores: torch.Tensor, n_scores: int = SCORES, scale: float = 1.0, zero_gap: float = 1.0
) -> torch.Tensor:
    """SORD soft labels (eq. 3): ``softmax_i(-scale * d(s, i)^2)``.

    ``d(s, i) = |s - i|``, plus ``zero_gap`` when exactly one of ``s`` and ``i`` is 0: the paper
    sets score 0 (healthy) further apart from the others.

    Parameters
    ----------
    scores:
        Integer scores, shape (n,).
    n_scores:
        Number of scores.
    scale:
        Factor of the squared distance; larger is closer to one-hot.
    zero_gap:
        Extra distance between score 0 and every other score.

    Returns
    -------
    torch.Tensor
        Soft labels (n, n_scores), each row summing to 1.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must have shape (n,); got {tuple(scores.shape)}.")
    if scores.numel() and not 0 <= int(scores.min()) <= int(scores.max()) < n_scores:
        raise ValueError(f"scores must lie in [0, {n_scores - 1}]; got {scores.tolist()}.")
    s = scores.long().unsqueeze(1)
    i = torch.arange(n_scores, device=scores.device).unsqueeze(0)
    distance = (s - i).abs().float() + zero_gap * ((s == 0) ^ (i == 0)).float()
    return torch.softmax(-scale * distance**2, dim=1)


def sord_loss(
    logits: torch.Tensor, scores: torch.Tensor, scale: float = 1.0, zero_gap: float = 1.0
) -> torch.Tensor:
    """SORD loss (eq. 4): cross entropy of ``logits`` (n, k) against :func:`sord_targets`,
    averaged over the batch."""
    targets = sord_targets(scores, logits.shape[-1], scale, zero_gap).to(logits)
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def reg_stn_loss(
    out: SeverityOutput,
    scores: torch.Tensor,
    scale_priors: tuple[float, float] = SCALE_PRIORS,
    scale: float = 1.0,
    zero_gap: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reg-STN's joint loss (eq. 7): SORD + consistency + scale prior.

    Parameters
    ----------
    out:
        A :class:`RegSTNScorer` output.
    scores:
        Integer scores, shape (batch,).
    scale_priors:
        sigma_p1 and sigma_p2 (:attr:`RegSTNScorer.scale_priors`).
    scale, zero_gap:
        As :func:`sord_targets`.

    Returns
    -------
    tuple
        The total loss, and its parts ``sord`` (eq. 4 on the first crop's logits), ``mse``
        (eq. 5 as the mean over the batch of ``||l1 - l2||^2 / 4``) and ``prior`` (eq. 6,
        ``|sigma1 - sigma_p1| + |sigma2 - sigma_p2|`` averaged over the batch), detached.
    """
    if out.logits2 is None or out.sigmas is None or out.sigmas.shape[-1] != 2:
        raise ValueError("reg_stn_loss needs a RegSTNScorer output (two crops' logits and scales).")
    sord = sord_loss(out.logits, scores, scale, zero_gap)
    mse = mse_loss(out.logits, out.logits2)
    priors = out.sigmas.new_tensor(scale_priors)
    prior = (out.sigmas - priors).abs().sum(-1).mean()
    total = sord + mse + prior
    return total, {"sord": sord.detach(), "mse": mse.detach(), "prior": prior.detach()}


class SeverityNet(nn.Module):
    """A frame scorer and the uninorm aggregator together, as a model bundle stores them.

    Parameters
    ----------
    variant:
        A key of :data:`FRAME_SCORERS`; the scorer is built with its defaults.

    Notes
    -----
    ``forward`` is the frame scorer's (frames (batch, 1, rows, columns) to
    :class:`SeverityOutput`); ``aggregator`` turns a clip's frame softmax into the clip's score
    probabilities.
    """

    def __init__(self, variant: str = "reg_stn_sord") -> None:
        super().__init__()
        if variant not in FRAME_SCORERS:
            raise ValueError(
                f"Unknown frame scorer {variant!r}; choose one of {', '.join(FRAME_SCORERS)}."
            )
        self.variant = variant
        self.scorer = FRAME_SCORERS[variant]()
        self.aggregator = UninormAggregator()

    def forward(self, x: torch.Tensor) -> SeverityOutput:
        out: SeverityOutput = self.scorer(x)
        return out

    def predict(self, x: torch.Tensor) -> SeverityOutput:
        """What inference needs of :meth:`forward`: the prediction, its crops' transforms and
        scales; Reg-STN's second crop, which only trains, is left out (``logits2`` None)."""
        if isinstance(self.scorer, RegSTNScorer):
            return self.scorer.predict(x)
        return self.forward(x)


def _shrink(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The whole frame at ``size`` (area averaging); unchanged when already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return interpolate(x, size=size, mode="area")


def _check_frames(network: nn.Module, x: torch.Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(
            f"{type(network).__name__} needs (batch, 1, rows, columns); got shape {tuple(x.shape)}."
        )


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )
