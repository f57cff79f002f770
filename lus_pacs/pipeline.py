"""The stages between a stored cine and its result files, as functions over typed values:

decode (``imaging``) -> inference (``inference``) -> encode (``encode``) -> files + record.

The live node and ``lus-pacs process`` call the same :func:`process_file`; only what happens to
the files afterwards (C-STORE or nothing) differs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lus_pacs.domain import Findings, KeyFrame, KeyFrameReason, Output
from lus_pacs.durable import durable_file
from lus_pacs.errors import ConfigError
from lus_pacs.families.b_lines.inference import BLineModel
from lus_pacs.families.consolidation.inference import ConsolidationModel
from lus_pacs.families.key_frames.inference import KeyFrameModel
from lus_pacs.families.segmentation.inference import SegmentationModel, frames_to_segment
from lus_pacs.families.severity.inference import SeverityModel
from lus_pacs.imaging.decode import decode_dataset
from lus_pacs.settings import Settings

AVAILABLE_MODELS = ("b_lines", "consolidation", "severity", "segmentation", "key_frames")
"""Bundles the node knows how to run; the other model families come with their issues."""

OUTPUT_SERIES = {
    "sr": 900,
    "kos": 901,
    "seg": 902,
    "seg-binary": 903,
    "seg-uncertainty": 904,
    "pr": 905,
    "study-sr": 906,
}
"""Series number of each kind of result object in the source's study."""


@dataclass(frozen=True, eq=False)
class Models:
    """The model bundles the node runs, loaded once."""

    b_lines: BLineModel | None
    severity: SeverityModel | None = None
    segmentation: SegmentationModel | None = None
    segmentation_frames: str = ""
    """How the segmented frames are chosen (``key``, ``all``, ``every-10``); part of the key."""
    consolidation: ConsolidationModel | None = None
    key_frames: KeyFrameModel | None = None

    @classmethod
    def load(cls, settings: Settings) -> Models:
        enabled = set(settings.models)
        unknown = enabled - set(AVAILABLE_MODELS)
        if unknown:
            raise ConfigError(
                f"models {sorted(unknown)} are not available; available: {list(AVAILABLE_MODELS)}"
            )
        b_lines = BLineModel.load(settings.models_dir / "b_lines") if "b_lines" in enabled else None
        severity = None
        if "severity" in enabled:
            severity = SeverityModel.load(settings.models_dir / "severity")
        segmentation = None
        chosen = settings.segmentation
        if "segmentation" in enabled:
            segmentation = SegmentationModel.load(
                settings.models_dir / "segmentation", chosen.mc_samples
            )
        consolidation = None
        if "consolidation" in enabled:
            consolidation = ConsolidationModel.load(
                settings.models_dir / "consolidation", settings.consolidation.saliency_frames
            )
        key_frames = None
        if "key_frames" in enabled:
            key_frames = KeyFrameModel.load(settings.models_dir / "key_frames")
        return cls(
            b_lines=b_lines,
            severity=severity,
            consolidation=consolidation,
            key_frames=key_frames,
            segmentation=segmentation,
            segmentation_frames=f"every-{chosen.every}"
            if chosen.frames == "every"
            else chosen.frames,
        )

    @property
    def key(self) -> str:
        """Names and versions, the identity of a result: ``b_lines@0.1.0``; the segmentation's
        frame choice and dropout passes change its objects, so they are part of it:
        ``segmentation@0.1.0[key,mc40]``."""
        parts = [
            f"{m.model.name}@{m.model.version}"
            for m in (self.b_lines, self.severity, self.key_frames)
            if m is not None
        ]
        if self.consolidation is not None:
            info = self.consolidation.model
            parts.append(f"{info.name}@{info.version}[s{self.consolidation.saliency_frames}]")
        if self.segmentation is not None:
            info = self.segmentation.model
            setup = f"{self.segmentation_frames or 'key'},mc{self.segmentation.samples}"
            parts.append(f"{info.name}@{info.version}[{setup}]")
        return ",".join(parts) or "none"


