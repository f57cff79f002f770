"""Simulated exams: one study per patient, one US Multi-frame instance per zone, with truth.

Layout of an output folder::

    <out>/<patient id>/<zone>.dcm           the cine, as a scanner sends it
    <out>/<patient id>/<zone>.truth.json    per-frame and per-clip truth (schema below)
    <out>/<patient id>/<zone>.masks.npz     class masks (frames, rows, cols), key "masks"
    <out>/annotations/b_lines_via.json      paper 001's VIA format
    <out>/annotations/labelme/...           paper 003's LabelMe polygons (every 10th frame)
    <out>/annotations/frame_scores.csv      paper 003's frame scores
    <out>/montage.png                       frames of each severity, for a person to look at
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.uid import generate_uid

from lus_pacs import __version__
from lus_pacs.imaging.writer import (
    CineInstance,
    CineSyntax,
    Equipment,
    StudyIdentity,
    write_us_cine,
)
from lus_pacs.synth.geometry import Probe, ProbeGeometry
from lus_pacs.synth.montage import write_montage
from lus_pacs.synth.overlay import burn_in
from lus_pacs.synth.render import MASK_CLASSES, FrameTruth, RenderedCine, render_cine
from lus_pacs.synth.scene import (
    PatientScene,
    ZoneScene,
    decouple_consolidation,
    draw_patient,
    spoil_zone,
)
from lus_pacs.training.annotations import (
    ClipBLines,
    FrameScore,
    write_frame_scores,
    write_labelme,
    write_via,
)

TRUTH_SCHEMA = "lus-pacs-synth-truth/1"
LABELME_EVERY = 10
_ROWS, _COLS = 480, 640


@dataclass(frozen=True)
class SynthOptions:
    patients: int
    seed: int
    zones: int = 6
    probe: Probe = Probe.CONVEX
    frames: int = 60
    fps: float = 30.0
    syntax: CineSyntax = CineSyntax.JPEG
    workers: int = 1
    decouple_consolidation: float = 0.0
    """Share of zones whose consolidation is redrawn independent of the score (training data
    for the consolidation model; 0 keeps the scored scenes)."""
    poor_share: float = 0.0
    """Share of zones whose whole loop is poor: probe lifted, or a rib over the pleura
    (training and test data for the key-frame model; 0 keeps the scored scenes)."""


@dataclass(frozen=True)
class CineRecord:
    """One written cine and the clip-level truth, for the caller's summary."""

    dicom: Path
    truth: Path
    patient_id: str
    zone: str
    severity: int | None
    b_lines: bool
    consolidation: bool
    samples: tuple[tuple[int, int, npt.NDArray[np.uint8]], ...] = ()
    """(severity, frame number, RGB frame): one frame of each severity the cine shows."""


def synthesize(
    out: Path, options: SynthOptions, progress: Callable[[int], object] | None = None
) -> list[CineRecord]:
    """Write ``options.patients`` simulated exams under ``out``; same seed, same pixels.

    ``progress`` is called with the number of cines finished since the last call.
    """
    out.mkdir(parents=True, exist_ok=True)
    patient_rng = np.random.default_rng([options.seed, 0])
    patients = [
        draw_patient(patient_rng, i, options.seed, options.zones, Probe(options.probe))
        for i in range(options.patients)
    ]
    if options.poor_share > 0:
        # Its own stream, as for the consolidation option below.
        poor_rng = np.random.default_rng([options.seed, 0, 2])
        patients = [
            replace(p, zones=tuple(spoil_zone(poor_rng, z, options.poor_share) for z in p.zones))
            for p in patients
        ]
    if options.decouple_consolidation > 0:
        # Its own stream: the scenes of the default (0) are unchanged by the option's existence.
        decouple_rng = np.random.default_rng([options.seed, 0, 1])
        patients = [
            replace(
                p,
                zones=tuple(
                    decouple_consolidation(decouple_rng, z, options.decouple_consolidation)
                    for z in p.zones
                ),
            )
            for p in patients
        ]
    jobs = [(out, options, p, z) for p in patients for z in range(len(p.zones))]
    records: list[CineRecord] = []
    if options.workers > 1:
        # Forked from a clean server process, not from a caller that may have threads.
        with ProcessPoolExecutor(options.workers, mp_context=get_context("forkserver")) as pool:
            for record in pool.map(_write_zone_job, jobs):
                records.append(record)
                if progress:
                    progress(1)
    else:
        for job in jobs:
            records.append(_write_zone_job(job))
            if progress:
                progress(1)
    _write_exports(out, records)
    write_montage(out / "montage.png", records)
    return [replace(r, samples=()) for r in records]


