"""Train paper 003's segmentation networks (U-Net, U-Net++, DeepLabv3+) and write the ensemble
bundle.

Section IV-C of the paper, on this project's data: frames fitted into 200 x 260 and scaled to
[-1, 1] (:func:`severity_frames`), masks fitted the same way by nearest neighbour; pixel-wise
cross entropy; Adam; batches drawn "balanced across patients and scores"
(:func:`balanced_weights`); the paper's on-line augmentations, each with probability 0.33
(:func:`augmentations`). Simulated patients (and a site's LabelMe cines, by PatientID) are dealt
into ``folds`` patient folds; the first is held out: the per-class log biases of the ensemble and
of each member (:class:`SegmentationEnsemble`, :func:`fit_class_bias`) are fitted on it, and it
gives the bundle's Table IV (:mod:`lus_pacs.families.segmentation.evaluate`), optimistic for
that reason; measure a bundle on patients of another seed with ``lus-pacs evaluate
segmentation``.

Where the paper differs, for a CPU: a learning rate decaying by a cosine from 1e-3 to the
paper's 1e-5 over a fixed number of steps instead of 1e-5 "until the training loss converged",
and batches of 16 instead of 32. ``--weight-power`` can weight the cross entropy by class
frequency: score-2 regions (small consolidations) are a few pixels in ten thousand.

Usage::

    lus-pacs train segmentation --data DIR --out models/segmentation --steps N --seed S \\
        [--networks unet --networks unet_plus_plus ...] [--labelme DIR ...]
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.utils import set_determinism
from torch import nn
from torch.nn.functional import cross_entropy
from tqdm import tqdm

from lus_pacs.families.segmentation.bundle import write_segmentation_bundle
from lus_pacs.families.segmentation.data import (
    MaskedCine,
    MaskedFrames,
    augment_batch,
    augmentations,
    balanced_weights,
    load_masked_frames,
    read_labelme_cines,
    simulated_masked_cines,
)
from lus_pacs.families.segmentation.evaluate import (
    UNCALIBRATED,
    evaluate,
    log_probabilities,
    pixel_confusion,
    table_iv,
)
from lus_pacs.families.segmentation.network import (
    CLASSES,
    SEGMENTATION_NETWORKS,
    SegmentationEnsemble,
)
from lus_pacs.training.seeding import deterministic
from lus_pacs.training.simulated import find_simulated
from lus_pacs.training.splits import split_by_group

FINAL_LR = 1e-5
"""The learning rate decays by a cosine from ``lr`` to this, the paper's rate."""


def class_weights(labels: torch.Tensor, power: float) -> torch.Tensor | None:
    """Cross-entropy weight of each class: its pixel frequency to the power ``-power``,
    normalised so that the mean pixel weight is 1; None for ``power`` 0 (plain cross entropy).
    A class absent from ``labels`` gets the largest weight of the others."""
    if power == 0:
        return None
    counts = torch.bincount(labels.flatten().long(), minlength=CLASSES).double()
    frequency = counts / counts.sum()
    weights = torch.zeros(CLASSES, dtype=torch.float64)
    present = counts > 0
    weights[present] = frequency[present] ** -power
    weights[~present] = weights[present].max()
    weights /= (weights * frequency).sum()
    return weights.float()


def train_network(
    name: str,
    frames: MaskedFrames,
    *,
    steps: int,
    seed: int,
    lr: float = 1e-3,
    batch_size: int = 16,
    weight_power: float = 0.0,
    progress: bool = True,
) -> nn.Module:
    """A new ``name`` network (:data:`SEGMENTATION_NETWORKS`) trained for ``steps`` batches drawn
    with :func:`balanced_weights` and augmented; returned in eval mode. ``weight_power`` > 0
    weights the cross entropy by :func:`class_weights`."""
    if name not in SEGMENTATION_NETWORKS:
        raise ValueError(
            f"Unknown network {name!r}; choose among {', '.join(SEGMENTATION_NETWORKS)}."
        )
    weights = balanced_weights(frames.patient, frames.score.tolist())
    per_class = class_weights(frames.y, weight_power)
    with deterministic(seed):
        set_determinism(seed)
        network = SEGMENTATION_NETWORKS[name]()
        transform = augmentations()
        transform.set_random_state(seed)
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(network.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimiser, T_max=steps, eta_min=FINAL_LR
        )
        network.train()
        smoothed = None
        with tqdm(total=steps, desc=f"train {name}", unit="batch", disable=not progress) as bar:
            for _ in range(steps):
                index = torch.multinomial(
                    weights, batch_size, replacement=True, generator=generator
                )
                x, y = augment_batch(transform, frames.x[index], frames.y[index])
                loss = cross_entropy(network(x), y, weight=per_class)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                schedule.step()
                smoothed = loss.item() if smoothed is None else 0.95 * smoothed + 0.05 * loss.item()
                bar.set_postfix(loss=f"{smoothed:.4f}")
                bar.update()
        set_determinism(None)
    return network.eval()


