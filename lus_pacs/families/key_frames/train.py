"""Training and evaluating the key-frame classifier (paper 004) on simulated cines.

``lus-pacs train key-frames`` trains the shipped model and, with ``--variants``, one model per
dataset variant of the paper (:mod:`lus_pacs.families.key_frames.data`) for its tables.
``lus-pacs evaluate key-frames`` runs the paper's tests on held-out patients:

* Test 1: the share of cines in which some frame has a keep probability above 0.5;
* Test 2: the similarity of the chosen frame (highest keep probability) to the cine's true best
  frame, in both encodings (local-brightness matrix and CNN);

and ours: the share of cines whose chosen frame is a true high-value frame (of the cines that
have one; beside it the chance that a frame drawn at random is one), and the quality flag
against the truth (a cine is poor when none of its frames is high-value; its reasons are those
most of its frames show).

Labels come from the simulator's truth of each frame: keep = high value (probe in contact,
pleura visible, no rib shadow over it, showing the clip's score), and the three reasons
(:data:`lus_pacs.families.key_frames.network.OUTPUTS`). The shipped model learns from frames
drawn evenly from every training cine, poor cines included: we know the truth of every frame,
where the paper knew only the frames its experts kept and had to draw false frames by brightness
or similarity.
The paper's variants are trained the same way on their own frames, for comparison.
"""

from __future__ import annotations

import argparse
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

from lus_pacs.domain import Cine, ModelInfo, PoorReason, Quality
from lus_pacs.families.key_frames.data import KeyFrameSet, build_key_frame_sets, variant_names
from lus_pacs.families.key_frames.inference import (
    KeyFrameModel,
    decide,
    fit_square,
    frame_images,
    frame_probabilities,
    to_input,
)
from lus_pacs.families.key_frames.network import OUTPUTS, FrameOutput, KeyFrameNet
from lus_pacs.families.key_frames.similarity import (
    CnnEncoder,
    Encoding,
    cosine_similarity,
    local_brightness,
    masked_tissue,
)
from lus_pacs.training.pocus import PocusClip, load_clip, read_labels, source_group
from lus_pacs.training.simulated import FrameLabels, SimulatedCine, find_simulated
from lus_pacs.training.splits import split_by_group

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
NO_PLEURA_BELOW = 0.25
"""A frame with less than this share of its beams on the pleura shows no pleura (the
simulator's high-value rule)."""
_BATCH = 16
_EVALUATED = ModelInfo("key_frames", "evaluation", "key frames")
"""Stands for the bundle in findings made while training or evaluating."""
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


def pocus_split(pocus_dir: Path, folds: int, seed: int) -> tuple[list[PocusClip], list[PocusClip]]:
    """(train, test) POCUS clips: the first of ``folds`` publisher folds held out."""
    clips = read_labels(pocus_dir / "labels.csv")
    split = split_by_group(clips, lambda c: source_group(c.file), folds, seed)
    return [c for fold in split[1:] for c in fold], split[0]


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


# Evaluation


def truth_quality(sim: SimulatedCine) -> tuple[Quality, set[PoorReason]]:
    """POOR when no frame is high-value; the reasons most of its frames show."""
    if any(f.high_value for f in sim.frames):
        return Quality.USABLE, set()
    half = len(sim.frames) / 2
    reasons = set()
    if sum(not f.contact for f in sim.frames) > half:
        reasons.add(PoorReason.NO_CONTACT)
    if sum(f.rib_shadow_over_pleura for f in sim.frames) > half:
        reasons.add(PoorReason.RIB_SHADOW)
    if sum(f.pleura_visible_fraction < NO_PLEURA_BELOW for f in sim.frames) > half:
        reasons.add(PoorReason.NO_PLEURA)
    return Quality.POOR, reasons


