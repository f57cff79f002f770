"""The per-cine record and the study summary: frozen dataclasses with one JSON form.

``summary.jsonl`` holds one :class:`CineRecord` a line, ``studies.jsonl`` one
:class:`StudySummary`; the node's job store keeps the same text. :func:`to_json` writes any of
these values (a dataclass's fields are its JSON keys; a field marked :data:`OMIT_NONE` is left
out when None) and :func:`from_json` reads them back by their type hints. Frames are 1-based.
"""

from __future__ import annotations

import json
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from lus_pacs.domain import (
    AssessmentFindings,
    BLineFindings,
    ConsolidationFindings,
    KeyFrameFindings,
    KeyFrameReason,
    NotAssessableReason,
    PoorReason,
    Quality,
    SegmentationFindings,
    SeverityFindings,
    SourceRef,
)

OMIT_NONE = {"omit_none": True}
"""Field metadata: the key is absent from the JSON when the value is None."""

_T = TypeVar("_T")


def to_json(value: object) -> Any:
    """The JSON form of a record value: dataclasses as objects, tuples as arrays, enums as
    their values."""
    if is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: to_json(getattr(value, f.name))
            for f in fields(value)
            if not (f.metadata.get("omit_none") and getattr(value, f.name) is None)
        }
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def from_json(kind: type[_T], data: Any) -> _T:
    """A record value of type ``kind`` from its JSON form.

    Raises
    ------
    ValueError
        The JSON does not fit ``kind``; the message names the field.
    """
    value: _T = _read(kind, data, kind.__name__)
    return value


