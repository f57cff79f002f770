"""Train paper 001's B-line model on simulated exams and write its bundle.

Windows are the network's input as the node makes it (:func:`b_line_windows`); a window is
positive when any of its frames shows a B-line. As in the paper only these window labels
supervise the network: the attention learns where the B-lines are on its own. Patients are split
into five groups (:func:`split_by_group`); the first is the validation set.

Validation is measured at two levels:

* window: the network's own task (the paper's "one-second clip"), probability >= threshold;
* cine: what the node reports (:func:`findings_from_windows`), probability = max over windows.

Key-frame accuracy is the fraction of positive windows (cines) whose highest-attention frame
(the node's key frame) is a true B-line frame; the ``mixed`` variants count only those where some
frames show no B-line, the only ones where a wrong choice is possible.

Usage::

    python -m lus_pacs.training.train_b_lines --data DIR --out models/b_lines --epochs N --seed S
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import monai
import numpy as np
import numpy.typing as npt
import torch
from torch.nn.functional import binary_cross_entropy_with_logits
from tqdm import tqdm

from lus_pacs import __version__
from lus_pacs.domain import ModelInfo
from lus_pacs.imaging.transforms import b_line_windows
from lus_pacs.inference.b_lines import findings_from_windows
from lus_pacs.nets.b_lines import C2DLSTMAttention
from lus_pacs.training.simulated import SimulatedCine, find_simulated
from lus_pacs.training.splits import split_by_group

NETWORK_ARGS: dict[str, Any] = {
    "image_size": 64,
    "channels": [8, 8, 16, 16],
    "feature_size": 256,
    "hidden_size": 16,
    "dropout": 0.2,
}
THRESHOLD = 0.5
ATTENTION_THRESHOLD = 0.5
BUNDLE_VERSION = "0.1.0"
TITLE = "B-line detection, CNN + bidirectional LSTM + temporal attention (paper 001)"


@dataclass(frozen=True)
class Windows:
    """The windows of a set of cines, with their truth."""

    x: torch.Tensor
    """(windows, 1, frames, 64, 64) float32 in [0, 1]."""
    label: torch.Tensor
    """(windows,) float32: 1 when any frame of the window shows a B-line."""
    frame_truth: npt.NDArray[np.bool_]
    """(windows, frames): B-line at each position of the window."""
    cine: npt.NDArray[np.intp]
    """(windows,) index of the window's cine in the list it was made from."""
    starts: tuple[int, ...]
    """1-based first frame of each window."""


def load_windows(cines: Sequence[SimulatedCine], progress: bool = True) -> Windows:
    """Cut every cine into the network's windows (the cine's own frame rate sets their length)."""
    xs, labels, truths, owner, starts = [], [], [], [], []
    for i, sim in enumerate(tqdm(cines, desc="windows", unit="cine", disable=not progress)):
        x, first = b_line_windows(sim.load(), default_fps=sim.fps)
        positive = np.array([f.b_line_count > 0 for f in sim.frames])
        length = x.shape[2]
        for s in first:
            index = np.minimum(np.arange(s - 1, s - 1 + length), sim.n_frames - 1)
            truths.append(positive[index])
            labels.append(float(positive[index].any()))
        xs.append(x)
        owner.extend([i] * len(first))
        starts.extend(first)
    return Windows(
        x=torch.cat(xs),
        label=torch.tensor(labels, dtype=torch.float32),
        frame_truth=np.stack(truths),
        cine=np.asarray(owner, dtype=np.intp),
        starts=tuple(starts),
    )