def evaluate(
    network: KeyFrameNet,
    cines: Sequence[SimulatedCine],
    encoder: CnnEncoder,
    threshold: float = 0.5,
    reason_threshold: float = 0.5,
) -> dict[str, float]:
    """The paper's Tests 1 and 2 and ours on held-out cines (see the module docstring)."""
    found, chosen_good = [], []
    chance: list[float] = []
    similarity: dict[Encoding, list[float]] = {e: [] for e in Encoding}
    flag_right, poor_flagged, reason_right, usable_kept = [], [], [], []
    for sim in cines:
        cine = sim.load()
        probabilities = frame_probabilities(network, frame_images(cine))
        findings = decide(probabilities, _EVALUATED, threshold, reason_threshold)
        keep = probabilities[:, OUTPUTS.index(FrameOutput.KEEP)]
        found.append(bool((keep > 0.5).any()))
        quality, reasons = truth_quality(sim)
        flag_right.append(findings.quality is quality)
        if quality is Quality.USABLE:
            chance.append(float(np.mean([f.high_value for f in sim.frames])))
            usable_kept.append(findings.quality is Quality.USABLE)
            chosen_good.append(sim.frames[findings.best_frame - 1].high_value)
            best, chosen = sim.best_frame - 1, findings.best_frame - 1
            encodings: dict[Encoding, npt.NDArray[np.floating]] = {
                Encoding.LOCAL_BRIGHTNESS: local_brightness(cine),
                Encoding.CNN: encoder(cine),
            }
            for encoding, values in encodings.items():
                similarity[encoding].append(
                    float(cosine_similarity(values[best], values[chosen : chosen + 1])[0])
                )
        else:
            poor_flagged.append(findings.quality is Quality.POOR)
            if findings.quality is Quality.POOR:
                reason_right.append(bool(findings.reasons) and findings.reasons[0] in reasons)
    return {
        "cines": len(cines),
        "cines_with_a_good_frame": len(chosen_good),
        "poor_cines": len(poor_flagged),
        "test1_found": _mean(found),
        "test1_found_in_usable": _mean(
            [f for f, c in zip(found, cines, strict=True) if _usable(c)]
        ),
        "chosen_is_high_value": _mean(chosen_good),
        "random_frame_is_high_value": _mean(chance),
        "test2_similarity_local_brightness": _mean(similarity[Encoding.LOCAL_BRIGHTNESS]),
        "test2_similarity_cnn": _mean(similarity[Encoding.CNN]),
        "quality_flag_accuracy": _mean(flag_right),
        "usable_flagged_usable": _mean(usable_kept),
        "poor_flagged_poor": _mean(poor_flagged),
        "poor_reason_right": _mean(reason_right),
    }


def _usable(sim: SimulatedCine) -> bool:
    return any(f.high_value for f in sim.frames)


