"""What a simulated exam contains: patients, their zones, and each zone's anatomy and pathology.

Severity follows the ICLUS scoring of paper 003: score 0, a continuous regular pleural line with
A-lines; score 1, an indented pleural line with separate vertical artefacts (B-lines); score 2,
a broken pleural line with small subpleural consolidations and white areas below; score 3, dense,
largely extended white lung with or without larger consolidations. The score a zone is drawn with
is its *designed* score; the truth of each frame is what is actually visible in it (see render).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np

from lus_pacs.synth.geometry import Probe

ZONE_SCHEMES = (6, 8, 12, 14)


class DiseaseState(StrEnum):
    HEALTHY = "healthy"
    MILD = "mild"
    MODERATE = "moderate"
    SEVERE = "severe"


# Probability of zone scores 0..3 for each patient state.
_SCORE_PROBS = {
    DiseaseState.HEALTHY: (0.9, 0.1, 0.0, 0.0),
    DiseaseState.MILD: (0.45, 0.4, 0.15, 0.0),
    DiseaseState.MODERATE: (0.2, 0.3, 0.35, 0.15),
    DiseaseState.SEVERE: (0.05, 0.2, 0.35, 0.4),
}


def zone_names(n_zones: int) -> list[str]:
    """Zone labels R1..Rn, L1..Ln: numbered anterior-superior to posterior-basal on each side."""
    if n_zones not in ZONE_SCHEMES:
        raise ValueError(f"zones must be one of {ZONE_SCHEMES}; got {n_zones}")
    half = n_zones // 2
    return [f"R{i}" for i in range(1, half + 1)] + [f"L{i}" for i in range(1, half + 1)]


@dataclass(frozen=True)
class BLine:
    """One vertical artefact rooted at ``x_cm`` on the pleura (lung coordinates)."""

    x_cm: float
    width_cm: float
    phase_on: float
    """Breathing phase (0..1) at which it appears."""
    duty: float
    """Fraction of the breathing cycle during which it is visible (1: always)."""
    strength: float


@dataclass(frozen=True)
class Consolidation:
    """Subpleural tissue-like lung: a half-ellipse below the pleura, irregular deep border."""

    x_cm: float
    width_cm: float
    depth_cm: float
    large: bool
    shred: tuple[float, float, float]
    """Amplitudes of the deep border's irregularity at three spatial frequencies."""
    bronchograms: tuple[tuple[float, float, float], ...]
    """Air bronchograms: (x offset fraction, depth fraction, size cm) inside the consolidation."""


@dataclass(frozen=True)
class Effusion:
    thickness_cm: float
    swing: float
    """Relative change of thickness over the breathing cycle (the sinusoid sign)."""


@dataclass(frozen=True)
class ProbeMotion:
    jitter_cm: float
    slide_cm: float
    """Lateral slide of the probe during part of the loop, towards a rib (0: none)."""
    slide_start: float
    slide_length: float
    """Start and length of the slide as fractions of the loop."""
    contact_loss_at_start: bool
    contact_loss_frames: float
    """Fraction of the loop at the start or end with the probe partly off the skin (0: none;
    above 1: the whole loop)."""
    contact_loss_width: float
    """Fraction of the probe face off the skin during the loss."""


@dataclass(frozen=True)
class ZoneScene:
    zone: str
    designed_severity: int
    probe: Probe
    depth_cm: float
    pleura_depth_cm: float
    rib_xs: tuple[float, ...]
    """Lateral centres of the ribs in view (chest-wall coordinates)."""
    pleura_irregularity_cm: float
    pleura_gaps: tuple[tuple[float, float], ...]
    """Broken pleura: (centre, width) in lung coordinates."""
    a_line_gain: float
    b_lines: tuple[BLine, ...]
    consolidations: tuple[Consolidation, ...]
    effusion: Effusion | None
    breathing_period_s: float
    breathing_phase0: float
    sliding_cm: float
    gain_db: float
    motion: ProbeMotion
    transducer_frequency_khz: int


@dataclass(frozen=True)
class PatientScene:
    index: int
    patient_id: str
    name: str
    sex: str
    birth_date: dt.date
    state: DiseaseState
    zones: tuple[ZoneScene, ...]


