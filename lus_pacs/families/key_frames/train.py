"""Training the key-frame classifier (paper 004) on simulated cines.

``lus-pacs train key-frames`` trains the shipped model and, with ``--variants``, one model per
dataset variant of the paper (:mod:`lus_pacs.families.key_frames.data`) for its tables; both are
measured on held-out patients as :mod:`lus_pacs.families.key_frames.evaluate` describes.

Labels come from the simulator's truth of each frame: keep = high value (probe in contact,
pleura visible, no rib shadow over it, showing the clip's score), and the three reasons
(:data:`lus_pacs.families.key_frames.network.OUTPUTS`). The shipped model learns from frames
drawn evenly from every training cine, poor cines included: we know the truth of every frame,
where the paper knew only the frames its experts kept and had to draw false frames by brightness
or similarity.
The paper's variants are trained the same way on their own frames, for comparison.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from lus_pacs.domain import Cine
from lus_pacs.families.key_frames.data import (
    NO_PLEURA_BELOW,
    KeyFrameSet,
    build_key_frame_sets,
    held_out,
    pocus_split,
    variant_names,
)
from lus_pacs.families.key_frames.evaluate import evaluate, flag_pocus
from lus_pacs.families.key_frames.inference import fit_square, to_input
from lus_pacs.families.key_frames.network import OUTPUTS, FrameOutput, KeyFrameNet
from lus_pacs.families.key_frames.similarity import CnnEncoder, masked_tissue
from lus_pacs.training.pocus import PocusClip, load_clip
from lus_pacs.training.simulated import FrameLabels, SimulatedCine, find_simulated

_BATCH = 16
_JITTER = 8
"""Training crops move up to this many pixels from the centre."""


def frame_targets(f: FrameLabels) -> list[float]:
    """The network's targets for one frame, in the order of :data:`OUTPUTS`."""
    return [
        float(f.high_value),
        float(not f.contact),
        float(f.rib_shadow_over_pleura),
        float(f.pleura_visible_fraction < NO_PLEURA_BELOW),
    ]


@dataclass(frozen=True, eq=False)
class FrameSet:
    """Training images (n, 256, 256) uint8 and their targets (n, len(OUTPUTS))."""

    images: npt.NDArray[np.uint8]
    targets: npt.NDArray[np.float32]


def even_frames(cines: Sequence[SimulatedCine], per_cine: int) -> FrameSet:
    """``per_cine`` frames spread evenly over every cine, with their truth."""
    images, targets = [], []
    for sim in cines:
        for i, image in _spread(sim.load(), per_cine):
            images.append(image)
            targets.append(frame_targets(sim.frames[i]))
    return FrameSet(np.stack(images), np.asarray(targets, np.float32))


def pocus_frames(
    clips: Sequence[PocusClip], pocus_dir: Path, cache_dir: Path, per_clip: int
) -> FrameSet:
    """``per_clip`` frames spread evenly over every real POCUS clip, all labelled worth keeping
    and without a poor reason: weak labels, since the clips were chosen for teaching and
    publication. They show the network real scanners' images, which the simulator does not."""
    images = [
        image
        for clip in tqdm(clips, desc="pocus frames", unit="clip")
        for _, image in _spread(load_clip(clip, pocus_dir, cache_dir), per_clip)
    ]
    targets = np.zeros((len(images), len(OUTPUTS)), np.float32)
    targets[:, OUTPUTS.index(FrameOutput.KEEP)] = 1.0
    return FrameSet(np.stack(images), targets)


def _spread(cine: Cine, count: int) -> list[tuple[int, npt.NDArray[np.uint8]]]:
    """``count`` frames spread evenly over the cine: (0-based index, training image)."""
    tissue = masked_tissue(cine)
    picks = np.unique(np.linspace(0, len(tissue) - 1, count).round().astype(int))
    return [(int(i), fit_square(tissue[i])) for i in picks]


def variant_frames(data: KeyFrameSet, cines: Sequence[SimulatedCine]) -> FrameSet:
    """A dataset variant's frames with the truth of each (all outputs, not only keep)."""
    by_name = {f"{c.patient_id}/{c.zone}": c for c in cines}
    targets = [
        frame_targets(by_name[str(cine)].frames[int(frame) - 1])
        for cine, frame in zip(data.cines, data.frames, strict=True)
    ]
    return FrameSet(data.pixels(), np.asarray(targets, np.float32))