def _mean(values: Sequence[bool | float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def held_out(
    cines: Sequence[SimulatedCine], folds: int, seed: int
) -> tuple[list[SimulatedCine], list[SimulatedCine]]:
    """(train, test): the first of ``folds`` patient folds held out."""
    split = split_by_group(list(cines), lambda c: c.patient_id, folds, seed)
    return [c for fold in split[1:] for c in fold], split[0]


# Commands


def train_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Key-frame classifier (paper 004)")
    parser.add_argument("--data", type=Path, required=True, help="output of `lus-pacs synth`")
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--frames-per-cine", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--b-lines",
        type=Path,
        default=MODELS_DIR / "b_lines",
        help="the B-line bundle whose CNN encodes frames for similarity",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        metavar="NAME",
        help="also train on the paper's dataset variants (all when no name)",
    )
    parser.add_argument("--variant-epochs", type=int, help="epochs per variant (default --epochs)")
    parser.add_argument("--out", type=Path, help="the bundle folder")
    parser.add_argument("--tables", type=Path, help="where the variant tables go (JSON)")
    parser.add_argument(
        "--pocus",
        type=Path,
        help="real POCUS clips of the training publishers join as usable frames (weak labels); "
        "the held-out publishers' clips are flagged",
    )
    parser.add_argument("--pocus-cache", type=Path, default=Path("build/pocus-cache"))
    args = parser.parse_args(argv)

    train_cines, test_cines = held_out(find_simulated(args.data), args.folds, args.seed)
    encoder = CnnEncoder.load(args.b_lines)
    start = time.perf_counter()
    frames = even_frames(train_cines, args.frames_per_cine)
    pocus_train: list[PocusClip] = []
    pocus_test: list[PocusClip] = []
    if args.pocus is not None:
        pocus_train, pocus_test = pocus_split(args.pocus, args.folds, args.seed)
        real = pocus_frames(pocus_train, args.pocus, args.pocus_cache, args.frames_per_cine)
        frames = FrameSet(
            np.concatenate([frames.images, real.images]),
            np.concatenate([frames.targets, real.targets]),
        )
    network = train(frames, epochs=args.epochs, seed=args.seed, lr=args.lr, progress="train")
    held: dict[str, float] = evaluate(network, test_cines, encoder)
    if pocus_test:
        flags = flag_pocus(network, pocus_test, args.pocus, args.pocus_cache)
        print(json.dumps({"pocus": flags}, indent=1))
        held["pocus_clips"], held["pocus_usable"] = flags["clips"], flags["usable"]
    summary: dict[str, Any] = {
        "train_cines": len(train_cines),
        "train_frames": len(frames.targets),
        "held_out": held,
        "seconds": round(time.perf_counter() - start),
    }
    print(json.dumps(summary, indent=1))
    if args.out is not None:
        from lus_pacs.families.key_frames.bundle import write_key_frames_bundle

        write_key_frames_bundle(
            args.out,
            network,
            held,
            {
                "epochs": args.epochs,
                "frames_per_cine": args.frames_per_cine,
                "lr": args.lr,
                "seed": args.seed,
                "train_cines": len(train_cines),
                "train_frames": len(frames.targets),
                "pocus_train_clips": len(pocus_train),
            },
        )
    if args.variants is not None:
        names = args.variants or list(variant_names())
        sets = build_key_frame_sets(train_cines, names, encoder=encoder, seed=args.seed)
        rows = []
        for name, data in sets.items():
            model = train(
                variant_frames(data, train_cines),
                epochs=args.variant_epochs or args.epochs,
                seed=args.seed,
                lr=args.lr,
                progress=name,
            )
            rows.append(
                {
                    "variant": name,
                    "frames": len(data),
                    "false_frames": int((~data.labels).sum()),
                    "unmatched": data.unmatched,
                    **evaluate(model, test_cines, encoder),
                }
            )
            print(json.dumps(rows[-1]))
        rows.append({"variant": "even (shipped)", "frames": len(frames.targets), **held})
        if args.tables is not None:
            args.tables.parent.mkdir(parents=True, exist_ok=True)
            args.tables.write_text(json.dumps(rows, indent=1) + "\n")
        print(variant_table(rows))


def variant_table(rows: Sequence[dict[str, Any]]) -> str:
    """The paper's Tables I-II for our variants, as Markdown."""
    head = (
        "| variant | frames | false | Test 1 (usable cines) | chosen is high-value "
        "| Test 2 local brightness | Test 2 CNN | poor flagged |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['frames']} | {r.get('false_frames', '-')} "
            f"| {r['test1_found_in_usable']:.2f} | {r['chosen_is_high_value']:.2f} "
            f"| {r['test2_similarity_local_brightness']:.3f} | {r['test2_similarity_cnn']:.3f} "
            f"| {r['poor_flagged_poor']:.2f} |"
        )
    return "\n".join(lines)


def evaluate_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Evaluate the key-frame bundle (paper 004)")
    parser.add_argument("--bundle", type=Path, default=MODELS_DIR / "key_frames")
    parser.add_argument("--data", type=Path, required=True, help="output of `lus-pacs synth`")
    parser.add_argument("--seed", type=int, default=1, help="the split's seed (as trained)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--all", action="store_true", help="every cine, not the held-out fold")
    parser.add_argument("--b-lines", type=Path, default=MODELS_DIR / "b_lines")
    parser.add_argument(
        "--pocus",
        type=Path,
        help="also flag the held-out real POCUS clips (no frame labels: how many are rated "
        "usable; all of them with --all)",
    )
    parser.add_argument("--pocus-cache", type=Path, default=Path("build/pocus-cache"))
    args = parser.parse_args(argv)

    cines = find_simulated(args.data)
    if not args.all:
        cines = held_out(cines, args.folds, args.seed)[1]
    model = KeyFrameModel.load(args.bundle)
    encoder = CnnEncoder.load(args.b_lines)
    scores = evaluate(model.network, cines, encoder, model.threshold, model.reason_threshold)
    print(json.dumps(scores, indent=1))
    if args.pocus is not None:
        clips = read_labels(args.pocus / "labels.csv")
        if not args.all:
            clips = pocus_split(args.pocus, args.folds, args.seed)[1]
        flags = flag_pocus(
            model.network,
            clips,
            args.pocus,
            args.pocus_cache,
            model.threshold,
            model.reason_threshold,
        )
        print(json.dumps({"pocus": flags}, indent=1))


def flag_pocus(
    network: KeyFrameNet,
    clips: Sequence[PocusClip],
    pocus_dir: Path,
    cache_dir: Path,
    threshold: float = 0.5,
    reason_threshold: float = 0.5,
) -> dict[str, Any]:
    """The quality flags of real POCUS clips. They have no frame labels, but they were chosen
    for teaching and publication: nearly all should be usable. A transfer check."""
    flags: dict[str, int] = {q.value: 0 for q in Quality}
    reasons: dict[str, int] = {r.value: 0 for r in PoorReason}
    keep = []
    for clip in tqdm(clips, desc="pocus", unit="clip"):
        cine = load_clip(clip, pocus_dir, cache_dir)
        probabilities = frame_probabilities(network, frame_images(cine))
        found = decide(probabilities, _EVALUATED, threshold, reason_threshold)
        flags[found.quality.value] += 1
        keep.append(max(found.frame_scores))
        for reason in found.reasons[:1]:
            reasons[reason.value] += 1
    return {
        "clips": len(keep),
        "usable": flags[Quality.USABLE.value] / len(keep) if keep else float("nan"),
        "flags": flags,
        "first_reasons_of_poor": reasons,
        "median_best_keep_probability": float(np.median(keep)) if keep else float("nan"),
    }
