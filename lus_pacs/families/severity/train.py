"""Train paper 003's severity models on simulated exams and write the bundle.

Two stages, kept apart as in the paper (section IV-B, training strategy):

1. The **frame scorer** (one of :data:`FRAME_SCORERS`; Reg-STN by default) learns ICLUS scores
   0-3 from single frames (:func:`severity_frames`: 200 x 260, [-1, 1]). Frames whose score is
   unknown (probe off the skin) are left out. Adam, horizontal flips.
2. The **clip aggregator** (the learned uninorm layer) is trained, with the frame scorer frozen,
   on the frame-score probabilities of clips the frame scorer never trained on: the patients of
   the first fold. Adam lr 1e-2, gradients of every training clip accumulated into a single step
   per epoch, at most 30 epochs, the parameters of the epoch with the lowest training loss kept
   (early stopping on the training loss). Its 5-fold patient cross-validation, against the
   max_argmax and argmax_mean baselines, is what the bundle's metadata reports.

Simulated patients are dealt into ``n_folds`` folds (:func:`split_by_group`): fold 0 is held
out from the frame scorer and gives the frame metrics (Settings 1 and 2, see
:mod:`lus_pacs.families.severity.evaluate`) and the aggregator's data.

Usage::

    lus-pacs train severity --data DIR --out models/severity --epochs N --seed S \
        [--variant reg_stn_sord|cnn_ce|cnn_sord|stn_sord|cnn_random_crop_sord]
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn.functional import cross_entropy
from tqdm import tqdm

from lus_pacs.families.severity.aggregation import (
    SCORES,
    UninormAggregator,
    argmax_mean,
    max_argmax,
)
from lus_pacs.families.severity.network import (
    FRAME_SCORERS,
    LOSSES,
    RegSTNScorer,
    SeverityOutput,
    reg_stn_loss,
    sord_loss,
    sord_targets,
)
from lus_pacs.inference.transforms import severity_frames
from lus_pacs.training.annotated import SeverityCine, read_frame_score_cines
from lus_pacs.training.metrics import confusion, weighted_metrics
from lus_pacs.training.seeding import deterministic
from lus_pacs.training.simulated import find_simulated
from lus_pacs.training.splits import split_by_group

DEFAULT_VARIANT = "reg_stn_sord"
AGGREGATORS = ("uninorm", "max_argmax", "argmax_mean")
TRANSITION_MARGIN = 2
"""Setting 2 drops this many frames before and after each change of the true frame score."""


@dataclass(frozen=True)
class Frames:
    """Frames of a set of cines with their true scores."""

    x: torch.Tensor
    """(frames, 1, 200, 260) float16 (half the memory; computed in float32)."""
    score: torch.Tensor
    """(frames,) int64 ICLUS score 0-3."""
    cine: npt.NDArray[np.intp]
    """Index of each frame's cine in the list the frames were made from."""
    frame: npt.NDArray[np.intp]
    """1-based frame number of each frame in its cine."""


def load_frames(cines: Sequence[SeverityCine], every: int = 1, progress: bool = True) -> Frames:
    """Every ``every``-th frame of each cine whose true score is known, as the network's input."""
    xs: list[torch.Tensor] = []
    scores: list[int] = []
    owner: list[int] = []
    numbers: list[int] = []
    for i, sim in enumerate(tqdm(cines, desc="frames", unit="cine", disable=not progress)):
        keep = [f.frame for f in sim.frames[::every] if f.severity is not None]
        if not keep:
            continue
        xs.append(severity_frames(sim.load(), keep).to(torch.float16))
        by_number = {f.frame: f.severity for f in sim.frames}
        scores.extend(int(by_number[n] or 0) for n in keep)
        owner.extend([i] * len(keep))
        numbers.extend(keep)
    if not xs:
        raise ValueError("No frame with a known score in these cines.")
    return Frames(
        x=torch.cat(xs),
        score=torch.tensor(scores, dtype=torch.long),
        cine=np.asarray(owner, dtype=np.intp),
        frame=np.asarray(numbers, dtype=np.intp),
    )


