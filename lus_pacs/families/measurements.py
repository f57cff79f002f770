"""A linear head on the lung image measurements (:mod:`lus_pacs.inference.lung_features`): the
real-data recipe that the clip-level families can ship as a bundle network.

:class:`MeasurementHead` standardises the clip measurements with the training clips' mean and
spread and applies a logistic regression; :func:`fit_head` fits it by Newton's method with an L2
penalty and classes weighted to equal total weight, so that its intercept does not learn the
training sources' prevalence (which differs from source to source far more than between
devices; without the weighting a model held out on a source scores by the others' prevalence).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.inference.lung_features import CLIP_FEATURES


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
    l2: float = 30.0,
    *,
    balanced: bool = True,
    iterations: int = 100,
) -> MeasurementHead:
    """A :class:`MeasurementHead` fitted to ``labels`` (0/1) of ``features`` (clips, n).

    Raises
    ------
    ValueError
        Fewer than two clips, or only one class.
    """
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.float64)
    if len(y) < 2 or y.min() == y.max():
        raise ValueError("fit_head needs clips of both classes.")
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    weight = np.ones(len(y))
    if balanced:
        share = y.mean()
        weight = np.where(y > 0.5, 0.5 / share, 0.5 / (1 - share))
    penalty = np.eye(z.shape[1]) * l2
    penalty[-1, -1] = 0.0
    w = np.zeros(z.shape[1])
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-z @ w))
        gradient = z.T @ (weight * (p - y)) + penalty @ w
        hessian = z.T @ (z * (weight * p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    head = MeasurementHead(x.shape[1])
    with torch.no_grad():
        head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        head.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        head.linear.weight.copy_(torch.as_tensor(w[None, :-1], dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(w[-1:], dtype=torch.float32))
    return head.eval()