def draw_patient(
    rng: np.random.Generator, index: int, seed: int, n_zones: int, probe: Probe
) -> PatientScene:
    """A random patient: a disease state, then one scene per zone consistent with it."""
    state = DiseaseState(rng.choice([s.value for s in DiseaseState], p=(0.3, 0.25, 0.25, 0.2)))
    names = zone_names(n_zones)
    half = n_zones // 2
    zones = []
    for zone in names:
        position = int(zone[1:]) / half  # posterior-basal zones are affected more
        probs = np.array(_SCORE_PROBS[state])
        score = int(rng.choice(4, p=probs))
        if score < 3 and state is not DiseaseState.HEALTHY and rng.random() < 0.3 * position:
            score += 1
        effusion = state in (DiseaseState.MODERATE, DiseaseState.SEVERE) and (
            int(zone[1:]) == half and rng.random() < 0.4
        )
        zones.append(draw_zone(rng, zone, score, probe, effusion))
    sex = str(rng.choice(["F", "M"]))
    birth = dt.date(1940, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365 * 60)))
    return PatientScene(
        index=index,
        patient_id=f"SIM-{seed:04d}-{index + 1:04d}",
        name=f"Simulated^Patient{index + 1:04d}",
        sex=sex,
        birth_date=birth,
        state=state,
        zones=tuple(zones),
    )


def draw_zone(
    rng: np.random.Generator, zone: str, score: int, probe: Probe, effusion: bool
) -> ZoneScene:
    """A random zone scene whose visible findings follow the ICLUS rules for ``score``."""
    if probe is Probe.CONVEX:
        depth = float(rng.uniform(10.0, 14.0))
        pleura = float(rng.uniform(1.6, 2.8))
        frequency = int(rng.choice([2500, 3500, 5000]))
    else:
        depth = float(rng.uniform(5.0, 7.0))
        pleura = float(rng.uniform(0.9, 1.8))
        frequency = int(rng.choice([7500, 10000, 12000]))
    # Ribs either side of the intercostal space, partly in view.
    gap = float(rng.uniform(2.2, 3.0))
    centre = float(rng.uniform(-0.3, 0.3))
    rib_xs = (centre - gap / 2 - 0.5, centre + gap / 2 + 0.5)
    space = (centre - gap / 2 + 0.25, centre + gap / 2 - 0.25)

    b_lines: list[BLine] = []
    consolidations: list[Consolidation] = []
    gaps: list[tuple[float, float]] = []
    irregularity = 0.0
    a_gain = float(rng.uniform(0.8, 1.0))
    if score == 1:
        irregularity = float(rng.uniform(0.03, 0.06))
        a_gain *= 0.6
        for _ in range(int(rng.integers(1, 4))):
            b_lines.append(_b_line(rng, space, width=(0.12, 0.25), duty=(0.4, 0.85)))
    elif score == 2:
        irregularity = float(rng.uniform(0.05, 0.09))
        a_gain *= 0.35
        for _ in range(int(rng.integers(2, 6))):
            b_lines.append(_b_line(rng, space, width=(0.15, 0.35), duty=(0.5, 1.0)))
        for _ in range(int(rng.integers(1, 3))):
            c = _consolidation(rng, space, large=False)
            consolidations.append(c)
            gaps.append((c.x_cm, c.width_cm * 1.1))
    elif score == 3:
        irregularity = float(rng.uniform(0.06, 0.12))
        a_gain = 0.0
        # Confluent B-lines across most of the intercostal space: white lung.
        n = int(rng.integers(5, 9))
        xs = np.linspace(space[0], space[1], n)
        for x in xs:
            b_lines.append(
                BLine(
                    x_cm=float(x + rng.normal(0, 0.05)),
                    width_cm=float((space[1] - space[0]) / n * rng.uniform(1.1, 1.6)),
                    phase_on=float(rng.random()),
                    duty=float(rng.uniform(0.9, 1.0)),
                    strength=float(rng.uniform(0.8, 1.0)),
                )
            )
        if rng.random() < 0.5:
            c = _consolidation(rng, space, large=True)
            consolidations.append(c)
            gaps.append((c.x_cm, c.width_cm * 1.1))
    if effusion:
        a_gain = 0.0
        if not consolidations:
            consolidations.append(_consolidation(rng, space, large=score == 3))
    motion = ProbeMotion(
        jitter_cm=float(rng.uniform(0.005, 0.02)),
        slide_cm=float(rng.choice([-1, 1]) * rng.uniform(0.9, 1.4)) if rng.random() < 0.35 else 0.0,
        slide_start=float(rng.uniform(0.1, 0.5)),
        slide_length=float(rng.uniform(0.25, 0.45)),
        contact_loss_at_start=bool(rng.random() < 0.5),
        contact_loss_frames=float(rng.uniform(0.08, 0.2)) if rng.random() < 0.15 else 0.0,
        contact_loss_width=float(rng.uniform(0.6, 1.0)),
    )
    return ZoneScene(
        zone=zone,
        designed_severity=score,
        probe=probe,
        depth_cm=depth,
        pleura_depth_cm=pleura,
        rib_xs=rib_xs,
        pleura_irregularity_cm=irregularity,
        pleura_gaps=tuple(gaps),
        a_line_gain=a_gain,
        b_lines=tuple(b_lines),
        consolidations=tuple(consolidations),
        effusion=Effusion(float(rng.uniform(1.0, 2.5)), float(rng.uniform(0.15, 0.35)))
        if effusion
        else None,
        breathing_period_s=float(rng.uniform(2.5, 4.5)),
        breathing_phase0=float(rng.random()),
        sliding_cm=float(rng.uniform(0.08, 0.25)),
        gain_db=float(rng.uniform(-3, 3)),
        motion=motion,
        transducer_frequency_khz=frequency,
    )


