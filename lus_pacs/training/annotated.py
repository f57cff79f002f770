"""A site's own cines with the papers' annotations, as training data.

B-lines (paper 001): a VIA 3 video project names each clip's file and the time segments that
show B-lines. Severity (paper 003): a CSV of ``file, frame, score`` rows
(:func:`lus_pacs.training.annotations.read_frame_scores`).

Each VIA entry (:func:`lus_pacs.training.annotations.read_via`) becomes an :class:`AnnotatedCine`:
the DICOM cine, the patient it belongs to (its PatientID, so that folds keep patients whole)
and its B-line frames. Anything that implements :class:`BLineCine` trains and validates the
B-line networks the same way; :class:`lus_pacs.training.simulated.SimulatedCine` does too.
Likewise each file of a frame-score CSV becomes a :class:`ScoredCine`, which trains the severity
models as a :class:`SeverityCine`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from lus_pacs.domain import Cine
from lus_pacs.errors import AnnotationError
from lus_pacs.imaging.decode import read_cine
from lus_pacs.settings import DEFAULT_ZONE_RULES, ZoneRule
from lus_pacs.training.annotations import read_frame_scores, read_via


class BLineCine(Protocol):
    """What B-line training needs of a cine: its pixels, its patient and its B-line frames."""

    @property
    def dicom(self) -> Path: ...

    @property
    def patient_id(self) -> str: ...

    @property
    def zone(self) -> str: ...

    @property
    def fps(self) -> float: ...

    @property
    def n_frames(self) -> int: ...

    @property
    def b_line_frames(self) -> tuple[int, ...]:
        """1-based frames that show B-lines."""
        ...

    def load(self, zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES) -> Cine: ...


@dataclass(frozen=True)
class AnnotatedCine:
    """One cine of a VIA project."""

    dicom: Path
    patient_id: str
    zone: str
    """The file's name without suffix (the zone is not part of the annotation)."""
    fps: float
    n_frames: int
    b_line_frames: tuple[int, ...]

    def load(self, zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES) -> Cine:
        return read_cine(self.dicom, zone_rules=zone_rules)


def read_via_cines(project: Path, root: Path | None = None) -> list[AnnotatedCine]:
    """Every clip of the VIA ``project``, its file name taken relative to ``root`` (default: the
    project's folder) joined with the project's ``loc_prefix`` when that is a relative folder.

    Raises
    ------
    AnnotationError
        The project is not VIA JSON, a file it names is missing or not DICOM, or a B-line frame
        lies outside the cine.
    """
    folder = _prefix(project, project.parent if root is None else root)
    cines = []
    for clip in read_via(project):
        dicom = folder / clip.file
        try:
            header = pydicom.dcmread(dicom, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise AnnotationError(f"{project}: clip {clip.file}: {exc}") from exc
        n_frames = int(header.get("NumberOfFrames", 1) or 1)
        outside = [f for f in clip.b_line_frames if not 1 <= f <= n_frames]
        if outside:
            raise AnnotationError(
                f"{project}: clip {clip.file} has {n_frames} frames but B-line frames "
                f"{outside[:5]} are annotated"
            )
        cines.append(
            AnnotatedCine(
                dicom=dicom,
                patient_id=str(header.get("PatientID", "")) or clip.file,
                zone=Path(clip.file).stem,
                fps=clip.fps,
                n_frames=n_frames,
                b_line_frames=clip.b_line_frames,
            )
        )
    return cines


def _prefix(project: Path, root: Path) -> Path:
    try:
        prefix = json.loads(project.read_text())["config"]["file"]["loc_prefix"]["1"]
    except (OSError, ValueError, KeyError, TypeError):
        prefix = ""
    return root / prefix if prefix and (root / prefix).is_dir() else root


class ScoredFrame(Protocol):
    @property
    def frame(self) -> int:
        """1-based."""
        ...

    @property
    def severity(self) -> int | None:
        """Score 0-3; None when unknown (probe off the skin, or not scored)."""
        ...


class SeverityCine(Protocol):
    """What severity training needs of a cine: pixels, patient and a score per frame."""

    @property
    def dicom(self) -> Path: ...

    @property
    def truth(self) -> Path:
        """Where the labels came from, for messages."""
        ...

    @property
    def patient_id(self) -> str: ...

    @property
    def zone(self) -> str: ...

    @property
    def severity(self) -> int | None:
        """The clip's score: the highest frame score."""
        ...

    @property
    def frames(self) -> Sequence[ScoredFrame]:
        """One entry per frame of the cine, in order."""
        ...

    def load(self, zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES) -> Cine: ...


@dataclass(frozen=True)
class FrameScoreLabel:
    frame: int
    severity: int | None


@dataclass(frozen=True)
class ScoredCine:
    """One cine of a frame-score CSV; frames the CSV does not list have no score."""

    dicom: Path
    truth: Path
    patient_id: str
    zone: str
    frames: tuple[FrameScoreLabel, ...]

    @property
    def severity(self) -> int | None:
        scores = [f.severity for f in self.frames if f.severity is not None]
        return max(scores) if scores else None

    def load(self, zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES) -> Cine:
        return read_cine(self.dicom, zone_rules=zone_rules)


def read_frame_score_cines(table: Path, root: Path | None = None) -> list[ScoredCine]:
    """The cines of a frame-score CSV, in the order of their first row; file names are taken
    relative to ``root`` (default: the CSV's folder).

    Raises
    ------
    AnnotationError
        The CSV is malformed, a file it names is missing or not DICOM, or a frame number lies
        outside its cine.
    """
    base = table.parent if root is None else root
    by_file: dict[str, dict[int, int]] = {}
    for row in read_frame_scores(table):
        by_file.setdefault(row.file, {})[row.frame] = row.score
    cines = []
    for name, scores in by_file.items():
        dicom = base / name
        try:
            header = pydicom.dcmread(dicom, stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise AnnotationError(f"{table}: cine {name}: {exc}") from exc
        n_frames = int(header.get("NumberOfFrames", 1) or 1)
        outside = sorted(f for f in scores if f > n_frames)
        if outside:
            raise AnnotationError(
                f"{table}: cine {name} has {n_frames} frames but frames {outside[:5]} are scored"
            )
        cines.append(
            ScoredCine(
                dicom=dicom,
                truth=table,
                patient_id=str(header.get("PatientID", "")) or name,
                zone=Path(name).stem,
                frames=tuple(FrameScoreLabel(f, scores.get(f)) for f in range(1, n_frames + 1)),
            )
        )
    return cines
