"""A linear head on the lung image measurements (:mod:`lus_pacs.inference.lung_features`): the
real-data recipe that the clip-level families can ship as a bundle network.

:class:`MeasurementHead` standardises the clip measurements with the training clips' mean and
spread and applies a logistic regression; :func:`fit_head` fits it by Newton's method with an L2
penalty and classes weighted to equal total weight, so that its intercept does not learn the
training sources' prevalence (which differs from source to source far more than between
devices; without the weighting a model held out on a source scores by the others' prevalence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.inference.lung_features import CLIP_FEATURES

HEAD_L2 = 30.0
"""The head's L2 penalty on the standardised measurement weights: the middle of 3, 30 and 300,
chosen leave-source-out before the fit was stratified and kept since (stratified, 1 to 300 give
the same figures within 0.01: see the B-line model card)."""


class MeasurementHead(nn.Module):
    """``logit = w . (x - mean) / scale + b`` over the clip measurements.

    Parameters
    ----------
    n_features:
        Measurements per clip; :data:`CLIP_FEATURES` by default.
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, n_features: int = len(CLIP_FEATURES)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, shape (clips,), of measurements shaped (clips, n_features)."""
        return self.linear((x - self.mean) / self.scale).squeeze(-1)

    def probability(self, features: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Probabilities of measurements shaped (clips, n_features)."""
        with torch.inference_mode():
            logits = self(torch.as_tensor(np.asarray(features, np.float32)))
        return torch.sigmoid(logits).double().numpy()


def fit_head(
    features: npt.NDArray[np.floating],
    labels: npt.NDArray[np.bool_] | npt.NDArray[np.floating],
    l2: float = HEAD_L2,
    *,
    groups: Sequence[str] | None = None,
    balanced: bool = True,
    iterations: int = 100,
) -> MeasurementHead:
    """A :class:`MeasurementHead` fitted to ``labels`` (0/1) of ``features`` (clips, n).

    With ``groups`` (each clip's source: publisher, device, site) the fit is stratified: each
    group has its own intercept while the measurement weights are shared, so the weights learn
    what tells positives from negatives *within* a source and nothing from which source a clip
    looks like (sources differ in prevalence as much as in device; a group with one class only
    adds nothing to the weights). The head's single intercept is then fitted with those weights
    fixed, classes balanced, over all clips.

    Raises
    ------
    ValueError
        Fewer than two clips, only one class, or ``groups`` of another length.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64)
    if len(y) < 2 or y.min() == y.max():
        raise ValueError("fit_head needs clips of both classes.")
    if groups is not None and len(groups) != len(y):
        raise ValueError(f"fit_head: {len(groups)} groups for {len(y)} clips.")
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    standard = (x - mean) / scale
    weight = np.ones(len(y))
    if balanced:
        share = y.mean()
        weight = np.where(y > 0.5, 0.5 / share, 0.5 / (1 - share))
    n = x.shape[1]
    if groups is None:
        z = np.c_[standard, np.ones(len(y))]
        penalty = np.r_[np.full(n, l2), 0.0]
    else:
        names = sorted(set(groups))
        z = np.c_[standard, np.array([[g == name for name in names] for g in groups], np.float64)]
        # A group of one class would push its intercept to infinity: a faint penalty holds it.
        penalty = np.r_[np.full(n, l2), np.full(len(names), _GROUP_PENALTY)]
    w = _newton(z, y, weight, np.diag(penalty), iterations)
    if groups is not None:
        offset = standard @ w[:n]
        bias = _newton(np.ones((len(y), 1)), y, weight, np.zeros((1, 1)), iterations, offset)
        w = np.r_[w[:n], bias]
    head = MeasurementHead(x.shape[1])
    with torch.no_grad():
        head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        head.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        head.linear.weight.copy_(torch.as_tensor(w[None, :-1], dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(w[-1:], dtype=torch.float32))
    return head.eval()


_GROUP_PENALTY = 1e-2
"""L2 penalty on each group's own intercept in a stratified fit."""


def _newton(
    z: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    weight: npt.NDArray[np.float64],
    penalty: npt.NDArray[np.float64],
    iterations: int,
    offset: npt.NDArray[np.float64] | float = 0.0,
) -> npt.NDArray[np.float64]:
    """Coefficients of a weighted, penalised logistic regression ``logit = z @ w + offset``."""
    w = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-(z @ w + offset)))
        gradient = z.T @ (weight * (p - y)) + penalty @ w
        hessian = z.T @ (z * (weight * p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w