BIAS_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
"""Log-bias values tried for each score class (background stays at 0)."""


def fit_class_bias(log_p: torch.Tensor, truth: torch.Tensor, rounds: int = 2) -> torch.Tensor:
    """Per-class log bias that maximises union Dice + categorical Dice of ``argmax(log_p + b)``
    against ``truth``: coordinate ascent over :data:`BIAS_GRID` for scores 0-3, ``rounds``
    sweeps, background fixed at 0 (only differences between classes matter).

    Only pixels whose two best classes are closer than the grid's span can change class; the
    others are counted once, which makes the search fast.
    """
    span = max(BIAS_GRID) - min(BIAS_GRID)
    fixed = np.zeros((CLASSES, CLASSES), np.int64)
    contested_p, contested_y = [], []
    for first in range(0, len(log_p), 32):
        flat = log_p[first : first + 32].float().permute(0, 2, 3, 1).reshape(-1, CLASSES)
        labels = truth[first : first + 32].reshape(-1)
        top = flat.topk(2, dim=1).values
        open_ = (top[:, 0] - top[:, 1]) <= span
        fixed += pixel_confusion(flat[~open_].argmax(dim=1).numpy(), labels[~open_].numpy())
        contested_p.append(flat[open_])
        contested_y.append(labels[open_].numpy())
    candidates = torch.cat(contested_p)
    candidate_truth = np.concatenate(contested_y)

    def objective(b: torch.Tensor) -> float:
        moved = pixel_confusion((candidates + b).argmax(dim=1).numpy(), candidate_truth)
        row = table_iv(fixed + moved)
        return float(np.nan_to_num(row["union_dice"]) + np.nan_to_num(row["categorical_dice"]))

    bias = torch.zeros(CLASSES)
    best = objective(bias)
    for _ in range(rounds):
        for k in range(CLASSES - 1):
            for value in BIAS_GRID:
                trial = bias.clone()
                trial[k] = value
                score = objective(trial)
                if score > best + 1e-9:
                    best, bias = score, trial
    return bias


def calibrate(ensemble: SegmentationEnsemble, val: MaskedFrames, progress: bool = True) -> None:
    """Fit the ensemble's and each member's class bias on the validation frames, in place."""
    log_p = log_probabilities(ensemble, val, progress=progress)
    for i, name in enumerate(ensemble.members):
        ensemble.member_bias[i] = fit_class_bias(log_p[name], val.y)
    ensemble.class_bias.copy_(fit_class_bias(log_p[UNCALIBRATED], val.y))


def split_cines(
    cines: Sequence[MaskedCine], folds: int, seed: int
) -> tuple[list[MaskedCine], list[MaskedCine]]:
    """Training cines (folds 1..) and validation cines (fold 0), whole patients in each."""
    dealt = split_by_group(cines, key=lambda c: c.patient_id, n_folds=folds, seed=seed)
    return [c for fold in dealt[1:] for c in fold], dealt[0]


@dataclass(frozen=True)
class SegmentationTraining:
    """What :func:`train_segmentation` measured and recorded."""

    rows: dict[str, dict[str, float]]
    """Table IV on the validation fold, by network (:class:`Evaluation`)."""
    training: dict[str, Any]
    """The recipe and data counts, as the bundle's metadata records them."""


