"""A linear head on the lung image measurements (:mod:`lus_pacs.inference.lung_features`): the
real-data recipe that the clip-level families can ship as a bundle network.

:class:`MeasurementHead` standardises the clip measurements with the training clips' mean and
spread and applies a logistic regression; :func:`fit_head` fits it by Newton's method with an L2
penalty and classes weighted to equal total weight, so that its intercept does not learn the
training sources' prevalence (which differs from source to source far more than between
devices; without the weighting a model held out on a source scores by the others' prevalence).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from lus_pacs.errors import ModelError
from lus_pacs.inference.bundle import INFERENCE
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION

HEAD_L2 = 30.0
"""The head's L2 penalty on the standardised measurement weights: the middle of 3, 30 and 300,
chosen leave-source-out before the fit was stratified and kept since (stratified, 1 to 300 give
the same figures within 0.01: see the B-line model card)."""

ORDINAL_L2 = 1.0
"""The ordinal head's L2 penalty on its standardised weights, chosen from 0.1, 1, 3 and 10 on
the leave-source-out kappa of the severity recipe, which the card reports (the choice is not
nested in the folds: optimistic by up to about 0.03). Measured again on today's measurements
(2026-12-07): 0.29, 0.27, 0.28, 0.25 as fitted and 0.36, 0.37, 0.34, 0.25 at the operating
point: 1 is the best at the point the bundle ships, not as fitted."""


def check_feature_version(config: Mapping[str, object], bundle_dir: Path, command: str) -> None:
    """Refuse a bundle whose heads were fitted on lung measurements of another version than
    this code measures (its ``feature_version`` in ``configs/inference.json``).

    Raises
    ------
    ModelError
        The versions differ; the message names ``command``, which fits the bundle again.
    """
    measured = config.get("feature_version")
    if measured != FEATURE_VERSION:
        raise ModelError(
            f"{Path(bundle_dir) / INFERENCE}: its head was fitted on lung measurements of "
            f"version {measured!r}, this code measures version {FEATURE_VERSION}; fit it "
            f"again with `{command}`."
        )


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

    def logits(self, features: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Logits of measurements shaped (clips, n_features), computed in float32."""
        with torch.inference_mode():
            return self(torch.tensor(np.asarray(features, np.float32))).double().numpy()

    def probability(self, features: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """Probabilities of measurements shaped (clips, n_features)."""
        with torch.inference_mode():
            logits = self(torch.tensor(np.asarray(features, np.float32)))
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
    weight = _balanced(y) if balanced else np.ones(len(y))
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
        bias = _intercept(standard @ w[:n], y, weight, iterations)
        w = np.r_[w[:n], bias]
    head = MeasurementHead(x.shape[1])
    with torch.no_grad():
        head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        head.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        head.linear.weight.copy_(torch.as_tensor(w[None, :-1], dtype=torch.float32))
        head.linear.bias.copy_(torch.as_tensor(w[-1:], dtype=torch.float32))
    return head.eval()


def fit_intercept(logits: npt.ArrayLike, labels: npt.ArrayLike, iterations: int = 100) -> float:
    """The intercept ``b`` that maximises the class-balanced likelihood of ``sigmoid(logit +
    b)`` with ``logits`` fixed: how :func:`fit_head` sets a stratified head's one intercept,
    and how a site's calibration moves a shipped logit (:mod:`lus_pacs.families.calibration`).

    Raises
    ------
    ValueError
        Not one label per logit, only one class, or a logit that is not a number.
    """
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    if len(z) != len(y) or len(y) < 2 or y.min() == y.max():
        raise ValueError("fit_intercept needs one label per logit and both classes.")
    if not np.isfinite(z).all():
        raise ValueError("fit_intercept needs finite logits.")
    return float(_intercept(z, y, _balanced(y), iterations)[0])


def held_out_logits(
    features: npt.NDArray[np.floating],
    labels: npt.NDArray[np.bool_],
    groups: Sequence[str],
    l2: float = HEAD_L2,
    *,
    sensitivity: float | None = None,
) -> npt.NDArray[np.float64]:
    """Each clip's logit by the head fitted (stratified) on the other groups only: what the
    head says of a source it has never seen. NaN for a group whose others hold one class.

    With ``sensitivity`` each group's logits also get the :func:`operating_shift` fitted on
    the other groups alone, so the shift, too, never sees the group it scores; NaN where no
    positive clip of the other groups can itself be held out (all of them in one group).

    Raises
    ------
    ValueError
        ``sensitivity`` outside (0, 1].
    """
    if sensitivity is not None:
        _check_sensitivity(sensitivity)
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, bool)
    names = np.asarray(groups)
    logits = np.full(len(y), np.nan)
    for group in sorted(set(groups)):
        held = names == group
        if len(set(y[~held])) < 2:
            continue
        rest = [str(g) for g in names[~held]]
        head = fit_head(x[~held], y[~held], l2, groups=rest)
        logits[held] = head.logits(x[held])
        if sensitivity is not None:
            try:
                logits[held] += operating_shift(x[~held], y[~held], rest, sensitivity, l2)
            except ValueError:  # the other groups' positives all lie in one group
                logits[held] = np.nan
    return logits