def frame_loss(
    variant: str, network: nn.Module, out: SeverityOutput, score: torch.Tensor
) -> torch.Tensor:
    """The training loss of ``variant`` (:data:`LOSSES`): cross entropy, SORD, or Reg-STN's
    SORD + consistency + scale prior."""
    if isinstance(network, RegSTNScorer):
        total, _ = reg_stn_loss(out, score, network.scale_priors)
        return total
    if LOSSES[variant] == "ce":
        return cross_entropy(out.logits, score)
    return sord_loss(out.logits, score)


def train_frame_scorer(
    variant: str,
    frames: Frames,
    *,
    epochs: int,
    seed: int,
    lr: float = 1e-3,
    batch_size: int = 32,
    progress: bool = True,
) -> nn.Module:
    """A new ``variant`` network trained on ``frames``; returned in eval mode."""
    network_class = scorer_class(variant)
    with deterministic(seed):
        network = network_class()
        generator = torch.Generator().manual_seed(seed)
        optimiser = torch.optim.Adam(network.parameters(), lr=lr)
        n = len(frames.score)
        steps = epochs * -(-n // batch_size)
        network.train()
        with tqdm(total=steps, desc=f"train {variant}", unit="batch", disable=not progress) as bar:
            for epoch in range(epochs):
                order = torch.randperm(n, generator=generator)
                total = 0.0
                for first in range(0, n, batch_size):
                    index = order[first : first + batch_size]
                    x = frames.x[index].float()
                    flip = torch.rand(len(index), generator=generator) < 0.5
                    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                    out = network(x)
                    loss = frame_loss(variant, network, out, frames.score[index])
                    optimiser.zero_grad()
                    loss.backward()
                    optimiser.step()
                    total += loss.item() * len(index)
                    bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / max(n, 1):.4f}")
    return network.eval()


def scorer_class(variant: str) -> type[nn.Module]:
    """The network class of ``variant``; a ValueError lists the variants there are."""
    if variant not in FRAME_SCORERS:
        raise ValueError(
            f"Unknown frame scorer {variant!r}; choose one of {', '.join(FRAME_SCORERS)}."
        )
    return FRAME_SCORERS[variant]


def predict_frames(
    network: nn.Module, x: torch.Tensor, batch_size: int = 32
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64] | None]:
    """Score probabilities (frames, 4) and, for STN variants, the first transform of each frame
    (frames, 2, 3); the network is put in eval mode."""
    network.eval()
    probabilities, thetas = [], []
    with torch.inference_mode():
        for first in range(0, len(x), batch_size):
            out = network(x[first : first + batch_size].float())
            probabilities.append(torch.softmax(out.logits, dim=1).double().numpy())
            if out.thetas is not None:
                thetas.append(out.thetas[:, 0].double().numpy())
    if not probabilities:
        return np.zeros((0, SCORES)), None
    return np.concatenate(probabilities), np.concatenate(thetas) if thetas else None


def clip_probabilities(
    network: nn.Module, cines: Sequence[SeverityCine], progress: bool = True
) -> list[npt.NDArray[np.float64]]:
    """The frame-score probabilities (frames, 4) of every frame of each cine, as in the node."""
    out = []
    for sim in tqdm(cines, desc="clip scores", unit="cine", disable=not progress):
        probabilities, _ = predict_frames(network, severity_frames(sim.load()))
        out.append(probabilities)
    return out


