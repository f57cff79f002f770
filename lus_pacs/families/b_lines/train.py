"""Train paper 001's B-line networks on simulated exams, a site's VIA-annotated cines and the
POCUS clips; write the bundle.

Windows are the network's input as the node makes it (:func:`b_line_windows`); a window is
positive when any of its frames shows a B-line. As in the paper only these window labels
supervise the network: the attention learns where the B-lines are on its own.

The real POCUS clips (optional) only say whether a clip shows B-lines somewhere. For simplicity
every window of a clip is labelled with the clip's label, although a positive clip may have
windows without B-lines; clips whose ``b_lines`` is not recorded are skipped. Their windows are
resampled in time to the simulated window length (nearest frame) so that they batch together,
and a long clip gives at most ``max_pocus_windows`` windows spread over it.

A site's own cines come as VIA projects (paper 001's annotation format, frame-level B-line
segments; :mod:`lus_pacs.training.annotated`) and are used exactly as the simulated ones.

Simulated patients and POCUS sources (:attr:`PocusClip.group`) are dealt into ``n_folds`` folds
(:func:`split_by_group`). :func:`train_b_lines` validates on the first and writes the bundle;
:func:`cross_validate_b_lines` trains once per fold and gives each fold's metrics and their mean.
Metrics are those of :mod:`lus_pacs.families.b_lines.evaluate`.

Usage::

    python -m lus_pacs.families.b_lines.train --data DIR --out models/b_lines --epochs N --seed S \
        [--arch c2d_lstm_att|c2d_att|c3d_att|c2d_lstm] [--pocus DIR --pocus-cache DIR] [--folds K] \
        [--via PROJECT.json ... [--via-root DIR]]
"""

from __future__ import annotations

import argparse
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

from lus_pacs.families.b_lines.evaluate import (
    ATTENTION_THRESHOLD,
    THRESHOLD,
    Windows,
    auc,
    binary_metrics,
    load_windows,
    pocus_probabilities,
    predict,
    simulated_metrics,
)
from lus_pacs.families.b_lines.network import ARCHITECTURES
from lus_pacs.inference.transforms import b_line_windows
from lus_pacs.training.annotated import BLineCine, read_via_cines
from lus_pacs.training.bundle_files import (
    INTENDED_USE,
    finite,
    grey_clip_input,
    logit_output,
    versions_and_authors,
    write_json,
)
from lus_pacs.training.pocus import PocusClip, load_clip, read_labels
from lus_pacs.training.seeding import deterministic
from lus_pacs.training.simulated import find_simulated
from lus_pacs.training.splits import split_by_group

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_ARCH",
    "CrossValidation",
    "Windows",
    "auc",
    "cross_validate_b_lines",
    "load_pocus_windows",
    "load_windows",
    "network_args",
    "train_b_lines",
]

DEFAULT_ARCH = "c2d_lstm_att"
MAX_POCUS_WINDOWS = 4
NETWORK_ARGS: dict[str, Any] = {
    "image_size": 64,
    "channels": [8, 8, 16, 16],
    "feature_size": 256,
    "hidden_size": 16,
    "dropout": 0.2,
}
"""Arguments of the LSTM networks; the others take the same less ``hidden_size``."""
BUNDLE_VERSION = "0.2.0"
CHANGELOG = {
    "0.2.0": "trained on simulated exams and the public POCUS clips (clip labels)",
    "0.1.0": "first version, trained on simulated exams only",
}
TITLES = {
    "c2d_lstm_att": "CNN + bidirectional LSTM + temporal attention",
    "c2d_att": "CNN + temporal attention (baseline C2D+A)",
    "c3d_att": "3D CNN + temporal attention (baseline C3D+A)",
    "c2d_lstm": "CNN + bidirectional LSTM, no attention (baseline C2D+LSTM)",
}


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


