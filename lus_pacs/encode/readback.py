"""Reading the node's SRs back into the result records they were made from.

A radiologist's PACS sees the SR, not the JSON record: these readers, built on highdicom's
``srread``, decode each SR the way any TID 1500 consumer would, into the same shape as
``summary.jsonl`` (cines) and ``studies.jsonl`` (study summaries), so that one can be checked
against the other field by field. Fields an SR does not carry (timings, fps, the attention of
every frame, the key-frame model's score of every frame, file names) are absent from what
these return.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import highdicom as hd
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.sr.coding import Code

from lus_pacs.domain import KeyFrameReason, Quality
from lus_pacs.encode import codes

_E = TypeVar("_E", bound=Enum)


def read_cine_sr(path: Path) -> dict[str, Any]:
    """The record of one cine, as its SR says it.

    Keys as in :func:`lus_pacs.pipeline.result_record`: ``source`` (SOP Instance, series,
    study, patient, zone), ``b_lines`` (present, probability, frames), ``severity`` (score,
    probability of that score, frame scores, top frame, box), ``segmentation`` (classes),
    ``key_frames`` (``{"frame", "reason"}`` in the order the pipeline chose them), ``quality``
    (the key-frame model's ``flag``, ``reasons``, ``best_frame`` and its ``probability``; not
    the score of every frame), ``assessment`` (``assessable`` and the ``reasons`` when not) and
    ``models``. ``b_lines`` also holds ``key_frame`` (the frame
    chosen for B-lines, or None) and ``key_frames`` (every key frame's number, ascending).
    """
    sr = hd.sr.srread(path)
    report = _report(sr)
    (library_image,) = _library_sources(sr)
    record: dict[str, Any] = {
        "source": {
            "sop_instance_uid": library_image[0],
            "series_instance_uid": library_image[1],
            "study_instance_uid": str(sr.StudyInstanceUID),
            "patient_id": str(sr.PatientID),
            "zone": None,
        }
    }
    models: dict[str, str] = {}
    key_frames: list[dict[str, Any]] = []
    for group in report.get_image_measurement_groups():
        record["source"]["zone"] = _zone(group)
        models.update(_algorithms(group))
        finding = group.finding_type
        if finding is None:  # the cine's own group when the B-line model did not run
            pass
        elif finding == codes.B_LINES:
            record["b_lines"] = _b_lines(group)
        elif finding == codes.LUS_SCORE:
            record["severity"] = _severity(group)
        elif finding == codes.CONSOLIDATION:
            (present,) = group.get_qualitative_evaluations(name=codes.CONSOLIDATION)
            (probability,) = group.get_measurements(name=codes.PROBABILITY)
            record["consolidation"] = {
                "present": present.value == codes.PRESENT,
                "probability": float(probability.value),
                "boxes": [],
            }
        elif finding == codes.SCORE_MASKS:
            record["segmentation"] = {"classes": _mask_classes(group)}
        elif finding == codes.IMAGE_QUALITY:
            record["quality"] = _quality(group)
        elif finding == codes.ASSESSABILITY:
            record["assessment"] = _assessment(group)
        key_frames.extend(_key_frame(item) for item in _children(group, codes.KEY_FRAME))
    if key_frames:
        # Each reason sits in its model's group; the node lists them in the reasons' order.
        order = list(KeyFrameReason)
        record["key_frames"] = sorted(key_frames, key=lambda k: order.index(k["reason"]))
    for roi in report.get_planar_roi_measurement_groups(finding_type=codes.SCORE_REGION):
        frame, box = _region_box(roi)
        record.setdefault("severity", {})["top_frame"] = frame
        record["severity"]["box"] = box
    for roi in report.get_planar_roi_measurement_groups(finding_type=codes.CONSOLIDATION):
        frame, box = _region_box(roi)
        record.setdefault("consolidation", {}).setdefault("boxes", []).append(
            {"frame": frame, "box": box}
        )
    if "b_lines" in record:
        chosen = record.get("key_frames", [])
        record["b_lines"]["key_frame"] = next(
            (k["frame"] for k in chosen if k["reason"] == KeyFrameReason.B_LINES), None
        )
        if chosen:
            record["b_lines"]["key_frames"] = sorted({k["frame"] for k in chosen})
    record["models"] = models
    return record


def read_study_summary(path: Path) -> dict[str, Any]:
    """The study summary record, as its summary SR says it: keys as in
    :func:`lus_pacs.pipeline.study_summary` (``zone_cines``, ``b_line_zones``,
    ``lus_score`` with ``per_zone``, ``total``, ``zones_scanned``, ``zones_scored``,
    ``maximum``; ``consolidation_zones``, ``quality_zones`` and ``poor_zones`` when assessed)."""
    sr = hd.sr.srread(path)
    report = _report(sr)
    summary: dict[str, Any] = {"study_instance_uid": str(sr.StudyInstanceUID)}
    zone_cines: dict[str, list[str]] = {}
    b_line_zones, consolidation_zones, per_zone = [], [], {}
    quality_zones: list[str] = []
    poor_zones: list[str] = []
    not_assessable_zones: list[str] = []
    b_lines_assessed = consolidation_assessed = False
    totals: dict[str, int] = {}
    for group in report.get_image_measurement_groups():
        if group.finding_type == codes.LUS_EXAM:
            names = {
                "total": codes.TOTAL_LUS_SCORE,
                "maximum": codes.MAXIMUM_LUS_SCORE,
                "zones_scored": codes.ZONES_SCORED,
                "zones_scanned": codes.ZONES_SCANNED,
                "cines_not_processed": codes.CINES_NOT_PROCESSED,
            }
            for key, name in names.items():
                for m in group.get_measurements(name=name):
                    totals[key] = int(m.value)
            continue
        zone = _zone(group) or "?"
        zone_cines[zone] = [img.referenced_sop_instance_uid for img in group.source_images]
        for m in group.get_measurements(name=codes.LUS_SCORE):
            per_zone[zone] = int(m.value)
        for evaluation in group.get_qualitative_evaluations(name=codes.B_LINES):
            b_lines_assessed = True
            if evaluation.value == codes.PRESENT:
                b_line_zones.append(zone)
        for evaluation in group.get_qualitative_evaluations(name=codes.CONSOLIDATION):
            consolidation_assessed = True
            if evaluation.value == codes.PRESENT:
                consolidation_zones.append(zone)
        for evaluation in group.get_qualitative_evaluations(name=codes.ASSESSABILITY):
            if evaluation.value == codes.NOT_ASSESSABLE:
                not_assessable_zones.append(zone)
        for evaluation in group.get_qualitative_evaluations(name=codes.QUALITY_ASSESSMENT):
            quality_zones.append(zone)
            if evaluation.value == codes.QUALITY_VALUES[Quality.POOR]:
                poor_zones.append(zone)
    summary["zones"] = list(zone_cines)
    summary["zone_cines"] = zone_cines
    summary["b_lines_assessed"] = b_lines_assessed
    summary["b_line_zones"] = b_line_zones
    if consolidation_assessed:
        summary["consolidation_zones"] = consolidation_zones
    if quality_zones:
        summary["quality_zones"] = quality_zones
        summary["poor_zones"] = poor_zones
    if not_assessable_zones:
        summary["not_assessable_zones"] = not_assessable_zones
    if "cines_not_processed" in totals:
        summary["cines_not_processed"] = totals["cines_not_processed"]
    if per_zone:
        summary["lus_score"] = {
            "per_zone": per_zone,
            "total": totals.get("total"),
            "zones_scanned": totals.get("zones_scanned"),
            "zones_scored": totals.get("zones_scored"),
            "maximum": totals.get("maximum"),
        }
    return summary


def _region_box(
    roi: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations,
) -> tuple[int, list[int]]:
    """The frame and (x0, y0, x1, y1) of a group's closed POLYLINE box."""
    region = roi.roi
    if not isinstance(region, hd.sr.ImageRegion):
        raise ValueError("a region group without a 2D image region")
    points = region.value
    (frame,) = _frames(region) or [1]
    xs, ys = points[:, 0], points[:, 1]
    return frame, [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _report(sr: Dataset) -> hd.sr.MeasurementReport:
    content = sr.content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise ValueError(f"{sr.SOPInstanceUID} is not a TID 1500 measurement report")
    return content


def _library_sources(sr: Dataset) -> list[tuple[str, str]]:
    """(SOP Instance UID, Series Instance UID) of each source image the SR's evidence lists
    (the SEG it references, a result of the same cine, is not a source)."""
    return [
        (str(ref.ReferencedSOPInstanceUID), str(series.SeriesInstanceUID))
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
        if not str(ref.ReferencedSOPClassUID).startswith(_SEGMENTATION_CLASSES)
    ]


_SEGMENTATION_CLASSES = "1.2.840.10008.5.1.4.1.1.66."
"""The prefix of the segmentation storage classes (SEG, LABELMAP SEG, surface)."""


def _zone(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> str | None:
    for site in group.finding_sites:
        for item in site.get("ContentSequence", []):
            if _is(item, codes.LUNG_ZONE):
                return str(item.TextValue)
    return None


def _algorithms(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, str]:
    names = _children(group, codes.ALGORITHM_NAME)
    versions = _children(group, codes.ALGORITHM_VERSION)
    return {str(n.TextValue): str(v.TextValue) for n, v in zip(names, versions, strict=True)}


def _b_lines(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, Any]:
    (present,) = group.get_qualitative_evaluations(name=codes.B_LINES)
    (probability,) = group.get_measurements(name=codes.PROBABILITY)
    (frames,) = group.get_measurements(name=codes.B_LINE_FRAMES)
    return {
        "present": present.value == codes.PRESENT,
        "probability": float(probability.value),
        "frames": [f for ref in frames.referenced_images or [] for f in _image_frames(ref)],
    }


def _severity(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, Any]:
    (score,) = group.get_measurements(name=codes.LUS_SCORE)
    (probability,) = group.get_measurements(name=codes.PROBABILITY)
    by_frame: dict[int, int] = {}
    for k, name in enumerate(codes.FRAMES_WITH_SCORE):
        for m in group.get_measurements(name=name):
            for ref in m.referenced_images or []:
                by_frame.update(dict.fromkeys(_image_frames(ref), k))
    return {
        "score": int(score.value),
        "probability": float(probability.value),
        # By frame number: a damaged frame is in no score group (None), so the frames after
        # it keep their places.
        "frame_scores": [by_frame.get(f) for f in range(1, max(by_frame, default=0) + 1)],
    }


def _mask_classes(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[dict[str, Any]]:
    classes = []
    for score, name in enumerate(codes.PIXELS_WITH_SCORE):
        for m in group.get_measurements(name=name):
            uncertainty: dict[str, float] = {}
            for u in group.get_measurements(name=codes.MASK_UNCERTAINTY[score]):
                if u.derivation is not None:
                    uncertainty[str(u.derivation.meaning).lower()] = float(u.value)
            classes.append(
                {
                    "score": score,
                    "pixels": int(m.value),
                    "frames": [f for ref in m.referenced_images or [] for f in _image_frames(ref)],
                    "uncertainty_mean": uncertainty.get("mean"),
                    "uncertainty_max": uncertainty.get("maximum"),
                }
            )
    return classes


def _key_frame(item: Dataset) -> dict[str, Any]:
    """``{"frame", "reason"}`` of a Key frame item; a single-frame source's frame is 1."""
    reason = _decode(item.ConceptCodeSequence[0], codes.KEY_FRAME_REASONS)
    (frame,) = _frames(item) or [1]
    return {"frame": frame, "reason": reason.value}


def _quality(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, Any]:
    (flag,) = group.get_qualitative_evaluations(name=codes.QUALITY_ASSESSMENT)
    reasons = group.get_qualitative_evaluations(name=codes.QUALITY_FINDING)
    (keep,) = group.get_measurements(name=codes.KEEP_PROBABILITY)
    (best,) = [f for ref in keep.referenced_images or [] for f in _image_frames(ref)] or [1]
    return {
        "flag": _decode(flag[0].ConceptCodeSequence[0], codes.QUALITY_VALUES).value,
        "reasons": [
            _decode(r[0].ConceptCodeSequence[0], codes.POOR_REASONS).value for r in reasons
        ],
        "best_frame": best,
        "probability": float(keep.value),
    }


def _assessment(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> dict[str, Any]:
    (verdict,) = group.get_qualitative_evaluations(name=codes.ASSESSABILITY)
    reasons = group.get_qualitative_evaluations(name=codes.NOT_ASSESSABLE_REASON)
    return {
        "assessable": verdict.value == codes.ASSESSABLE,
        "reasons": [
            _decode(r[0].ConceptCodeSequence[0], codes.NOT_ASSESSABLE_REASONS).value
            for r in reasons
        ],
    }


def _decode(value: Dataset, known: Mapping[_E, Code]) -> _E:
    """The enum member whose code ``value`` (a code sequence item) is."""
    for member, code in known.items():
        if value.CodeValue == code.value and value.CodingSchemeDesignator == code.scheme_designator:
            return member
    raise ValueError(
        f"Unknown code ({value.CodeValue}, {value.CodingSchemeDesignator}, "
        f'"{value.CodeMeaning}"): expected one of {[c.value for c in known.values()]}.'
    )


def _image_frames(ref: Any) -> list[int]:
    frames = ref.referenced_frame_numbers
    return [int(f) for f in frames] if frames else []


def _frames(item: Dataset) -> list[int]:
    """Frame numbers of an IMAGE or SCOORD content item's image reference."""
    refs = item.get("ReferencedSOPSequence") or []
    if not refs:
        for child in item.get("ContentSequence", []):
            refs = child.get("ReferencedSOPSequence") or refs
    frames: list[int] = []
    for ref in refs:
        value = ref.get("ReferencedFrameNumber")
        if value is None:
            continue
        frames.extend(int(v) for v in (value if isinstance(value, MultiValue) else [value]))
    return frames


def _children(group: hd.sr.MeasurementsAndQualitativeEvaluations, code: Code) -> list[Dataset]:
    """The group container's own content items named ``code`` (highdicom's ``find`` looks
    only at the template's top level, the container itself)."""
    return [item for item in group[0].ContentSequence if _is(item, code)]


def _is(item: Dataset, code: Code) -> bool:
    concept = item.get("ConceptNameCodeSequence")
    return bool(concept) and (
        concept[0].CodeValue == code.value
        and concept[0].CodingSchemeDesignator == code.scheme_designator
    )