def _read(kind: Any, data: Any, where: str) -> Any:
    origin = get_origin(kind)
    if origin is Union or origin is types.UnionType:
        options = get_args(kind)
        if data is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _read(inner, data, where)
    if origin is tuple:
        args = get_args(kind)
        items = _sequence(data, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_read(args[0], v, f"{where}[{i}]") for i, v in enumerate(items))
        if len(items) != len(args):
            raise ValueError(f"{where}: {len(args)} values expected, got {len(items)}")
        return tuple(
            _read(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, items, strict=True))
        )
    if origin in (dict, Mapping):
        key_type, value_type = get_args(kind)
        if not isinstance(data, dict):
            raise ValueError(f"{where}: an object expected, got {data!r}")
        return {
            _read(key_type, k, where): _read(value_type, v, f"{where}.{k}") for k, v in data.items()
        }
    if isinstance(kind, type) and is_dataclass(kind):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: an object expected, got {data!r}")
        hints = get_type_hints(kind)
        values = {}
        for f in fields(kind):
            if f.name in data:
                values[f.name] = _read(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif not f.metadata.get("omit_none"):
                raise ValueError(f"{where}: '{f.name}' is missing")
        return kind(**values)
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    if kind is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if kind is Any or (isinstance(kind, type) and isinstance(data, kind)):
        return data
    raise ValueError(f"{where}: {kind} expected, got {data!r}")


def _sequence(data: Any, where: str) -> Sequence[Any]:
    if not isinstance(data, list | tuple):
        raise ValueError(f"{where}: an array expected, got {data!r}")
    return data


@dataclass(frozen=True)
class SourceRecord:
    """The cine a record is about."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient_id: str
    zone: str | None
    frames: int
    fps: float | None
    frames_damaged: tuple[DamagedFrameRecord, ...] | None = field(default=None, metadata=OMIT_NONE)
    """Frames the decoder read only in part (absent when none): never key frames."""


@dataclass(frozen=True)
class DamagedFrameRecord:
    frame: int
    """1-based."""
    reason: str
    """What the decoder said of it."""


@dataclass(frozen=True)
class AssessmentRecord:
    """Whether the lung models read the cine; when not, why (they then left no part)."""

    assessable: bool
    reasons: tuple[NotAssessableReason, ...]
    apex_ratio: float | None

    @classmethod
    def of(cls, found: AssessmentFindings) -> AssessmentRecord:
        ratio = found.apex_ratio
        return cls(found.assessable, found.reasons, None if ratio is None else round(ratio, 4))


@dataclass(frozen=True)
class BLinesRecord:
    present: bool
    probability: float
    frames: tuple[int, ...]
    key_frame: int | None

    @classmethod
    def of(cls, found: BLineFindings) -> BLinesRecord:
        return cls(found.present, round(found.probability, 4), found.frames, found.key_frame)


@dataclass(frozen=True)
class BoxRecord:
    frame: int
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class ConsolidationRecord:
    present: bool
    probability: float
    boxes: tuple[BoxRecord, ...]

    @classmethod
    def of(cls, found: ConsolidationFindings) -> ConsolidationRecord:
        boxes = tuple(BoxRecord(b.frame, b.box) for b in found.boxes)
        return cls(found.present, round(found.probability, 4), boxes)


@dataclass(frozen=True)
class SeverityRecord:
    score: int
    probabilities: tuple[float, float, float, float]
    frame_scores: tuple[int, ...]
    top_frame: int
    box: tuple[int, int, int, int] | None
    clip_from_measurements: bool | None = field(default=None, metadata=OMIT_NONE)
    """True when the clip score is the real-data recipe's, not the frame scores' (absent:
    it is theirs): see :class:`~lus_pacs.domain.SeverityFindings`."""

    @classmethod
    def of(cls, found: SeverityFindings) -> SeverityRecord:
        return cls(
            found.score,
            found.probabilities,
            found.frame_scores,
            found.top_frame,
            found.box,
            True if found.clip_from_measurements else None,
        )


@dataclass(frozen=True)
class SegmentedClassRecord:
    score: int
    pixels: int
    frames: tuple[int, ...]
    """1-based source frames where the score appears."""
    uncertainty_mean: float | None
    uncertainty_max: float | None


@dataclass(frozen=True)
class SegmentationRecord:
    frames: tuple[int, ...]
    samples: int
    classes: tuple[SegmentedClassRecord, ...]

    @classmethod
    def of(cls, found: SegmentationFindings) -> SegmentationRecord:
        classes = tuple(
            SegmentedClassRecord(
                c.score,
                c.pixels,
                tuple(found.frames[i] for i in c.frames),
                c.uncertainty_mean,
                c.uncertainty_max,
            )
            for c in found.classes
        )
        return cls(found.frames, found.samples, classes)


@dataclass(frozen=True)
class QualityRecord:
    """The key-frame model's verdict on the cine."""

    flag: Quality
    reasons: tuple[PoorReason, ...]
    best_frame: int
    probability: float
    """The keep probability of ``best_frame``."""
    frame_scores: tuple[float, ...]

    @classmethod
    def of(cls, found: KeyFrameFindings) -> QualityRecord:
        return cls(
            found.quality,
            found.reasons,
            found.best_frame,
            round(found.frame_scores[found.best_frame - 1], 4),
            tuple(round(p, 4) for p in found.frame_scores),
        )


@dataclass(frozen=True)
class KeyFrameRecord:
    frame: int
    reason: KeyFrameReason


@dataclass(frozen=True)
class OutputRecord:
    kind: str
    sop_instance_uid: str
    path: str
    """The file name, in the cine's results folder."""


@dataclass(frozen=True)
class FailedOutputRecord:
    """A result object that could not be made for this source (the others were)."""

    kind: str
    reason: str


@dataclass(frozen=True)
class CineRecord:
    """Everything the node found in one cine and what it made of it.

    ``parts`` holds each family's part under its JSON key (``b_lines``, ``quality``, ...); a
    family that did not run has none. In JSON the parts sit beside ``source`` and the rest.
    """

    source: SourceRecord
    parts: Mapping[str, object]
    key_frames: tuple[KeyFrameRecord, ...]
    outputs: tuple[OutputRecord, ...]
    models: Mapping[str, str]
    """Family name -> bundle version of every model that ran."""
    timings_ms: Mapping[str, float]
    """Milliseconds of each stage: ``read``, ``decode``, each family that ran by its name, and
    ``encode`` (the result objects made and written)."""
    outputs_failed: tuple[FailedOutputRecord, ...] = ()
    """Result objects that could not be made for this source, with the reason."""

    def part(self, key: str, kind: type[_T]) -> _T | None:
        """The part under ``key`` if the family ran, checked to be a ``kind``."""
        value = self.parts.get(key)
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"record part {key!r} is {type(value).__name__}, not {kind.__name__}")
        return value

    @property
    def b_lines(self) -> BLinesRecord | None:
        return self.part("b_lines", BLinesRecord)

    @property
    def consolidation(self) -> ConsolidationRecord | None:
        return self.part("consolidation", ConsolidationRecord)

    @property
    def severity(self) -> SeverityRecord | None:
        return self.part("severity", SeverityRecord)

    @property
    def segmentation(self) -> SegmentationRecord | None:
        return self.part("segmentation", SegmentationRecord)

    @property
    def quality(self) -> QualityRecord | None:
        return self.part("quality", QualityRecord)

    @property
    def assessment(self) -> AssessmentRecord | None:
        return self.part("assessment", AssessmentRecord)

    @property
    def assessable(self) -> bool:
        """False only when an assessment ran and found the cine not assessable."""
        return self.assessment is None or self.assessment.assessable

    def to_json(self, timings: bool = True) -> dict[str, Any]:
        """The JSON form; without ``timings`` (which differ run to run), no ``timings_ms``."""
        out: dict[str, Any] = {"source": to_json(self.source)}
        out.update({key: to_json(part) for key, part in self.parts.items()})
        out["key_frames"] = to_json(self.key_frames)
        out["outputs"] = to_json(self.outputs)
        out["models"] = dict(self.models)
        if self.outputs_failed:
            out["outputs_failed"] = to_json(self.outputs_failed)
        if timings:
            out["timings_ms"] = dict(self.timings_ms)
        return out

    def dumps(self, timings: bool = True) -> str:
        """The record as one line of ``summary.jsonl``."""
        return json.dumps(self.to_json(timings), sort_keys=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], part_types: Mapping[str, type]) -> CineRecord:
        """The record from its JSON form; ``part_types`` maps each family's JSON key to its
        part's type (:meth:`lus_pacs.families.registry.Registry.record_types`).

        Raises
        ------
        ValueError
            A key is missing or of the wrong kind, or the record holds a part no family
            reads.
        """
        own = {f.name for f in fields(cls)} - {"parts"}
        unknown = set(data) - own - set(part_types)
        if unknown:
            raise ValueError(f"record of {data.get('source')}: no family reads {sorted(unknown)}")
        plain = {k: v for k, v in data.items() if k in own}
        base = from_json(_CineRecordJson, plain)
        parts: dict[str, object] = {
            k: from_json(t, data[k]) for k, t in part_types.items() if k in data
        }
        timings = base.timings_ms or {}
        return cls(
            base.source,
            parts,
            base.key_frames,
            base.outputs,
            base.models,
            timings,
            base.outputs_failed or (),
        )

    @classmethod
    def loads(cls, text: str, part_types: Mapping[str, type]) -> CineRecord:
        return cls.from_json(json.loads(text), part_types)