def _check_sensitivity(sensitivity: float) -> None:
    if not 0.0 < sensitivity <= 1.0:
        raise ValueError(f"operating_shift: sensitivity {sensitivity} is not in (0, 1].")


def operating_shift(
    features: npt.NDArray[np.floating],
    labels: npt.NDArray[np.bool_],
    groups: Sequence[str],
    sensitivity: float,
    l2: float = HEAD_L2,
) -> float:
    """The logit shift at which the head, on sources it was not fitted on, finds
    ``sensitivity`` of the positive clips: the smallest shift that puts that share of the
    :func:`held_out_logits` of the positives at or above 0.

    The class-balanced intercept fits the training sources' own level; on a device none of
    them had, the level is unknown (the B-line model card: a handheld scanner's B-line clips
    scored below it). Held-out logits carry that uncertainty, so a shift chosen on them keeps
    the sensitivity on an unseen source, at the cost of specificity.

    Raises
    ------
    ValueError
        ``sensitivity`` outside (0, 1], or no positive clip has a held-out logit.
    """
    _check_sensitivity(sensitivity)
    y = np.asarray(labels, bool)
    logits = held_out_logits(features, y, groups, l2)
    return shift_to_reach(logits[y], sensitivity)


def shift_to_reach(margins: npt.NDArray[np.floating], share: float) -> float:
    """The smallest shift that puts ``share`` of the finite ``margins`` at or above 0 (the
    k-th largest margin, negated, k = ceil(share x count)).

    Raises
    ------
    ValueError
        ``share`` outside (0, 1], or no finite margin.
    """
    _check_sensitivity(share)
    m = np.asarray(margins, np.float64)
    ranked = np.sort(m[~np.isnan(m)])[::-1]
    if not len(ranked):
        raise ValueError("operating_shift: no positive clip of a source that can be held out.")
    found = int(np.ceil(share * len(ranked) - 1e-9))
    return float(-ranked[found - 1])