def train_aggregator(
    clips: Sequence[npt.NDArray[np.float64]],
    scores: Sequence[int],
    *,
    epochs: int = 30,
    lr: float = 1e-2,
) -> tuple[UninormAggregator, list[float]]:
    """The uninorm layer trained with SORD on clip scores; and the training loss per epoch.

    One Adam step per epoch on the gradients accumulated over every clip; the state of the
    epoch with the lowest training loss is returned.
    """
    if len(clips) != len(scores) or not clips:
        raise ValueError("train_aggregator needs one score per clip and at least one clip.")
    aggregator = UninormAggregator()
    optimiser = torch.optim.Adam(aggregator.parameters(), lr=lr)
    target = torch.tensor(list(scores), dtype=torch.long)
    inputs = [torch.from_numpy(c).float() for c in clips]
    best, best_loss, losses = copy.deepcopy(aggregator.state_dict()), float("inf"), []
    for _ in range(epochs):
        optimiser.zero_grad()
        total = 0.0
        for x, t in zip(inputs, target, strict=True):
            # SORD on the clip: cross entropy of the soft target against the layer's output.
            log_p = torch.log_softmax(aggregator.log_aggregate(x), dim=-1)
            loss = -(sord_targets(t[None])[0] * log_p).sum()
            (loss / len(inputs)).backward()
            total += loss.item() / len(inputs)
        losses.append(total)
        if total < best_loss:
            best, best_loss = copy.deepcopy(aggregator.state_dict()), total
        optimiser.step()
    aggregator.load_state_dict(best)
    return aggregator.eval(), losses


def aggregate(
    name: str, probabilities: npt.NDArray[np.float64], aggregator: UninormAggregator | None
) -> int:
    """The clip score of one clip's frame probabilities by aggregator ``name``."""
    if name == "max_argmax":
        return int(max_argmax(probabilities))
    if name == "argmax_mean":
        return int(argmax_mean(probabilities))
    if name == "uninorm" and aggregator is not None:
        with torch.inference_mode():
            return int(aggregator(torch.from_numpy(probabilities).float()).argmax())
    raise ValueError(f"Unknown aggregator {name!r} (or no uninorm given); use {AGGREGATORS}.")


@dataclass(frozen=True)
class AggregatorStudy:
    """The 5-fold patient cross-validation of the three aggregators on held-out clips."""

    per_fold: dict[str, list[dict[str, float]]]
    """Per aggregator, the weighted metrics of each fold."""
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]
    confusion: dict[str, list[list[int]]]
    """Per aggregator, the confusion matrix of all folds' predictions together."""
    neutral_elements: list[list[float]]
    """The uninorm's neutral elements (scores 0-3) learned in each fold."""

    def summary(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "std": self.std,
            "confusion": self.confusion,
            "per_fold": self.per_fold,
            "neutral_elements": self.neutral_elements,
        }


def cross_validate_aggregators(
    clips: Sequence[npt.NDArray[np.float64]],
    scores: Sequence[int],
    patients: Sequence[str],
    *,
    folds: int = 5,
    seed: int = 0,
) -> AggregatorStudy:
    """Train the uninorm on all folds but one, score the held-out fold with all three
    aggregators; folds keep patients whole (at most one fold per patient)."""
    folds = min(folds, len(set(patients)))
    split = split_by_group(range(len(clips)), key=lambda i: patients[i], n_folds=folds, seed=seed)
    per_fold: dict[str, list[dict[str, float]]] = {name: [] for name in AGGREGATORS}
    truth_all: list[int] = []
    predicted_all: dict[str, list[int]] = {name: [] for name in AGGREGATORS}
    neutral = []
    for k, held_out in enumerate(split):
        if not held_out:
            continue
        train = [i for j, fold in enumerate(split) if j != k for i in fold]
        uninorm, _ = train_aggregator([clips[i] for i in train], [scores[i] for i in train])
        neutral.append([round(float(e), 4) for e in uninorm.neutral_elements.detach()])
        truth = [scores[i] for i in held_out]
        truth_all.extend(truth)
        for name in AGGREGATORS:
            predicted = [aggregate(name, clips[i], uninorm) for i in held_out]
            predicted_all[name].extend(predicted)
            per_fold[name].append(weighted_metrics(truth, predicted, SCORES))
    mean, std = {}, {}
    for name in AGGREGATORS:
        keys = ("f1", "precision", "recall")
        values = {key: np.array([m[key] for m in per_fold[name]]) for key in keys}
        mean[name] = {key: round(float(np.nanmean(v)), 4) for key, v in values.items()}
        std[name] = {key: round(float(np.nanstd(v)), 4) for key, v in values.items()}
    matrices = {
        name: confusion(truth_all, predicted_all[name], SCORES).tolist() for name in AGGREGATORS
    }
    return AggregatorStudy(per_fold, mean, std, matrices, neutral)