def load_pocus_windows(
    clips: Sequence[PocusClip],
    pocus_dir: Path,
    cache_dir: Path,
    length: int,
    progress: bool = True,
    max_windows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (n, 1, ``length``, 64, 64) of the clips with a ``b_lines`` label, and the labels.

    Every window carries its clip's label; windows are resampled to ``length`` frames. With
    ``max_windows``, a longer clip gives that many windows spread evenly over it: neighbouring
    windows of one clip are nearly the same picture, and the long clips would otherwise
    outweigh the short ones.
    """
    xs, labels = [], []
    labelled = [c for c in clips if c.b_lines is not None]
    for clip in tqdm(labelled, desc="pocus windows", unit="clip", disable=not progress):
        x, _ = b_line_windows(load_clip(clip, pocus_dir, cache_dir), default_fps=clip.fps)
        if max_windows is not None and len(x) > max_windows:
            keep = np.unique(np.round(np.linspace(0, len(x) - 1, max_windows)).astype(np.intp))
            x = x[torch.from_numpy(keep)]
        index = np.round(np.linspace(0, x.shape[2] - 1, length)).astype(np.intp)
        xs.append(x[:, :, torch.from_numpy(index)])
        labels.extend([float(bool(clip.b_lines))] * len(x))
    if not xs:
        return torch.zeros(0, 1, length, 64, 64), torch.zeros(0)
    return torch.cat(xs), torch.tensor(labels, dtype=torch.float32)


@dataclass(frozen=True)
class _Data:
    """Everything loaded once: the windows of the simulated and annotated cines, and the
    labelled POCUS clips' windows."""

    cines: list[BLineCine]
    windows: Windows
    clips: list[PocusClip]
    pocus_x: torch.Tensor
    pocus_label: torch.Tensor
    pocus_clip: torch.Tensor
    """(windows,) index into ``clips`` of each POCUS window."""
    sources: dict[str, Any]
    """Names of the data folders and files, for the bundle's metadata."""


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
        At most this many 1-s windows of each POCUS clip train (see :func:`load_pocus_windows`).
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
    data = _load(data_root, via, via_root, pocus_dir, pocus_cache, max_pocus_windows, progress)
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
    data = _load(data_root, via, via_root, pocus_dir, pocus_cache, max_pocus_windows, progress)
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


def _load(
    data_root: Path | None,
    via: Sequence[Path],
    via_root: Path | None,
    pocus_dir: Path | None,
    pocus_cache: Path | None,
    max_pocus_windows: int | None,
    progress: bool,
) -> _Data:
    if (pocus_dir is None) != (pocus_cache is None):
        raise ValueError("Give pocus_dir and pocus_cache together (the cache may be empty).")
    cines: list[BLineCine] = []
    if data_root is not None:
        cines.extend(find_simulated(data_root))
        if not cines:
            raise FileNotFoundError(f"No simulated cines (*/*.truth.json) under {data_root}.")
    for project in via:
        cines.extend(read_via_cines(project, via_root))
    if not cines:
        raise ValueError("No cines to train on: give simulated data, VIA projects, or both.")
    # Folder and file names only: the bundle is committed, and paths of the training machine
    # mean nothing elsewhere.
    sources = {
        "root": data_root.name if data_root else None,
        "via": [p.name for p in via],
        "pocus": pocus_dir.name if pocus_dir else None,
    }
    windows = load_windows(cines, progress)
    clips: list[PocusClip] = []
    pocus_x, pocus_label = torch.zeros(0, *windows.x.shape[1:]), torch.zeros(0)
    owner: list[int] = []
    if pocus_dir is not None and pocus_cache is not None:
        clips = [c for c in read_labels(pocus_dir / "labels.csv") if c.b_lines is not None]
        xs, labels = [], []
        for i, clip in enumerate(tqdm(clips, desc="pocus", unit="clip", disable=not progress)):
            x, label = load_pocus_windows(
                [clip], pocus_dir, pocus_cache, windows.x.shape[2], False, max_pocus_windows
            )
            xs.append(x)
            labels.append(label)
            owner.extend([i] * len(x))
        pocus_x, pocus_label = torch.cat(xs), torch.cat(labels)
    owners = torch.tensor(owner, dtype=torch.long)
    return _Data(cines, windows, clips, pocus_x, pocus_label, owners, sources)


def _folds(data: _Data, n_folds: int, seed: int) -> tuple[list[list[int]], list[list[int]]]:
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
    data: _Data,
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

    val = _select(w, val_cines)
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


def _select(windows: Windows, cines: Sequence[int]) -> Windows:
    """The windows of ``cines``, their ``cine`` renumbered to positions in ``cines``."""
    position = {c: i for i, c in enumerate(cines)}
    rows = np.flatnonzero(np.isin(windows.cine, list(cines)))
    return Windows(
        x=windows.x[torch.from_numpy(rows)],
        label=windows.label[torch.from_numpy(rows)],
        frame_truth=windows.frame_truth[rows],
        cine=np.array([position[int(c)] for c in windows.cine[rows]], dtype=np.intp),
        starts=tuple(windows.starts[r] for r in rows),
    )


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
    network = fold.network
    training = {
        "arch": arch,
        "epochs": recipe.epochs,
        "seed": recipe.seed,
        "lr": recipe.lr,
        "batch_size": recipe.batch_size,
        "weight_decay": recipe.weight_decay,
        "max_pocus_windows": max_pocus_windows,
        "parameters": sum(p.numel() for p in network.parameters()),
        "seconds": round(seconds, 1),
    }
    data = {**sources, **fold.counts}
    metrics = fold.metrics
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out_dir / "models" / "model.pt")
    inference = {
        "imports": [],
        "network_def": {
            "_target_": f"lus_pacs.families.b_lines.network.{type(network).__name__}",
            **network_args(arch),
        },
        "threshold": THRESHOLD,
        "attention_threshold": ATTENTION_THRESHOLD,
    }
    write_json(out_dir / "configs" / "inference.json", inference)
    write_json(out_dir / "configs" / "metadata.json", _metadata(metrics, data, training))