@dataclass(frozen=True)
class _CineRecordJson:
    """The keys of a record besides the families' parts, for the reader."""

    source: SourceRecord
    key_frames: tuple[KeyFrameRecord, ...]
    outputs: tuple[OutputRecord, ...]
    models: Mapping[str, str]
    timings_ms: Mapping[str, float] | None = field(default=None, metadata=OMIT_NONE)
    outputs_failed: tuple[FailedOutputRecord, ...] | None = field(default=None, metadata=OMIT_NONE)


def source_record(
    source: SourceRef, frames: int, fps: float | None, damaged: Mapping[int, str] | None = None
) -> SourceRecord:
    return SourceRecord(
        source.sop_instance_uid,
        source.series_instance_uid,
        source.study_instance_uid,
        source.patient_id,
        source.zone,
        frames,
        fps,
        tuple(DamagedFrameRecord(f, r) for f, r in sorted(damaged.items())) if damaged else None,
    )


@dataclass(frozen=True)
class LusScore:
    per_zone: Mapping[str, int]
    """The highest clip score among each scored zone's cines: its usable ones, when it has
    any (:func:`_zone_score`)."""
    total: int
    zones_scanned: int
    zones_scored: int
    maximum: int
    """3 per scored zone."""


UNKNOWN_ZONE = "?"
"""The zone of the cines whose zone the headers do not give."""