def frame_metrics(
    probabilities: npt.NDArray[np.float64], frames: Frames, margin: int = TRANSITION_MARGIN
) -> dict[str, float]:
    """Weighted F1, precision, recall of the frame scores: ``setting1_*`` on every frame,
    ``setting2_*`` without the ``margin`` frames either side of a change of true score."""
    predicted = probabilities.argmax(axis=1)
    truth = frames.score.numpy()
    metrics = {f"setting1_{k}": v for k, v in weighted_metrics(truth, predicted, SCORES).items()}
    keep = ~near_transition(frames, margin)
    setting2 = weighted_metrics(truth[keep], predicted[keep], SCORES)
    metrics.update({f"setting2_{k}": v for k, v in setting2.items()})
    return metrics


def known_frame_metrics(
    cines: Sequence[SeverityCine],
    probabilities: Sequence[npt.NDArray[np.float64]],
    margin: int = TRANSITION_MARGIN,
) -> dict[str, float]:
    """:func:`frame_metrics` of every frame with a known score, from the (frames, 4)
    probabilities of all frames of each cine."""
    rows: list[npt.NDArray[np.float64]] = []
    truth: list[int] = []
    owner: list[int] = []
    numbers: list[int] = []
    for i, (cine, p) in enumerate(zip(cines, probabilities, strict=True)):
        known = [f for f in cine.frames if f.severity is not None]
        rows.append(p[[f.frame - 1 for f in known]])
        truth.extend(int(f.severity or 0) for f in known)
        owner.extend([i] * len(known))
        numbers.extend(f.frame for f in known)
    frames = Frames(
        x=torch.zeros(0),
        score=torch.tensor(truth, dtype=torch.long),
        cine=np.asarray(owner, dtype=np.intp),
        frame=np.asarray(numbers, dtype=np.intp),
    )
    return frame_metrics(np.concatenate(rows), frames, margin)


def near_transition(frames: Frames, margin: int) -> npt.NDArray[np.bool_]:
    """Frames within ``margin`` frames of a change of true score in their cine."""
    near = np.zeros(len(frames.score), dtype=bool)
    score = frames.score.numpy()
    for cine in np.unique(frames.cine):
        rows = np.flatnonzero(frames.cine == cine)
        rows = rows[np.argsort(frames.frame[rows])]
        numbers, values = frames.frame[rows], score[rows]
        changes = numbers[1:][values[1:] != values[:-1]]  # first frame of each new score
        for change in changes:
            near[rows] |= (numbers >= change - margin) & (numbers < change + margin)
    return near


@dataclass(frozen=True)
class SeverityTraining:
    """What :func:`train_severity` measured."""

    frame: dict[str, float]
    aggregators: AggregatorStudy
    counts: dict[str, Any]