def _metadata(
    metrics: dict[str, float], data: dict[str, Any], training: dict[str, Any]
) -> dict[str, Any]:
    sources = ["simulated lung-ultrasound exams made with `lus-pacs synth` (no patient data)"]
    if data.get("via"):
        sources.append(f"the site's VIA-annotated cines ({', '.join(data['via'])})")
    if data.get("pocus"):
        sources.append("the public POCUS lung-ultrasound clips (clip-level B-line labels)")
    return {
        **versions_and_authors(),
        "version": BUNDLE_VERSION,
        "changelog": CHANGELOG,
        "name": f"B-line detection, {TITLES[training['arch']]} (paper 001)",
        "task": "B-line detection and temporal localisation in lung-ultrasound cine loops",
        "description": (
            f"{TITLES[training['arch']]} (lus_pacs.families.b_lines.network, paper 001's Table 1), "
            "applied to 1-second windows of the tissue region "
            "resized to 64x64. Gives the probability that a window shows B-lines and the "
            "attention of each frame. Research use only; not a medical device."
        ),
        "data_source": "; ".join(sources) + "; see docs/README.md",
        "data_type": "dicom",
        "image_classes": (
            "single channel: the tissue region of 1 second of frames, resized to 64x64, "
            "intensity scaled to [0, 1]"
        ),
        "label_classes": "one value per window: 1 when any frame of the window shows a B-line",
        "pred_classes": (
            "logit: sigmoid gives the probability of B-lines in the window; attention: weight "
            "of each frame, summing to 1 over the window"
        ),
        "eval_metrics": finite(metrics),
        "intended_use": INTENDED_USE,
        "references": [
            "Kerdegari H. et al. Automatic detection of B-lines in lung ultrasound videos from "
            "severe dengue patients. IEEE ISBI 2021."
        ],
        "training": {**training, "data": data},
        "network_data_format": {
            "inputs": grey_clip_input(
                ["T", 64, 64], "B-mode luminance; T frames = 1 second of the cine"
            ),
            "outputs": {
                "logit": logit_output("B-lines present (logit; apply a sigmoid)"),
                "attention": {
                    "type": "series",
                    "format": "sequence",
                    "num_channels": 1,
                    "spatial_shape": ["T"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "temporal attention of each frame, sums to 1"},
                },
            },
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="output of `lus-pacs synth`")
    parser.add_argument(
        "--via",
        type=Path,
        action="append",
        default=[],
        help="a VIA project of annotated DICOM cines (paper 001's format); repeatable",
    )
    parser.add_argument("--via-root", type=Path, help="folder the VIA file names are under")
    parser.add_argument("--out", type=Path, help="the bundle folder (with --folds: fold 0's)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--arch", default=DEFAULT_ARCH, choices=list(ARCHITECTURES))
    parser.add_argument("--pocus", type=Path, help="the POCUS dataset folder (labels.csv)")
    parser.add_argument("--pocus-cache", type=Path, help="folder for the clips' DICOM imports")
    parser.add_argument("--folds", type=int, help="cross-validate over this many folds instead")
    parser.add_argument("--n-folds", type=int, default=5, help="folds; the first validates")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument(
        "--max-pocus-windows",
        type=int,
        default=MAX_POCUS_WINDOWS,
        help="1-s windows per POCUS clip at most, spread over the clip (0: all)",
    )
    args = parser.parse_args(argv)
    if args.data is None and not args.via:
        parser.error("give --data, --via, or both")
    common: dict[str, Any] = {
        "via": args.via,
        "via_root": args.via_root,
        "epochs": args.epochs,
        "seed": args.seed,
        "arch": args.arch,
        "pocus_dir": args.pocus,
        "pocus_cache": args.pocus_cache,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "max_pocus_windows": args.max_pocus_windows or None,
    }
    if args.folds is not None:
        result = cross_validate_b_lines(args.data, folds=args.folds, out_dir=args.out, **common)
        print(json.dumps(finite(result.summary()), indent=2))
        return
    if args.out is None:
        parser.error("--out is required unless --folds is given")
    metrics = train_b_lines(args.data, args.out, n_folds=args.n_folds, **common)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