def train_b_lines(
    data_root: Path,
    out_dir: Path,
    *,
    epochs: int,
    seed: int,
    lr: float = 1e-4,
    batch_size: int = 20,
    weight_decay: float = 1e-5,
    n_folds: int = 5,
    progress: bool = True,
) -> dict[str, float]:
    """Train on the simulated exams under ``data_root``; write the bundle into ``out_dir``.

    Parameters
    ----------
    data_root:
        Output of ``lus-pacs synth``.
    out_dir:
        The bundle folder: ``models/model.pt`` and ``configs/*.json`` are (over)written,
        ``docs/`` is left alone.
    epochs, seed, lr, batch_size, weight_decay:
        Adam with L2 ``weight_decay``; the paper used lr 1e-4, batch 20, L2 1e-5.
    n_folds:
        Patient groups; the first is the validation set.
    progress:
        Show tqdm progress bars.

    Returns
    -------
    dict
        Validation metrics (``window_*``, ``clip_*``, ``key_frame_*``), as written into
        ``configs/metadata.json``'s ``eval_metrics``.
    """
    started = time.perf_counter()
    cines = find_simulated(data_root)
    if not cines:
        raise FileNotFoundError(f"No simulated cines (*/*.truth.json) under {data_root}.")
    folds = split_by_group(cines, key=lambda c: c.patient_id, n_folds=n_folds, seed=seed)
    val_cines = folds[0]
    train_cines = [c for fold in folds[1:] for c in fold]
    train = load_windows(train_cines, progress)
    val = load_windows(val_cines, progress)

    with _deterministic(seed):
        network = C2DLSTMAttention(**NETWORK_ARGS)
        _fit(network, train, epochs, lr, batch_size, weight_decay, seed, progress)
    probabilities, attention = _predict(network, val.x, batch_size)
    metrics = _evaluate(probabilities, attention, val, val_cines)

    n_params = sum(p.numel() for p in network.parameters())
    data = {
        "root": str(data_root),
        "patients_train": len({c.patient_id for c in train_cines}),
        "patients_validation": len({c.patient_id for c in val_cines}),
        "cines_train": len(train_cines),
        "cines_validation": len(val_cines),
        "windows_train": len(train.label),
        "windows_train_positive": int(train.label.sum()),
        "windows_validation": len(val.label),
        "windows_validation_positive": int(val.label.sum()),
    }
    training = {
        "epochs": epochs,
        "seed": seed,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "parameters": n_params,
        "seconds": round(time.perf_counter() - started, 1),
    }
    _write_bundle(out_dir, network, metrics, data, training)
    return metrics