def decouple_consolidation(rng: np.random.Generator, scene: ZoneScene, share: float) -> ZoneScene:
    """With probability ``share``, redraw whether the zone holds a consolidation, as a fair coin
    independent of its score; B-lines, ribs and everything else stay.

    In the scored scenes consolidation only comes with score 2 and 3, that is with many or
    confluent B-lines, so a classifier can find it by its company. Training data in which the two
    are independent makes the model, and its saliency, look at the consolidation itself. Zones
    with an effusion keep their (compressive) consolidation.
    """
    if scene.effusion is not None or rng.random() >= share:
        return scene
    wanted = bool(rng.random() < 0.5)
    if wanted == bool(scene.consolidations):
        return scene
    if not wanted:
        return replace(scene, consolidations=(), pleura_gaps=())
    space = (scene.rib_xs[0] + 0.75, scene.rib_xs[1] - 0.75)
    c = _consolidation(rng, space, large=bool(rng.random() < 0.5))
    return replace(
        scene,
        consolidations=(c,),
        pleura_gaps=(*scene.pleura_gaps, (c.x_cm, c.width_cm * 1.1)),
    )


def spoil_zone(rng: np.random.Generator, scene: ZoneScene, share: float) -> ZoneScene:
    """With probability ``share``, make the whole loop one a clinician would not keep: the probe
    lifted for all of it (most of its face off the skin), or a rib under the probe's centre
    casting its shadow over the pleura (the probe held still). Either at random.

    The scored scenes have such frames only in short stretches (contact loss at the start or end,
    a slide towards a rib); the key-frame model and its quality flag need whole poor cines to
    learn and be tested on.
    """
    if rng.random() >= share:
        return scene
    if rng.random() < 0.5:
        motion = replace(
            scene.motion,
            contact_loss_frames=1.5,
            contact_loss_width=float(rng.uniform(0.7, 1.0)),
        )
        return replace(scene, motion=motion)
    shift = scene.rib_xs[int(rng.integers(0, 2))] + float(rng.normal(0, 0.1))
    return replace(
        scene,
        rib_xs=tuple(r - shift for r in scene.rib_xs),
        motion=replace(scene.motion, slide_cm=0.0, contact_loss_frames=0.0),
    )


def _b_line(
    rng: np.random.Generator,
    space: tuple[float, float],
    width: tuple[float, float],
    duty: tuple[float, float],
) -> BLine:
    return BLine(
        x_cm=float(rng.uniform(*space)),
        width_cm=float(rng.uniform(*width)),
        phase_on=float(rng.random()),
        duty=float(rng.uniform(*duty)),
        strength=float(rng.uniform(0.6, 1.0)),
    )


def _consolidation(
    rng: np.random.Generator, space: tuple[float, float], large: bool
) -> Consolidation:
    if large:
        width, depth = float(rng.uniform(1.8, 2.6)), float(rng.uniform(1.5, 3.0))
    else:
        width, depth = float(rng.uniform(0.5, 1.1)), float(rng.uniform(0.3, 0.8))
    lo, hi = space[0] + width / 3, space[1] - width / 3
    x = float(rng.uniform(lo, hi)) if hi > lo else (space[0] + space[1]) / 2
    n_air = int(rng.integers(3, 9)) if large else int(rng.integers(0, 3))
    bronchograms = tuple(
        (float(rng.uniform(-0.6, 0.6)), float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.04, 0.1)))
        for _ in range(n_air)
    )
    shred = (
        float(rng.uniform(0.05, 0.15)),
        float(rng.uniform(0.05, 0.15)),
        float(rng.uniform(0.03, 0.1)),
    )
    return Consolidation(
        x_cm=x, width_cm=width, depth_cm=depth, large=large, shred=shred, bronchograms=bronchograms
    )