@dataclass(frozen=True)
class StudySummary:
    """A study's summary from its cines' records.

    Cines without a zone are listed as zone "?", which has no LUS score (its cines may be of
    several zones, or repeat a scored one). A model that did not run leaves its keys out
    (``b_lines_assessed`` says whether the B-line zones are known). With the key-frame model,
    ``quality_zones`` lists the zones it assessed and ``poor_zones`` those of them none of whose
    assessed cines is usable: to scan again.
    """

    study_instance_uid: str
    cines: int
    zones: tuple[str, ...]
    zone_cines: Mapping[str, tuple[str, ...]]
    b_lines_assessed: bool
    b_line_zones: tuple[str, ...]
    models: Mapping[str, str]
    consolidation_zones: tuple[str, ...] | None = field(default=None, metadata=OMIT_NONE)
    quality_zones: tuple[str, ...] | None = field(default=None, metadata=OMIT_NONE)
    poor_zones: tuple[str, ...] | None = field(default=None, metadata=OMIT_NONE)
    lus_score: LusScore | None = field(default=None, metadata=OMIT_NONE)
    not_assessable: Mapping[str, tuple[NotAssessableReason, ...]] | None = field(
        default=None, metadata=OMIT_NONE
    )
    """SOP Instance UID -> reasons, for every cine the lung models did not read."""
    not_assessable_zones: tuple[str, ...] | None = field(default=None, metadata=OMIT_NONE)
    """Zones none of whose cines the lung models read: left out of the LUS score."""
    failed_cines: Mapping[str, str] | None = field(default=None, metadata=OMIT_NONE)
    """SOP Instance UID -> reason, for every cine of the study that could not be processed
    (unreadable, damaged): in no zone and no score. Absent when none failed."""

    def read(self, zone: str) -> bool:
        """Whether the lung models read one of ``zone``'s cines at least: a zone none of
        whose cines is assessable has no B-line or consolidation finding, present or absent."""
        return zone not in (self.not_assessable_zones or ())

    def dumps(self) -> str:
        """The summary as one line of ``studies.jsonl``."""
        return json.dumps(to_json(self), sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> StudySummary:
        return from_json(cls, json.loads(text))

    @classmethod
    def of(
        cls, study: str, records: Sequence[CineRecord], failed: Mapping[str, str] | None = None
    ) -> StudySummary:
        """Zones scanned and the cines of each, B-line zones, consolidation zones, zones to
        scan again, and the LUS score per zone (the highest clip score among the zone's cines)
        with its total over the scored zones; ``failed``, the cines of the study that could
        not be processed and why (an exam is never scored on part of its cines unsaid)."""
        grouped: dict[str, list[CineRecord]] = {}
        for record in records:
            grouped.setdefault(record.source.zone or UNKNOWN_ZONE, []).append(record)
        zones = dict(sorted(grouped.items()))
        models: dict[str, str] = {}
        for record in records:
            models.update(record.models)
        consolidation = None
        if any(r.consolidation is not None for r in records):
            consolidation = tuple(
                z for z, rs in zones.items() if any(_present(r.consolidation) for r in rs)
            )
        assessed = {
            z: [r.quality.flag for r in rs if r.quality is not None] for z, rs in zones.items()
        }
        quality_zones = poor_zones = None
        if any(assessed.values()):
            quality_zones = tuple(z for z, flags in assessed.items() if flags)
            poor_zones = tuple(
                z
                for z, flags in assessed.items()
                if flags and all(f is Quality.POOR for f in flags)
            )
        scores = {  # cines of no known zone ("?") are listed, but scored in no zone
            z: _zone_score(rs)
            for z, rs in zones.items()
            if z != UNKNOWN_ZONE and any(r.severity is not None for r in rs)
        }
        not_assessable = None
        not_assessable_zones = None
        if any(r.assessment is not None for r in records):
            not_assessable = {
                r.source.sop_instance_uid: r.assessment.reasons
                for r in records
                if r.assessment is not None and not r.assessment.assessable
            }
            not_assessable_zones = tuple(
                z for z, rs in zones.items() if not any(r.assessable for r in rs)
            )
        lus_score = None
        if scores:
            lus_score = LusScore(
                per_zone=scores,
                total=sum(scores.values()),
                zones_scanned=len([z for z in zones if z != UNKNOWN_ZONE]),
                zones_scored=len(scores),
                maximum=3 * len(scores),
            )
        return cls(
            study_instance_uid=study,
            cines=len(records),
            zones=tuple(zones),
            zone_cines={z: tuple(r.source.sop_instance_uid for r in rs) for z, rs in zones.items()},
            b_lines_assessed=any(r.b_lines is not None for r in records),
            b_line_zones=tuple(
                z for z, rs in zones.items() if any(_present(r.b_lines) for r in rs)
            ),
            models=dict(sorted(models.items())),
            consolidation_zones=consolidation,
            quality_zones=quality_zones,
            poor_zones=poor_zones,
            lus_score=lus_score,
            not_assessable=not_assessable,
            not_assessable_zones=not_assessable_zones,
            failed_cines=dict(sorted(failed.items())) if failed else None,
        )


def _zone_score(records: Sequence[CineRecord]) -> int:
    """A zone's score: the highest clip score of its cines the key-frame model did not call
    poor, or of all its scored cines when each is poor (or none was judged). A rib-shadowed
    or off-contact cine scoring 3 beside a usable one scoring 1 set the zone's 3."""
    scored = [r for r in records if r.severity is not None]
    usable = [r for r in scored if r.quality is None or r.quality.flag is not Quality.POOR]
    return max(r.severity.score for r in usable or scored if r.severity is not None)


def _present(part: BLinesRecord | ConsolidationRecord | None) -> bool:
    return part is not None and part.present