def train_segmentation(
    data_root: Path | None,
    out_dir: Path | None,
    *,
    steps: int,
    seed: int,
    labelme: Sequence[Path] = (),
    networks: Sequence[str] = tuple(SEGMENTATION_NETWORKS),
    lr: float = 1e-3,
    batch_size: int = 16,
    every: int = 5,
    folds: int = 5,
    weight_power: float = 0.0,
    mc_samples: int = 10,
    networks_from: Path | None = None,
    progress: bool = True,
) -> SegmentationTraining:
    """Train the ensemble's members, fit the class biases on the validation fold, measure it and
    write the bundle.

    Parameters
    ----------
    data_root:
        Output of ``lus-pacs synth``, or None to train on ``labelme`` alone.
    out_dir:
        The bundle folder (``models/model.pt``, ``configs/*.json`` rewritten, ``docs/`` left
        alone); None to measure only.
    steps, seed, lr, batch_size, weight_power:
        Each member's training (:func:`train_network`; member ``k`` takes seed ``seed + k``).
    labelme:
        Folders of LabelMe JSON files drawn on DICOM cines (:func:`read_labelme_cines`).
    networks:
        The ensemble's members, keys of :data:`SEGMENTATION_NETWORKS`.
    every:
        Simulated cines give every ``every``-th frame.
    folds:
        Patient folds; the first is held out to fit the biases and measure.
    mc_samples:
        The bundle's default number of Monte-Carlo dropout passes.
    networks_from:
        A segmentation bundle whose trained members to take: only the class biases are fitted.
    progress:
        Show progress bars and the data counts.
    """
    started = time.monotonic()
    cines: list[MaskedCine] = []
    if data_root is not None:
        cines += simulated_masked_cines(find_simulated(data_root), every=every)
    for folder in labelme:
        cines += read_labelme_cines(folder)
    if not cines:
        raise ValueError("No cines to train on: give simulated data, LabelMe folders, or both.")
    train_cines, val_cines = split_cines(cines, folds, seed)
    train, val = load_masked_frames(train_cines, progress), load_masked_frames(val_cines, progress)
    if progress:
        tqdm.write(
            f"{len(train)} training frames ({len({c.patient_id for c in train_cines})} patients), "
            f"{len(val)} validation frames ({len({c.patient_id for c in val_cines})} patients)"
        )

    ensemble = SegmentationEnsemble(networks)
    seconds: dict[str, float] = {}
    members_training = None
    if networks_from is not None:
        from lus_pacs.families.segmentation.inference import SegmentationModel

        source = SegmentationModel.load(networks_from)
        ensemble.members.load_state_dict(source.ensemble.members.state_dict())
        metadata = json.loads((networks_from / "configs" / "metadata.json").read_text())
        members_training = metadata.get("training")
    for offset, name in enumerate(networks if networks_from is None else []):
        began = time.monotonic()
        trained = train_network(
            name,
            train,
            steps=steps,
            seed=seed + offset,
            lr=lr,
            batch_size=batch_size,
            weight_power=weight_power,
            progress=progress,
        )
        ensemble.members[name].load_state_dict(trained.state_dict())
        seconds[name] = round(time.monotonic() - began, 1)
    ensemble.eval()
    calibrate(ensemble, val, progress)
    result = evaluate(ensemble, val, progress=progress)

    training: dict[str, Any] = {
        "data": [p.name for p in [*([data_root] if data_root else []), *labelme]],
        "frames": {"train": len(train), "validation": len(val)},
        "patients": {
            "train": len({c.patient_id for c in train_cines}),
            "validation": len({c.patient_id for c in val_cines}),
        },
        "steps": steps,
        "batch_size": batch_size,
        "weight_power": weight_power,
        "lr": lr,
        "every": every,
        "folds": folds,
        "seed": seed,
        "seconds_per_network": seconds,
        "networks_from": networks_from.name if networks_from else None,
        "members_training": members_training,
        "class_bias": [round(float(b), 3) for b in ensemble.class_bias],
        "member_bias": {
            name: [round(float(b), 3) for b in ensemble.member_bias[i]]
            for i, name in enumerate(ensemble.members)
        },
        "minutes": round((time.monotonic() - started) / 60, 1),
    }
    if out_dir is not None:
        write_segmentation_bundle(out_dir, ensemble, result.rows, training, mc_samples)
    return SegmentationTraining(result.rows, training)