def analyse(header: Dataset, name: str, models: Models, settings: Settings) -> Findings:
    """Decode the cine and run every enabled model on it."""
    cine = decode_dataset(header, name, zone_rules=settings.zone_rules)
    b_lines = models.b_lines.predict(cine, settings.default_fps) if models.b_lines else None
    severity = models.severity.predict(cine) if models.severity else None
    consolidation = models.consolidation.predict(cine) if models.consolidation else None
    chosen_frames = models.key_frames.predict(cine) if models.key_frames else None
    key_frames: list[KeyFrame] = []
    if chosen_frames is not None:
        # The frame a clinician would keep comes first, even in a poor cine (flagged as such).
        key_frames.append(KeyFrame(chosen_frames.best_frame, KeyFrameReason.BEST))
    if b_lines is not None and b_lines.present and b_lines.key_frame is not None:
        key_frames.append(KeyFrame(b_lines.key_frame, KeyFrameReason.B_LINES))
    elif b_lines is not None and b_lines.frame_scores:
        # Every cine gets a frame to review: the model's own choice, labelled as such.
        most = max(range(len(b_lines.frame_scores)), key=b_lines.frame_scores.__getitem__)
        key_frames.append(KeyFrame(most + 1, KeyFrameReason.ATTENTION))
    if severity is not None and severity.score > 0:
        key_frames.append(KeyFrame(severity.top_frame, KeyFrameReason.SEVERITY))
    segmentation = None
    if models.segmentation is not None:
        chosen = settings.segmentation
        frames = frames_to_segment(
            chosen.frames, cine.n_frames, [k.frame for k in key_frames], chosen.every
        )
        segmentation = models.segmentation.predict(cine, frames)
    return Findings(
        source=cine.source,
        n_frames=cine.n_frames,
        fps=cine.timing.fps,
        b_lines=b_lines,
        severity=severity,
        key_frames=tuple(key_frames),
        segmentation=segmentation,
        consolidation=consolidation,
        key_frame_model=chosen_frames,
    )


def encode(
    findings: Findings, header: Dataset, kinds: Sequence[str], models_key: str
) -> list[tuple[str, Dataset]]:
    """The result objects of one cine. UIDs derive from the source instance and the model
    versions, so encoding the same result again (after a crash) gives the same objects."""
    from lus_pacs.encode.kos import encode_kos
    from lus_pacs.encode.pstate import encode_presentation_state
    from lus_pacs.encode.seg import encode_seg, encode_uncertainty_seg
    from lus_pacs.encode.sr import encode_sr

    source_uid = findings.source.sop_instance_uid
    out: list[tuple[str, Dataset]] = []
    for kind in kinds:
        uid = str(generate_uid(entropy_srcs=[source_uid, models_key, kind, "instance"]))
        series = str(generate_uid(entropy_srcs=[source_uid, models_key, kind, "series"]))
        if kind == "sr":
            out.append(
                (
                    kind,
                    encode_sr(
                        findings,
                        header,
                        series_number=OUTPUT_SERIES[kind],
                        instance_uid=uid,
                        series_uid=series,
                    ),
                )
            )
        elif kind == "kos":
            kos = encode_kos(
                findings,
                header,
                series_number=OUTPUT_SERIES[kind],
                instance_uid=uid,
                series_uid=series,
            )
            if kos is not None:
                out.append((kind, kos))
        elif kind == "pr":
            state = encode_presentation_state(
                findings,
                header,
                series_number=OUTPUT_SERIES[kind],
                instance_uid=uid,
                series_uid=series,
            )
            if state is not None:
                out.append((kind, state))
        elif kind in ("seg", "seg-binary") and findings.segmentation is not None:
            seg = findings.segmentation
            dataset = encode_seg(
                dict(zip(seg.frames, seg.masks, strict=True)),
                header,
                model=seg.model,
                series_number=OUTPUT_SERIES[kind],
                instance_uid=uid,
                series_uid=series,
                binary=kind == "seg-binary",
            )
            out.append((kind, dataset))
        elif kind == "seg-uncertainty" and findings.segmentation is not None:
            seg = findings.segmentation
            if seg.uncertainty is None:
                continue  # run without Monte-Carlo dropout: nothing to send
            maps = {
                f: np.clip(u, 0.0, 0.5) for f, u in zip(seg.frames, seg.uncertainty, strict=True)
            }
            dataset = encode_uncertainty_seg(
                maps,
                header,
                model=seg.model,
                series_number=OUTPUT_SERIES[kind],
                instance_uid=uid,
                series_uid=series,
            )
            out.append((kind, dataset))
    return out


def output_name(kind: str, ds: Dataset) -> str:
    """The file name of a result object: ``<kind>-<SOPInstanceUID>.dcm``."""
    return f"{kind}-{ds.SOPInstanceUID}.dcm"