def _write_zone_job(job: tuple[Path, SynthOptions, PatientScene, int]) -> CineRecord:
    out, options, patient, z = job
    return write_zone(out, options, patient, patient.zones[z], z)


def _uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=["lus-pacs-synth", *map(str, parts)]))


def write_zone(
    out: Path, options: SynthOptions, patient: PatientScene, scene: ZoneScene, z: int
) -> CineRecord:
    """Render one zone and write its DICOM, truth and masks."""
    # Each cine has its own stream, so the pixels do not depend on the order of work.
    rng = np.random.default_rng([options.seed, patient.index + 1, z + 1])
    geom = ProbeGeometry.make(scene.probe, _ROWS, _COLS, scene.depth_cm)
    rendered = render_cine(scene, geom, options.frames, options.fps, rng)
    truth = _finish_truth(rendered, scene)

    study_uid = _uid(options.seed, patient.patient_id, "study")
    acquired = dt.datetime(2026, 1, 5, 9, 0) + dt.timedelta(
        days=patient.index, minutes=2 * z, seconds=7
    )
    study = StudyIdentity(
        patient_id=patient.patient_id,
        patient_name=patient.name,
        study_instance_uid=study_uid,
        study_date=acquired.date(),
        study_time=dt.time(9, 0),
        study_id=f"{patient.index + 1}",
        accession_number=f"SIM{options.seed:04d}{patient.index + 1:05d}",
        study_description="Lung ultrasound (simulated)",
        patient_birth_date=patient.birth_date,
        patient_sex=patient.sex,
    )
    instance = CineInstance(
        series_instance_uid=_uid(options.seed, patient.patient_id, scene.zone, "series"),
        series_number=z + 1,
        series_description=f"Lung {scene.zone}",
        sop_instance_uid=_uid(options.seed, patient.patient_id, scene.zone, "instance"),
        instance_number=1,
        fps=options.fps,
        acquisition_datetime=acquired,
        image_comments=f"Zone {scene.zone}; simulated by lus-pacs {__version__}",
        transducer="C5-1" if scene.probe is Probe.CONVEX else "L12-4",
    )
    probe_name = instance.transducer
    text = [
        "LUS-SIM  Lung",
        f"{probe_name}  {scene.transducer_frequency_khz / 1000:.1f}MHz",
        f"D {scene.depth_cm:.1f}cm  G {50 + scene.gain_db:.0f}",
        f"{options.fps:.0f}Hz  MI 0.8",
        acquired.strftime("%Y-%m-%d %H:%M"),
    ]
    rgb = burn_in(rendered.frames, geom, text, scene.zone)
    folder = out / patient.patient_id
    dicom = folder / f"{scene.zone}.dcm"
    write_us_cine(
        dicom,
        rgb,
        study=study,
        instance=instance,
        equipment=Equipment(
            manufacturer="lus-pacs",
            model_name="LUS simulator",
            software_versions=__version__,
            device_serial_number=f"SIM{options.seed:04d}",
            institution_name="Simulated Hospital",
        ),
        regions=[geom.region(scene.transducer_frequency_khz)],
        syntax=options.syntax,
    )
    np.savez_compressed(folder / f"{scene.zone}.masks.npz", masks=rendered.masks)
    clip = _clip_truth(truth, scene)
    region = geom.region(scene.transducer_frequency_khz)
    sidecar = {
        "schema": TRUTH_SCHEMA,
        "simulated": True,
        "generator": f"lus-pacs {__version__}",
        "seed": options.seed,
        "file": dicom.name,
        "sop_instance_uid": instance.sop_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "study_instance_uid": study_uid,
        "patient_id": patient.patient_id,
        "patient_state": patient.state.value,
        "zone": scene.zone,
        "probe": scene.probe.value,
        "fps": options.fps,
        "n_frames": options.frames,
        "rows": _ROWS,
        "cols": _COLS,
        "region": {"x0": region.x0, "y0": region.y0, "x1": region.x1 + 1, "y1": region.y1 + 1},
        "cm_per_pixel": geom.cm_per_px,
        "depth_cm": scene.depth_cm,
        "pleura_depth_cm": scene.pleura_depth_cm,
        "breathing_period_s": scene.breathing_period_s,
        "clip": clip,
        "best_frame": _best_frame(truth),
        "mask_file": f"{scene.zone}.masks.npz",
        "mask_classes": list(MASK_CLASSES),
        "frames": [asdict(t) for t in truth],
    }
    truth_path = folder / f"{scene.zone}.truth.json"
    truth_path.write_text(json.dumps(sidecar, indent=1))
    return CineRecord(
        dicom=dicom,
        truth=truth_path,
        patient_id=patient.patient_id,
        zone=scene.zone,
        severity=clip["severity"],
        b_lines=bool(clip["b_lines"]),
        consolidation=bool(clip["consolidation"]),
        samples=_samples(truth, rgb),
    )