def train(
    frames: FrameSet,
    *,
    epochs: int,
    seed: int,
    lr: float = 1e-2,
    step_epochs: int = 7,
    progress: str | None = None,
) -> KeyFrameNet:
    """SGD with momentum 0.9, the rate times 0.1 every ``step_epochs`` epochs (the paper's
    schedule; its rate 1e-3 fine-tuned ImageNet weights, from scratch 1e-2 learns faster),
    binary cross entropy on every output, each positive class weighted by its imbalance.
    Augmentation: horizontal flip and a crop up to 8 pixels off the centre."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    network = KeyFrameNet()
    optimiser = torch.optim.SGD(network.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=step_epochs, gamma=0.1)
    targets = torch.from_numpy(frames.targets)
    positive = targets.mean(dim=0).clamp(0.02, 0.98)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=(1 - positive) / positive)
    n = len(targets)
    bar = tqdm(total=epochs * ((n + _BATCH - 1) // _BATCH), desc=progress, disable=not progress)
    network.train()
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, _BATCH):
            rows = order[start : start + _BATCH]
            x = _augment(frames.images[rows], rng)
            loss = loss_fn(network(x), targets[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.update(1)
        schedule.step()
    bar.close()
    return network.eval()


def _augment(images: npt.NDArray[np.uint8], rng: np.random.Generator) -> torch.Tensor:
    dy, dx = rng.integers(-_JITTER, _JITTER + 1, size=2)
    shifted = np.roll(images, (int(dy), int(dx)), axis=(1, 2))
    if rng.random() < 0.5:
        shifted = shifted[:, :, ::-1]
    return to_input(shifted)


@dataclass(frozen=True)
class KeyFramesTraining:
    """What :func:`train_key_frames` measured."""

    summary: dict[str, Any]
    """Training counts, the held-out measures (:func:`evaluate`) and the seconds taken."""
    pocus: dict[str, Any] | None
    """:func:`flag_pocus` of the held-out publishers' POCUS clips; None without them."""
    variant_rows: list[dict[str, Any]]
    """With variants: one row of held-out measures per dataset variant, then the shipped
    model's (the rows of :func:`~lus_pacs.families.key_frames.evaluate.variant_table`); empty
    without."""


def train_key_frames(
    data: Path,
    b_lines: Path,
    *,
    seed: int,
    epochs: int = 25,
    frames_per_cine: int = 6,
    lr: float = 1e-2,
    folds: int = 5,
    variants: Sequence[str] | None = None,
    variant_epochs: int | None = None,
    out: Path | None = None,
    tables: Path | None = None,
    pocus: Path | None = None,
    pocus_cache: Path = Path("build/pocus-cache"),
) -> KeyFramesTraining:
    """Train the shipped classifier on frames spread evenly over the training cines (and the
    training publishers' POCUS clips), measure it on the held-out fold, write the bundle; train
    one model per dataset variant of the paper for its tables.

    Parameters
    ----------
    data:
        Output of ``lus-pacs synth``; the first of ``folds`` patient folds is held out.
    b_lines:
        The B-line bundle whose CNN encodes frames for similarity.
    seed, epochs, lr:
        As :func:`train`.
    frames_per_cine:
        Training frames spread over every cine (and POCUS clip).
    variants, variant_epochs:
        Dataset variants (:func:`variant_names`) to train too, every one when empty, none when
        None; their epochs, ``epochs`` when None.
    out:
        The bundle folder; None to measure only.
    tables:
        Where the variants' rows go (JSON).
    pocus, pocus_cache:
        Real POCUS clips of the training publishers join as usable frames (weak labels); the
        held-out publishers' clips are flagged. The folder their DICOM imports are cached in.
    """
    train_cines, test_cines = held_out(find_simulated(data), folds, seed)
    encoder = CnnEncoder.load(b_lines)
    start = time.perf_counter()
    frames = even_frames(train_cines, frames_per_cine)
    pocus_train: list[PocusClip] = []
    pocus_test: list[PocusClip] = []
    if pocus is not None:
        pocus_train, pocus_test = pocus_split(pocus, folds, seed)
        real = pocus_frames(pocus_train, pocus, pocus_cache, frames_per_cine)
        frames = FrameSet(
            np.concatenate([frames.images, real.images]),
            np.concatenate([frames.targets, real.targets]),
        )
    network = train(frames, epochs=epochs, seed=seed, lr=lr, progress="train")
    held: dict[str, float] = evaluate(network, test_cines, encoder)
    flags = None
    if pocus is not None and pocus_test:
        flags = flag_pocus(network, pocus_test, pocus, pocus_cache)
        held["pocus_clips"], held["pocus_usable"] = flags["clips"], flags["usable"]
    summary: dict[str, Any] = {
        "train_cines": len(train_cines),
        "train_frames": len(frames.targets),
        "held_out": held,
        "seconds": round(time.perf_counter() - start),
    }
    if out is not None:
        from lus_pacs.families.key_frames.bundle import write_key_frames_bundle

        write_key_frames_bundle(
            out,
            network,
            held,
            {
                "epochs": epochs,
                "frames_per_cine": frames_per_cine,
                "lr": lr,
                "seed": seed,
                "train_cines": len(train_cines),
                "train_frames": len(frames.targets),
                "pocus_train_clips": len(pocus_train),
            },
        )
    rows: list[dict[str, Any]] = []
    if variants is not None:
        names = list(variants) or list(variant_names())
        sets = build_key_frame_sets(train_cines, names, encoder=encoder, seed=seed)
        for name, variant in sets.items():
            model = train(
                variant_frames(variant, train_cines),
                epochs=variant_epochs or epochs,
                seed=seed,
                lr=lr,
                progress=name,
            )
            rows.append(
                {
                    "variant": name,
                    "frames": len(variant),
                    "false_frames": int((~variant.labels).sum()),
                    "unmatched": variant.unmatched,
                    **evaluate(model, test_cines, encoder),
                }
            )
        rows.append({"variant": "even (shipped)", "frames": len(frames.targets), **held})
        if tables is not None:
            tables.parent.mkdir(parents=True, exist_ok=True)
            tables.write_text(json.dumps(rows, indent=1) + "\n")
    return KeyFramesTraining(summary, flags, rows)