def train_severity(
    data_root: Path | None,
    out_dir: Path | None,
    *,
    epochs: int,
    seed: int,
    variant: str = DEFAULT_VARIANT,
    lr: float = 1e-3,
    batch_size: int = 32,
    every: int = 1,
    n_folds: int = 5,
    aggregator_data: Path | None = None,
    frame_scorer: Path | None = None,
    frame_scores: Sequence[Path] = (),
    frame_scores_root: Path | None = None,
    progress: bool = True,
) -> SeverityTraining:
    """Train the frame scorer and the uninorm; measure them; write the bundle to ``out_dir``.

    Parameters
    ----------
    data_root:
        Output of ``lus-pacs synth``, or None to train on ``frame_scores`` alone.
    out_dir:
        The bundle folder (``models/*.pt``, ``configs/*.json`` rewritten, ``docs/`` left
        alone); None to measure only.
    epochs, seed, lr, batch_size:
        The frame scorer's training (Adam).
    variant:
        A key of :data:`FRAME_SCORERS`.
    every:
        Train the frame scorer on every ``every``-th frame (neighbouring frames are nearly
        the same picture); evaluation uses every frame.
    n_folds:
        Patient folds of ``data_root``; the first is held out from the frame scorer.
    aggregator_data:
        A further ``lus-pacs synth`` set the frame scorer never sees, added to the first fold
        as the aggregator's clips.
    frame_scorer:
        A severity bundle whose frame scorer to keep (trained with the same data, seed and
        folds): only the aggregator is trained again, and ``variant`` is the bundle's.
    frame_scores, frame_scores_root:
        Frame-score CSVs of a site's own cines (paper 003's format), their file names relative
        to ``frame_scores_root`` (default: each CSV's folder); split by PatientID with the
        simulated cines (:mod:`lus_pacs.training.annotated`).
    """
    started = time.perf_counter()
    cines: list[SeverityCine] = []
    if data_root is not None:
        cines.extend(find_simulated(data_root))
        if not cines:
            raise FileNotFoundError(f"No simulated cines (*/*.truth.json) under {data_root}.")
    for table in frame_scores:
        cines.extend(read_frame_score_cines(table, frame_scores_root))
    if not cines:
        raise ValueError("No cines to train on: give simulated data, frame-score CSVs, or both.")
    folds = split_by_group(
        range(len(cines)), key=lambda i: cines[i].patient_id, n_folds=n_folds, seed=seed
    )
    train_cines = [cines[i] for fold in folds[1:] for i in fold]
    held_out = [cines[i] for i in folds[0]]
    clips = held_out + (find_simulated(aggregator_data) if aggregator_data else [])
    if len({c.patient_id for c in clips}) < 2:
        raise ValueError(
            "The aggregator's cross-validation needs the clips of at least 2 patients that the "
            "frame scorer does not train on; use more patients or add --aggregator-data."
        )
    if frame_scorer is not None:
        from lus_pacs.families.severity.inference import SeverityModel

        kept = SeverityModel.load(frame_scorer).paper_network
        network, variant = kept.scorer.eval(), kept.variant
    else:
        network = train_frame_scorer(
            variant,
            load_frames(train_cines, every, progress),
            epochs=epochs,
            seed=seed,
            lr=lr,
            batch_size=batch_size,
            progress=progress,
        )
    # Every frame of the held-out cines is scored once; the frame metrics take the scored ones.
    clip_probs = clip_probabilities(network, clips, progress)
    frame = known_frame_metrics(held_out, clip_probs[: len(held_out)])
    clip_scores = [_clip_score(c) for c in clips]
    patients = [c.patient_id for c in clips]
    study = cross_validate_aggregators(clip_probs, clip_scores, patients, seed=seed)
    uninorm, losses = train_aggregator(clip_probs, clip_scores)
    counts = {
        "root": data_root.name if data_root else None,
        "frame_scores": [t.name for t in frame_scores],
        "aggregator_data": aggregator_data.name if aggregator_data else None,
        "patients_frame_scorer": len({c.patient_id for c in train_cines}),
        "cines_frame_scorer": len(train_cines),
        "frames_frame_scorer": sum(
            len([f for f in c.frames[::every] if f.severity is not None]) for c in train_cines
        ),
        "patients_aggregator": len(set(patients)),
        "cines_aggregator": len(clips),
        "frames_validation": int(frame["setting1_n"]),
    }
    if out_dir is not None:
        training = {
            "variant": variant,
            "epochs": epochs,
            "seed": seed,
            "lr": lr,
            "batch_size": batch_size,
            "every": every,
            "parameters": sum(p.numel() for p in network.parameters()),
            "frame_scorer_kept_from": frame_scorer.name if frame_scorer else None,
            "aggregator_epochs": len(losses),
            "aggregator_loss": [round(v, 5) for v in losses],
            "seconds": round(time.perf_counter() - started, 1),
            "data": counts,
        }
        from lus_pacs.families.severity.bundle import write_severity_bundle

        write_severity_bundle(out_dir, variant, network, uninorm, frame, study, training)
    return SeverityTraining(frame, study, counts)


def _clip_score(sim: SeverityCine) -> int:
    """The clip's true score: the highest frame score (paper 003's hard rule on the truth)."""
    if sim.severity is None:
        raise ValueError(f"{sim.truth}: the clip has no score (no frame with the probe on).")
    return int(sim.severity)