def write_outputs(objects: Sequence[tuple[str, Dataset]], folder: Path) -> list[Output]:
    """Each object as a DICOM file, written durably, named by its SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    outputs = []
    for kind, ds in objects:
        path = folder / output_name(kind, ds)
        with durable_file(path) as f:
            ds.save_as(f, enforce_file_format=True)
        outputs.append(Output(kind, str(ds.SOPInstanceUID), path))
    return outputs


def result_record(
    findings: Findings, outputs: Sequence[Output], timings_ms: dict[str, float]
) -> dict[str, Any]:
    """The JSON record of one cine (also what the SR encodes). Frames are 1-based; the keys
    of models that did not run are absent."""
    src = findings.source
    record: dict[str, Any] = {
        "source": {
            "sop_instance_uid": src.sop_instance_uid,
            "series_instance_uid": src.series_instance_uid,
            "study_instance_uid": src.study_instance_uid,
            "patient_id": src.patient_id,
            "zone": src.zone,
            "frames": findings.n_frames,
            "fps": findings.fps,
        }
    }
    if findings.b_lines is not None:
        b = findings.b_lines
        record["b_lines"] = {
            "present": b.present,
            "probability": round(b.probability, 4),
            "frames": list(b.frames),
            "key_frame": b.key_frame,
        }
    if findings.consolidation is not None:
        con = findings.consolidation
        record["consolidation"] = {
            "present": con.present,
            "probability": round(con.probability, 4),
            "boxes": [{"frame": b.frame, "box": list(b.box)} for b in con.boxes],
        }
    if findings.severity is not None:
        sev = findings.severity
        record["severity"] = {
            "score": sev.score,
            "probabilities": list(sev.probabilities),
            "frame_scores": list(sev.frame_scores),
            "top_frame": sev.top_frame,
            "box": list(sev.box) if sev.box is not None else None,
        }
    if findings.segmentation is not None:
        seg = findings.segmentation
        record["segmentation"] = {
            "frames": list(seg.frames),
            "samples": seg.samples,
            "classes": [
                {
                    "score": c.score,
                    "pixels": c.pixels,
                    "frames": [seg.frames[i] for i in c.frames],
                    "uncertainty_mean": c.uncertainty_mean,
                    "uncertainty_max": c.uncertainty_max,
                }
                for c in seg.classes
            ],
        }
    record["key_frames"] = [
        {"frame": k.frame, "reason": k.reason.value} for k in findings.key_frames
    ]
    chosen = findings.key_frame_model
    if chosen is not None:
        record["quality"] = {
            "flag": chosen.quality.value,
            "reasons": [r.value for r in chosen.reasons],
            "best_frame": chosen.best_frame,
            "probability": round(chosen.frame_scores[chosen.best_frame - 1], 4),
            "frame_scores": [round(p, 4) for p in chosen.frame_scores],
        }
    record["outputs"] = [
        {"kind": o.kind, "sop_instance_uid": o.sop_instance_uid, "path": o.path.name}
        for o in outputs
    ]
    record["models"] = {m.name: m.version for m in findings.models}
    record["timings_ms"] = {k: round(v, 1) for k, v in timings_ms.items()}
    return record


def process_file(
    path: Path, models: Models, settings: Settings, out_dir: Path, plots_dir: Path | None = None
) -> tuple[dict[str, Any], list[Output]]:
    """Every stage for one stored cine: its result files in ``out_dir`` and its record.

    With ``plots_dir``, the B-line frame scores over time are also drawn there as
    ``<SOPInstanceUID>_b_lines.png`` (the paper's Fig. 1, without truth).

    Raises
    ------
    UnreadableImageError
        The cine cannot be decoded; the message names the file and the reason.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    header = pydicom.dcmread(path)
    timings["read"] = (time.perf_counter() - start) * 1000
    findings, objects = _analyse_and_encode(header, path.name, models, settings, timings)
    start = time.perf_counter()
    outputs = write_outputs(objects, out_dir)
    timings["encode"] += (time.perf_counter() - start) * 1000
    if plots_dir is not None and findings.b_lines is not None and findings.b_lines.frame_scores:
        from lus_pacs.families.b_lines.plots import plot_attention

        plots_dir.mkdir(parents=True, exist_ok=True)
        name = f"{findings.source.sop_instance_uid}_b_lines.png"
        plot_attention(findings.b_lines, plots_dir / name)
    return result_record(findings, outputs, timings), outputs


def process_bytes(
    data: bytes, name: str, models: Models, settings: Settings
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """Every stage for one cine held in memory, nothing written: its record and its result
    objects as (file name, DICOM Part 10 bytes), named as :func:`write_outputs` names them.

    What a worker on another machine returns (Ray): the caller writes the files.

    Raises
    ------
    UnreadableImageError
        The cine cannot be decoded; the message names ``name`` and the reason.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    header = pydicom.dcmread(BytesIO(data))
    timings["read"] = (time.perf_counter() - start) * 1000
    findings, objects = _analyse_and_encode(header, name, models, settings, timings)
    files = []
    outputs = []
    for kind, ds in objects:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        file_name = output_name(kind, ds)
        files.append((file_name, buffer.getvalue()))
        outputs.append(Output(kind, str(ds.SOPInstanceUID), Path(file_name)))
    return result_record(findings, outputs, timings), files


def _analyse_and_encode(
    header: Dataset, name: str, models: Models, settings: Settings, timings: dict[str, float]
) -> tuple[Findings, list[tuple[str, Dataset]]]:
    start = time.perf_counter()
    findings = analyse(header, name, models, settings)
    timings["decode+inference"] = (time.perf_counter() - start) * 1000
    start = time.perf_counter()
    objects = encode(findings, header, settings.output_kinds, models.key)
    timings["encode"] = (time.perf_counter() - start) * 1000
    return findings, objects


def study_summary(study: str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The study's summary from its cines' records: zones scanned and the cines of each,
    B-line zones (and consolidation zones once that model runs), and the LUS score per zone
    (the highest clip score among the zone's cines) with its total over the scored zones.
    Cines without a zone count as zone "?"; a model that did not run leaves its keys out
    (``b_lines_assessed`` says whether the B-line zones are known). With the key-frame model,
    ``quality_zones`` lists the zones it assessed and ``poor_zones`` those of them none of whose
    assessed cines is usable: to scan again."""
    zones: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        zones.setdefault(record["source"]["zone"] or "?", []).append(record)
    zones = dict(sorted(zones.items()))
    models: dict[str, str] = {}
    for record in records:
        models.update(record.get("models", {}))
    summary: dict[str, Any] = {
        "study_instance_uid": study,
        "cines": len(records),
        "zones": list(zones),
        "zone_cines": {z: [r["source"]["sop_instance_uid"] for r in rs] for z, rs in zones.items()},
        "b_lines_assessed": any("b_lines" in r for r in records),
        "b_line_zones": [
            z for z, rs in zones.items() if any(r.get("b_lines", {}).get("present") for r in rs)
        ],
        "models": dict(sorted(models.items())),
    }
    if any("consolidation" in r for r in records):
        summary["consolidation_zones"] = [
            z
            for z, rs in zones.items()
            if any(r.get("consolidation", {}).get("present") for r in rs)
        ]
    assessed = {z: [r["quality"]["flag"] for r in rs if "quality" in r] for z, rs in zones.items()}
    if any(assessed.values()):
        # Zones to scan again: none of their assessed cines holds a frame worth keeping.
        summary["quality_zones"] = [z for z, flags in assessed.items() if flags]
        summary["poor_zones"] = [
            z for z, flags in assessed.items() if flags and all(f == "poor" for f in flags)
        ]
    scores = {
        z: max(r["severity"]["score"] for r in rs if "severity" in r)
        for z, rs in zones.items()
        if any("severity" in r for r in rs)
    }
    if scores:
        summary["lus_score"] = {
            "per_zone": scores,
            "total": sum(scores.values()),
            "zones_scanned": len(zones),
            "zones_scored": len(scores),
            "maximum": 3 * len(scores),
        }
    return summary


def encode_summary(
    summary: dict[str, Any], sources: Sequence[Dataset], models_key: str
) -> tuple[str, Dataset]:
    """The study summary SR. Its instance UID derives from the study, the cines it covers and
    the model versions: the same exam summarised again gives the same object. A study that
    grows after a summary (a late cine) gets a new one in the same series, its Instance Number
    the count of cines it covers, so the latest summary is the highest-numbered."""
    from lus_pacs.encode.summary import encode_study_summary

    study = summary["study_instance_uid"]
    cines = sorted(u for uids in summary["zone_cines"].values() for u in uids)
    return "study-sr", encode_study_summary(
        summary,
        sources,
        series_number=OUTPUT_SERIES["study-sr"],
        instance_uid=str(generate_uid(entropy_srcs=[study, models_key, *cines, "study-sr"])),
        series_uid=str(generate_uid(entropy_srcs=[study, models_key, "study-sr", "series"])),
        instance_number=len(cines),
    )


def dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True)