def _samples(
    truth: list[FrameTruth], rgb: npt.NDArray[np.uint8]
) -> tuple[tuple[int, int, npt.NDArray[np.uint8]], ...]:
    picked: dict[int, int] = {}
    for t in truth:
        if t.severity is not None and (t.high_value or t.severity not in picked):
            picked.setdefault(t.severity, t.frame)
    return tuple((score, frame, rgb[frame - 1].copy()) for score, frame in sorted(picked.items()))


def _finish_truth(rendered: RenderedCine, scene: ZoneScene) -> list[FrameTruth]:
    """Mark the high-value frames, now that the clip's score is known."""
    scores = [t.severity for t in rendered.truth if t.severity is not None]
    clip_score = max(scores) if scores else None
    out = []
    for t in rendered.truth:
        high = (
            t.contact
            and t.pleura_visible_fraction >= 0.25
            and not t.rib_shadow_over_pleura
            and (clip_score is None or t.severity == clip_score)
        )
        out.append(FrameTruth(**{**asdict(t), "high_value": bool(high)}))
    return out


def _clip_truth(truth: list[FrameTruth], scene: ZoneScene) -> dict[str, Any]:
    scores = [t.severity for t in truth if t.severity is not None]
    return {
        "severity": max(scores) if scores else None,
        "designed_severity": scene.designed_severity,
        "b_lines": any(t.b_line_count > 0 for t in truth),
        "b_line_frames": [t.frame for t in truth if t.b_line_count > 0],
        "max_b_line_count": max((t.b_line_count for t in truth), default=0),
        "confluent_b_lines": any(t.confluent_b_lines for t in truth),
        "consolidation": any(t.consolidation_boxes for t in truth),
        "effusion": scene.effusion is not None,
        "high_value_frames": [t.frame for t in truth if t.high_value],
    }


def _best_frame(truth: list[FrameTruth]) -> int:
    """The frame a clinician would keep: high value, most pleura in view, the worst finding."""

    def key(t: FrameTruth) -> tuple[bool, int, float]:
        return (t.high_value, t.severity or 0, t.pleura_visible_fraction)

    return max(truth, key=key).frame


def _write_exports(out: Path, records: list[CineRecord]) -> None:
    ann = out / "annotations"
    ann.mkdir(exist_ok=True)
    clips: list[ClipBLines] = []
    scores: list[FrameScore] = []
    for r in records:
        doc = json.loads(r.truth.read_text())
        rel = f"{r.patient_id}/{r.dicom.name}"
        clips.append(
            ClipBLines(rel, doc["fps"], doc["n_frames"], tuple(doc["clip"]["b_line_frames"]))
        )
        scores.extend(
            FrameScore(rel, f["frame"], f["severity"])
            for f in doc["frames"]
            if f["severity"] is not None
        )
        masks = np.load(r.truth.parent / doc["mask_file"])["masks"]
        for frame in range(1, doc["n_frames"] + 1, LABELME_EVERY):
            write_labelme(
                ann / "labelme" / r.patient_id / f"{r.zone}_f{frame:04d}.json",
                masks[frame - 1],
                f"../../../{rel}",
                frame,
            )
    write_via(ann / "b_lines_via.json", clips)
    write_frame_scores(ann / "frame_scores.csv", scores)


def sample_cine(out: Path, frames: int = 30, seed: int = 7) -> Path:
    """Write one simulated cine under ``out`` (with its truth) and return its path: the zone of
    the most severe lung of a patient drawn from ``seed`` (the default's shows B-lines and a
    consolidation, so every model family has something to find)."""
    patient = draw_patient(np.random.default_rng([seed, 0]), 0, seed, 6, Probe.CONVEX)
    z = max(range(len(patient.zones)), key=lambda i: patient.zones[i].designed_severity)
    options = SynthOptions(patients=1, seed=seed, frames=frames)
    return write_zone(out, options, patient, patient.zones[z], z).dicom
