"""Train paper 001's B-line networks on simulated exams, a site's VIA-annotated cines and the
POCUS clips; write the bundle.

As in the paper only window labels supervise the network (a window is positive when any of its
frames shows a B-line, :mod:`lus_pacs.families.b_lines.data`): the attention learns where the
B-lines are on its own. A site's own cines come as VIA projects (paper 001's annotation format,
frame-level B-line segments; :mod:`lus_pacs.training.annotated`) and are used exactly as the
simulated ones; the real POCUS clips (optional) only say whether a clip shows B-lines.

Simulated patients and POCUS sources (:attr:`PocusClip.group`) are dealt into ``n_folds`` folds
(:func:`split_by_group`). :func:`train_b_lines` validates on the first and writes the bundle
(:mod:`lus_pacs.families.b_lines.bundle`); :func:`cross_validate_b_lines` trains once per fold
and gives each fold's metrics and their mean. Metrics are those of
:mod:`lus_pacs.families.b_lines.evaluate`.

Usage::

    lus-pacs train b-lines --data DIR --out models/b_lines --epochs N --seed S \
        [--arch c2d_lstm_att|c2d_att|c3d_att|c2d_lstm] [--pocus DIR --pocus-cache DIR] [--folds K] \
        [--via PROJECT.json ... [--via-root DIR]]
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits
from tqdm import tqdm

from lus_pacs.families.b_lines.bundle import write_b_lines_bundle
from lus_pacs.families.b_lines.data import (
    MAX_POCUS_WINDOWS,
    TrainingData,
    load_training_data,
    select_windows,
)
from lus_pacs.families.b_lines.evaluate import (
    ATTENTION_THRESHOLD,
    THRESHOLD,
    binary_metrics,
    pocus_probabilities,
    predict,
    simulated_metrics,
)
from lus_pacs.families.b_lines.network import ARCHITECTURES
from lus_pacs.training.bundle_files import finite, write_json
from lus_pacs.training.seeding import deterministic
from lus_pacs.training.splits import split_by_group

DEFAULT_ARCH = "c2d_lstm_att"
NETWORK_ARGS: dict[str, Any] = {
    "image_size": 64,
    "channels": [8, 8, 16, 16],
    "feature_size": 256,
    "hidden_size": 16,
    "dropout": 0.2,
}
"""Arguments of the LSTM networks; the others take the same less ``hidden_size``."""


@dataclass(frozen=True)
class CrossValidation:
    """The validation metrics of every fold of :func:`cross_validate_b_lines`, and their mean."""

    arch: str
    folds: tuple[dict[str, float], ...]
    mean: dict[str, float]
    """Mean over the folds of each metric, ignoring folds where it is NaN."""
    pocus_pooled: dict[str, float]
    """``pocus_*`` metrics over every POCUS clip, each scored by the fold that held it out
    (empty without POCUS data)."""

    def summary(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "folds": list(self.folds),
            "mean": self.mean,
            "pocus_pooled": self.pocus_pooled,
        }


def architecture(arch: str) -> type[nn.Module]:
    """The network class named ``arch``; a ValueError lists the names there are."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"Unknown B-line architecture {arch!r}; available options are "
            f"{', '.join(ARCHITECTURES)}."
        )
    return ARCHITECTURES[arch]


def network_args(arch: str) -> dict[str, Any]:
    """The constructor arguments of architecture ``arch`` (as written into the bundle)."""
    architecture(arch)
    if arch in ("c2d_lstm_att", "c2d_lstm"):
        return dict(NETWORK_ARGS)
    return {k: v for k, v in NETWORK_ARGS.items() if k != "hidden_size"}


