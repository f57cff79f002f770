"""Evaluating the key-frame classifier (paper 004) on held-out simulated cines and real clips.

``lus-pacs evaluate key-frames`` runs the paper's tests on held-out patients:

* Test 1: the share of cines in which some frame has a keep probability above 0.5;
* Test 2: the similarity of the chosen frame (highest keep probability) to the cine's true best
  frame, in both encodings (local-brightness matrix and CNN);

and ours: the share of cines whose chosen frame is a true high-value frame (of the cines that
have one; beside it the chance that a frame drawn at random is one), and the quality flag
against the truth (a cine is poor when none of its frames is high-value; its reasons are those
most of its frames show). Real POCUS clips have no frame labels: :func:`flag_pocus` counts how
many are rated usable, a transfer check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from lus_pacs.domain import ModelInfo, PoorReason, Quality
from lus_pacs.families.key_frames.data import NO_PLEURA_BELOW, held_out, pocus_split
from lus_pacs.families.key_frames.inference import (
    KeyFrameModel,
    decide,
    frame_images,
    frame_probabilities,
)
from lus_pacs.families.key_frames.network import OUTPUTS, FrameOutput, KeyFrameNet
from lus_pacs.families.key_frames.similarity import (
    CnnEncoder,
    Encoding,
    cosine_similarity,
    local_brightness,
)
from lus_pacs.training.pocus import PocusClip, load_clip, read_labels
from lus_pacs.training.simulated import SimulatedCine, find_simulated

_EVALUATED = ModelInfo("key_frames", "evaluation", "key frames")
"""Stands for the bundle in findings made while training or evaluating."""


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


@dataclass(frozen=True)
class KeyFramesEvaluation:
    """What :func:`evaluate_key_frames` measured."""

    scores: dict[str, float]
    """:func:`evaluate` on the simulated cines."""
    pocus: dict[str, Any] | None
    """:func:`flag_pocus` of the POCUS clips; None without them."""


def evaluate_key_frames(
    bundle: Path,
    data: Path,
    b_lines: Path,
    *,
    seed: int = 1,
    folds: int = 5,
    every_cine: bool = False,
    pocus: Path | None = None,
    pocus_cache: Path = Path("build/pocus-cache"),
) -> KeyFramesEvaluation:
    """The paper's tests and ours of a key-frame bundle.

    Parameters
    ----------
    bundle:
        The key-frame bundle folder.
    data:
        Output of ``lus-pacs synth``: the first of ``folds`` patient folds split with ``seed``
        (as trained) is measured, or every cine with ``every_cine``.
    b_lines:
        The B-line bundle whose CNN encodes frames for Test 2's similarity.
    pocus, pocus_cache:
        Also flag the held-out publishers' real POCUS clips (all with ``every_cine``), and the
        folder their DICOM imports are cached in.
    """
    cines = find_simulated(data)
    if not every_cine:
        cines = held_out(cines, folds, seed)[1]
    model = KeyFrameModel.load(bundle)
    encoder = CnnEncoder.load(b_lines)
    scores = evaluate(model.network, cines, encoder, model.threshold, model.reason_threshold)
    flags = None
    if pocus is not None:
        clips = read_labels(pocus / "labels.csv")
        if not every_cine:
            clips = pocus_split(pocus, folds, seed)[1]
        flags = flag_pocus(
            model.network, clips, pocus, pocus_cache, model.threshold, model.reason_threshold
        )
    return KeyFramesEvaluation(scores, flags)