def _balanced(y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Weights that give each class equal total weight."""
    share = y.mean()
    return np.where(y > 0.5, 0.5 / share, 0.5 / (1 - share))


def _intercept(
    offset: npt.NDArray[np.float64],
    y: npt.NDArray[np.float64],
    weight: npt.NDArray[np.float64],
    iterations: int,
) -> npt.NDArray[np.float64]:
    """Newton's method on the one intercept, each step at most ``_MAX_STEP``: logits far from
    the labels (a device far off) saturate the sigmoid, and an undamped step then overshoots."""
    from scipy.special import expit

    b = 0.0
    for _ in range(iterations):
        p = expit(offset + b)
        step = float(weight @ (p - y)) / (float(weight @ (p * (1 - p))) + 1e-9)
        step = min(max(step, -_MAX_STEP), _MAX_STEP)
        b -= step
        if abs(step) < 1e-9:
            break
    return np.array([b])


_MAX_STEP = 5.0


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


class OrdinalHead(nn.Module):
    """A cumulative-logit (proportional odds) head: ``eta = w . (x - mean) / scale`` and
    ``P(score <= k) = sigmoid(cut_k - eta)`` for ordered scores ``0 .. len(cuts)``.

    Parameters
    ----------
    n_inputs:
        Inputs per clip.
    n_scores:
        Ordered scores (one more than the cuts).
    """

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    cuts: torch.Tensor

    def __init__(self, n_inputs: int, n_scores: int = 4) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_inputs))
        self.register_buffer("scale", torch.ones(n_inputs))
        self.register_buffer("weight", torch.zeros(n_inputs))
        self.register_buffer("cuts", torch.arange(n_scores - 1, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``eta``, shape (clips,), of inputs shaped (clips, n_inputs)."""
        return ((x - self.mean) / self.scale) @ self.weight

    def etas(self, inputs: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """``eta`` of inputs shaped (clips, n_inputs), before any shift."""
        with torch.inference_mode():
            return self(torch.tensor(np.asarray(inputs, np.float32))).double().numpy()

    def predict(
        self, inputs: npt.NDArray[np.floating], shift: float = 0.0
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Each clip's score (how many cuts its ``eta`` passes: the median of its score
        distribution) and the probabilities of every score, shaped (clips, n_scores);
        ``shift`` is added to every ``eta`` (a site's calibration)."""
        eta = torch.as_tensor(self.etas(inputs)) + shift
        cuts = self.cuts.double()
        below = torch.sigmoid(cuts[None, :] - eta[:, None])
        ones = torch.ones(len(eta), 1, dtype=torch.float64)
        probabilities = torch.diff(torch.cat([0 * ones, below, ones], dim=1), dim=1)
        scores = (eta[:, None] > cuts[None, :]).sum(dim=1)
        return scores.numpy().astype(np.int64), probabilities.numpy()


def fit_ordinal(
    inputs: npt.NDArray[np.floating],
    scores: npt.NDArray[np.integer],
    l2: float = ORDINAL_L2,
    *,
    groups: Sequence[str] | None = None,
    n_scores: int = 4,
) -> OrdinalHead:
    """An :class:`OrdinalHead` fitted to ``scores`` (0 .. n_scores - 1) of ``inputs``
    (clips, n), every score given equal total weight (as :func:`fit_head` balances classes).

    With ``groups`` the fit is stratified as in :func:`fit_head`: each group's own offset of
    ``eta`` and shared weights, then one set of cuts fitted with the weights fixed.

    Raises
    ------
    ValueError
        Scores outside the range, fewer than two distinct scores, or ``groups`` of another
        length.
    """
    from scipy.optimize import minimize

    x = np.asarray(inputs, np.float64)
    y = np.asarray(scores, np.int64)
    if len(y) and (y.min() < 0 or y.max() >= n_scores):
        raise ValueError(f"fit_ordinal: scores must be 0 to {n_scores - 1}.")
    if len(set(y.tolist())) < 2:
        raise ValueError("fit_ordinal needs clips of at least two scores.")
    if groups is not None and len(groups) != len(y):
        raise ValueError(f"fit_ordinal: {len(groups)} groups for {len(y)} clips.")
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-6
    z = torch.as_tensor((x - mean) / scale)
    counts = np.bincount(y, minlength=n_scores).astype(np.float64)
    weight = torch.as_tensor(len(y) / (n_scores * np.maximum(counts, 1.0)))[y]
    names = sorted(set(groups)) if groups is not None else []
    member = torch.as_tensor(
        np.array([[g == name for name in names] for g in groups or ()], np.float64).reshape(
            len(y), len(names)
        )
    )
    target = torch.as_tensor(y)
    n = x.shape[1]

    def cuts_of(t: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(torch.cat([t[:1], torch.exp(t[1:])]), dim=0)

    def loss(eta: torch.Tensor, cut_params: torch.Tensor) -> torch.Tensor:
        below = torch.sigmoid(cuts_of(cut_params)[None, :] - eta[:, None])
        ones = torch.ones(len(eta), 1, dtype=torch.float64)
        p = torch.diff(torch.cat([0 * ones, below, ones], dim=1), dim=1)
        return -(weight * torch.log(p[torch.arange(len(y)), target].clamp_min(1e-12))).sum()

    def full(t: torch.Tensor) -> torch.Tensor:
        w, offsets, cut_params = t[:n], t[n : n + len(names)], t[n + len(names) :]
        eta = z @ w + member @ offsets
        penalty = 0.5 * l2 * w @ w + 0.5 * _GROUP_PENALTY * offsets @ offsets
        return loss(eta, cut_params) + penalty

    start = np.r_[np.zeros(n + len(names)), -1.0, np.zeros(n_scores - 2)]
    t = _minimise(full, start, minimize)
    w = t[:n]
    cut_params = t[n + len(names) :]
    if groups is not None:
        eta = z @ torch.as_tensor(w)
        cut_params = _minimise(lambda c: loss(eta, c), cut_params, minimize)
    head = OrdinalHead(n, n_scores)
    with torch.no_grad():
        head.mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        head.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        head.weight.copy_(torch.as_tensor(w, dtype=torch.float32))
        head.cuts.copy_(cuts_of(torch.as_tensor(cut_params)).float())
    return head.eval()


def _minimise(
    objective: Callable[[torch.Tensor], torch.Tensor],
    start: npt.NDArray[np.float64],
    minimize: Callable[..., Any],
) -> npt.NDArray[np.float64]:
    """The minimum of a torch objective over float64 parameters, by L-BFGS with torch's
    gradient."""

    def value_and_gradient(params: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray]:
        t = torch.as_tensor(params, dtype=torch.float64).requires_grad_(True)
        value = objective(t)
        value.backward()
        assert t.grad is not None
        return float(value.detach()), t.grad.numpy().copy()

    result = minimize(value_and_gradient, start, jac=True, method="L-BFGS-B")
    return np.asarray(result.x, np.float64)