def train_b_lines(
    data_root: Path | None,
    out_dir: Path,
    *,
    epochs: int,
    seed: int,
    arch: str = DEFAULT_ARCH,
    pocus_dir: Path | None = None,
    pocus_cache: Path | None = None,
    lr: float = 1e-4,
    batch_size: int = 20,
    weight_decay: float = 1e-5,
    n_folds: int = 5,
    max_pocus_windows: int | None = MAX_POCUS_WINDOWS,
    via: Sequence[Path] = (),
    via_root: Path | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Train on the data; validate on the first fold; write the bundle into ``out_dir``.

    Parameters
    ----------
    data_root:
        Output of ``lus-pacs synth``, or None to train on ``via`` alone.
    out_dir:
        The bundle folder: ``models/model.pt`` and ``configs/*.json`` are (over)written,
        ``docs/`` is left alone.
    epochs, seed, lr, batch_size, weight_decay:
        Adam with L2 ``weight_decay``; the paper used lr 1e-4, batch 20, L2 1e-5.
    arch:
        A key of :data:`ARCHITECTURES`.
    pocus_dir, pocus_cache:
        The POCUS dataset and the folder its DICOM imports are cached in, to train (and
        validate at clip level) on the real clips too; both or neither.
    n_folds:
        Patient (and POCUS source) folds; the first is the validation set.
    max_pocus_windows:
        At most this many 1-s windows of each POCUS clip train
        (:func:`lus_pacs.families.b_lines.data.load_pocus_windows`).
    via, via_root:
        VIA projects of a site's own annotated cines (paper 001's format), their files relative
        to ``via_root`` (default: each project's folder); they train and validate with the
        simulated cines, split by PatientID (:mod:`lus_pacs.training.annotated`).
    progress:
        Show tqdm progress bars.

    Returns
    -------
    dict
        Validation metrics (:mod:`lus_pacs.families.b_lines.evaluate`), as written into
        ``configs/metadata.json``'s ``eval_metrics``.
    """
    started = time.perf_counter()
    network_class = architecture(arch)
    data = load_training_data(
        data_root, via, via_root, pocus_dir, pocus_cache, max_pocus_windows, progress
    )
    sim_folds, pocus_folds = _folds(data, n_folds, seed)
    recipe = _Recipe(epochs, seed, lr, batch_size, weight_decay, pocus_dir, pocus_cache, progress)
    fold = _train_fold(network_class, arch, data, sim_folds, pocus_folds, 0, recipe)
    _write_bundle(
        out_dir, fold, arch, data.sources, recipe, max_pocus_windows, time.perf_counter() - started
    )
    return fold.metrics


def cross_validate_b_lines(
    data_root: Path | None,
    *,
    epochs: int,
    seed: int,
    arch: str = DEFAULT_ARCH,
    folds: int = 5,
    pocus_dir: Path | None = None,
    pocus_cache: Path | None = None,
    lr: float = 1e-4,
    batch_size: int = 20,
    weight_decay: float = 1e-5,
    max_pocus_windows: int | None = MAX_POCUS_WINDOWS,
    via: Sequence[Path] = (),
    via_root: Path | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
) -> CrossValidation:
    """Patient- and source-level ``folds``-fold cross-validation.

    Each fold in turn is the validation set of a network trained on the others, with the same
    ``seed``. With ``out_dir``, the network of fold 0 (the one :func:`train_b_lines` would
    train) is written there as the bundle, its metadata carrying the cross-validation too.
    Other parameters as :func:`train_b_lines`.
    """
    started = time.perf_counter()
    network_class = architecture(arch)
    data = load_training_data(
        data_root, via, via_root, pocus_dir, pocus_cache, max_pocus_windows, progress
    )
    sim_folds, pocus_folds = _folds(data, folds, seed)
    recipe = _Recipe(epochs, seed, lr, batch_size, weight_decay, pocus_dir, pocus_cache, progress)
    trained = [
        _train_fold(network_class, arch, data, sim_folds, pocus_folds, k, recipe)
        for k in range(folds)
    ]
    per_fold = [fold.metrics for fold in trained]
    mean = {}
    for key in per_fold[0]:
        values = np.array([m.get(key, math.nan) for m in per_fold], dtype=float)
        kept = values[~np.isnan(values)]
        mean[key] = round(float(kept.mean()), 4) if len(kept) else float("nan")
    pooled: dict[str, float] = {}
    if data.clips:
        truth = np.concatenate([fold.pocus_truth for fold in trained])
        probability = np.concatenate([fold.pocus_probability for fold in trained])
        pooled = {f"pocus_{k}": v for k, v in binary_metrics(truth, probability).items()}
    result = CrossValidation(arch, tuple(per_fold), mean, pooled)
    if out_dir is not None:
        seconds = time.perf_counter() - started
        _write_bundle(out_dir, trained[0], arch, data.sources, recipe, max_pocus_windows, seconds)
        metadata = out_dir / "configs" / "metadata.json"
        doc = json.loads(metadata.read_text())
        doc["cross_validation"] = finite(result.summary())
        write_json(metadata, doc)
    return result


def _folds(data: TrainingData, n_folds: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """Indices of simulated cines and POCUS clips in each fold, kept whole by patient/source."""
    sim = split_by_group(
        range(len(data.cines)), key=lambda i: data.cines[i].patient_id, n_folds=n_folds, seed=seed
    )
    pocus: list[list[int]] = [[] for _ in range(n_folds)]
    if data.clips:
        pocus = split_by_group(
            range(len(data.clips)), key=lambda i: data.clips[i].group, n_folds=n_folds, seed=seed
        )
    return sim, pocus


@dataclass(frozen=True)
class _Recipe:
    """How each fold is trained: the arguments of :func:`train_b_lines`."""

    epochs: int
    seed: int
    lr: float
    batch_size: int
    weight_decay: float
    pocus_dir: Path | None
    pocus_cache: Path | None
    progress: bool


@dataclass(frozen=True)
class _Fold:
    """A network trained on every fold but one, and what it did on that one."""

    network: nn.Module
    metrics: dict[str, float]
    counts: dict[str, Any]
    pocus_truth: npt.NDArray[np.bool_]
    pocus_probability: npt.NDArray[np.float64]


def _train_fold(
    network_class: type[nn.Module],
    arch: str,
    data: TrainingData,
    sim_folds: list[list[int]],
    pocus_folds: list[list[int]],
    k: int,
    recipe: _Recipe,
) -> _Fold:
    """Train on every fold but ``k``; the validation metrics and the data counts."""
    epochs, seed, lr, batch_size = recipe.epochs, recipe.seed, recipe.lr, recipe.batch_size
    weight_decay, progress = recipe.weight_decay, recipe.progress
    pocus_dir, pocus_cache = recipe.pocus_dir, recipe.pocus_cache
    val_cines = sim_folds[k]
    train_cines = [i for j, fold in enumerate(sim_folds) if j != k for i in fold]
    val_clips = pocus_folds[k]
    w = data.windows
    # Fold by fold, so that the order of training windows (hence the batches) is that of
    # training on the training folds alone.
    rows = [np.flatnonzero(w.cine == i) for i in train_cines]
    train_rows = torch.from_numpy(np.concatenate(rows))
    pocus_rows = ~torch.isin(data.pocus_clip, torch.tensor(val_clips, dtype=torch.long))
    x = torch.cat([w.x[train_rows], data.pocus_x[pocus_rows]])
    label = torch.cat([w.label[train_rows], data.pocus_label[pocus_rows]])

    with deterministic(seed):
        network = network_class(**network_args(arch))
        _fit(network, x, label, epochs, lr, batch_size, weight_decay, seed, progress)

    val = select_windows(w, val_cines)
    probabilities, attention = predict(network, val.x, batch_size)
    metrics, _ = simulated_metrics(
        probabilities,
        attention,
        val,
        [data.cines[i] for i in val_cines],
        threshold=THRESHOLD,
        attention_threshold=ATTENTION_THRESHOLD,
    )
    truth, probability = np.zeros(0, dtype=bool), np.zeros(0)
    if val_clips and pocus_dir is not None and pocus_cache is not None:
        clips = [data.clips[i] for i in val_clips]
        truth, probability = pocus_probabilities(
            network, clips, pocus_dir, pocus_cache, batch_size=batch_size, progress=progress
        )
        result = binary_metrics(truth, probability, THRESHOLD)
        metrics.update({f"pocus_{name}": value for name, value in result.items()})
    counts = {
        "patients_train": len({data.cines[i].patient_id for i in train_cines}),
        "patients_validation": len({data.cines[i].patient_id for i in val_cines}),
        "cines_train": len(train_cines),
        "cines_validation": len(val_cines),
        "windows_train": len(train_rows),
        "windows_train_positive": int(w.label[train_rows].sum()),
        "windows_validation": len(val.label),
        "windows_validation_positive": int(val.label.sum()),
        "pocus_clips_train": len(data.clips) - len(val_clips),
        "pocus_clips_validation": len(val_clips),
        "pocus_windows_train": int(pocus_rows.sum()),
        "pocus_groups_validation": sorted({data.clips[i].group for i in val_clips}),
    }
    return _Fold(network, metrics, counts, truth, probability)


def _fit(
    network: nn.Module,
    x_all: torch.Tensor,
    label: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
    progress: bool,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(label)
    steps = epochs * -(-n // batch_size)
    network.train()
    with tqdm(total=steps, desc="train b_lines", unit="batch", disable=not progress) as bar:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for first in range(0, n, batch_size):
                index = order[first : first + batch_size]
                x = x_all[index]
                # The paper's augmentation: horizontally flipped frames (half of them here).
                flip = torch.rand(len(index), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
                out = network(x)
                loss = binary_cross_entropy_with_logits(out.logit, label[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(index)
                bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / max(n, 1):.4f}")


def _write_bundle(
    out_dir: Path,
    fold: _Fold,
    arch: str,
    sources: dict[str, Any],
    recipe: _Recipe,
    max_pocus_windows: int | None,
    seconds: float,
) -> None:
    training = {
        "arch": arch,
        "epochs": recipe.epochs,
        "seed": recipe.seed,
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
        "weight_decay": recipe.weight_decay,
        "max_pocus_windows": max_pocus_windows,
        "parameters": sum(p.numel() for p in fold.network.parameters()),
        "seconds": round(seconds, 1),
    }
    data = {**sources, **fold.counts}
    write_b_lines_bundle(out_dir, fold.network, network_args(arch), fold.metrics, training, data)