def _fit(
    network: C2DLSTMAttention,
    train: Windows,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
    progress: bool,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(train.label)
    steps = epochs * -(-n // batch_size)
    network.train()
    with tqdm(total=steps, desc="train b_lines", unit="batch", disable=not progress) as bar:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for first in range(0, n, batch_size):
                index = order[first : first + batch_size]
                x = train.x[index]
                # The paper's augmentation: horizontally flipped frames (half of them here).
                flip = torch.rand(len(index), generator=generator) < 0.5
                x = torch.where(flip[:, None, None, None, None], x.flip(-1), x)
                out = network(x)
                loss = binary_cross_entropy_with_logits(out.logit, train.label[index])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(index)
                bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{total / n:.4f}")


def _predict(
    network: C2DLSTMAttention, x: torch.Tensor, batch_size: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    network.eval()
    probabilities, attention = [], []
    with torch.inference_mode():
        for first in range(0, len(x), batch_size):
            out = network(x[first : first + batch_size])
            probabilities.append(torch.sigmoid(out.logit).double().numpy())
            attention.append(out.attention.double().numpy())
    return np.concatenate(probabilities), np.concatenate(attention)


def _evaluate(
    probabilities: npt.NDArray[np.float64],
    attention: npt.NDArray[np.float64],
    val: Windows,
    cines: Sequence[SimulatedCine],
) -> dict[str, float]:
    label = val.label.numpy() > 0.5
    metrics = {f"window_{k}": v for k, v in _binary(label, probabilities).items()}

    positive = label
    mixed = positive & ~val.frame_truth.all(axis=1)
    key = np.argmax(attention, axis=1)
    hit = val.frame_truth[np.arange(len(key)), key]
    metrics["key_frame_accuracy_window"] = _mean(hit[positive])
    metrics["key_frame_accuracy_window_mixed"] = _mean(hit[mixed])
    metrics["windows_mixed"] = float(mixed.sum())

    info = ModelInfo("b_lines", BUNDLE_VERSION, TITLE)
    clip_truth, clip_prob, clip_hit, clip_mixed, iou = [], [], [], [], []
    for i, sim in enumerate(cines):
        rows = np.flatnonzero(val.cine == i)
        findings = findings_from_windows(
            probabilities[rows],
            attention[rows],
            [val.starts[r] for r in rows],
            sim.n_frames,
            threshold=THRESHOLD,
            attention_threshold=ATTENTION_THRESHOLD,
            model=info,
        )
        truth = set(sim.b_line_frames)
        clip_truth.append(bool(truth))
        clip_prob.append(findings.probability)
        if truth and findings.key_frame is not None:
            clip_hit.append(findings.key_frame in truth)
            clip_mixed.append(len(truth) < sim.n_frames)
            predicted = set(findings.frames)
            iou.append(len(truth & predicted) / len(truth | predicted))
    metrics.update(
        {f"clip_{k}": v for k, v in _binary(np.array(clip_truth), np.array(clip_prob)).items()}
    )
    hits, mixed_cines = np.array(clip_hit, dtype=bool), np.array(clip_mixed, dtype=bool)
    metrics["key_frame_accuracy_clip"] = _mean(hits)
    metrics["key_frame_accuracy_clip_mixed"] = _mean(hits[mixed_cines])
    metrics["clips_mixed"] = float(mixed_cines.sum())
    metrics["clip_frame_iou"] = _mean(np.array(iou))
    return metrics


def _binary(truth: npt.NDArray[np.bool_], probability: npt.NDArray[np.float64]) -> dict[str, float]:
    predicted = probability >= THRESHOLD
    tp = float((predicted & truth).sum())
    precision = tp / max(float(predicted.sum()), 1.0)
    recall = tp / max(float(truth.sum()), 1.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "auc": round(auc(truth, probability), 4),
        "n": float(len(truth)),
        "n_positive": float(truth.sum()),
    }


def auc(truth: npt.NDArray[np.bool_], score: npt.NDArray[np.floating]) -> float:
    """Area under the ROC curve (Mann-Whitney; ties count a half); NaN without both classes."""
    pos, neg = score[truth], score[~truth]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def _mean(values: npt.NDArray[np.bool_] | npt.NDArray[np.float64]) -> float:
    return round(float(values.mean()), 4) if len(values) else float("nan")


@contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seed torch and ask for deterministic kernels; restore the previous setting after."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _write_bundle(
    out_dir: Path,
    network: C2DLSTMAttention,
    metrics: dict[str, float],
    data: dict[str, Any],
    training: dict[str, Any],
) -> None:
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out_dir / "models" / "model.pt")
    inference = {
        "imports": [],
        "network_def": {"_target_": "lus_pacs.nets.b_lines.C2DLSTMAttention", **NETWORK_ARGS},
        "threshold": THRESHOLD,
        "attention_threshold": ATTENTION_THRESHOLD,
    }
    _write_json(out_dir / "configs" / "inference.json", inference)
    _write_json(out_dir / "configs" / "metadata.json", _metadata(metrics, data, training))


def _metadata(
    metrics: dict[str, float], data: dict[str, Any], training: dict[str, Any]
) -> dict[str, Any]:
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "first version, trained on simulated exams only"},
        "name": TITLE,
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            "lus-pacs": __version__,
            "pydicom": package_version("pydicom"),
        },
        "task": "B-line detection and temporal localisation in lung-ultrasound cine loops",
        "description": (
            "Per-frame 2D CNN (four 3x3 convolutions with batch norm and ReLU, two max-poolings, "
            "FC to a 256-d feature), bidirectional LSTM (16 units a direction), Bahdanau temporal "
            "attention and an FC classifier, applied to 1-second windows of the tissue region "
            "resized to 64x64. Gives the probability that a window shows B-lines and the "
            "attention of each frame. Research use only; not a medical device."
        ),
        "authors": "lus-pacs contributors",
        "copyright": "Copyright (c) lus-pacs contributors",
        "data_source": (
            "Simulated lung-ultrasound exams made with `lus-pacs synth` (no patient data); "
            "see docs/README.md"
        ),
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
        "eval_metrics": {k: None if math.isnan(v) else v for k, v in metrics.items()},
        "intended_use": "Research only. Not a medical device; not validated on real patients.",
        "references": [
            "Kerdegari H. et al. Automatic detection of B-lines in lung ultrasound videos from "
            "severe dengue patients. IEEE ISBI 2021."
        ],
        "training": {**training, "data": data},
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "US",
                    "num_channels": 1,
                    "spatial_shape": ["T", 64, 64],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "B-mode luminance; T frames = 1 second of the cine"},
                }
            },
            "outputs": {
                "logit": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": 1,
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {"0": "B-lines present (logit; apply a sigmoid)"},
                },
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


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=4) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="output of `lus-pacs synth`")
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=20)
    args = parser.parse_args(argv)
    metrics = train_b_lines(
        args.data,
        args.out,
        epochs=args.epochs,
        seed=args.seed,
        lr=args.lr,
        batch_size=args.batch_size,
    )
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
