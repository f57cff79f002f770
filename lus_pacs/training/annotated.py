"""A site's own cines with paper 001's VIA annotations, as B-line training data.

A VIA 3 video project (:func:`lus_pacs.training.annotations.read_via`) names each clip's file
and the time segments that show B-lines. Here each entry becomes an :class:`AnnotatedCine`:
the DICOM cine, the patient it belongs to (its PatientID, so that folds keep patients whole)
and its B-line frames. Anything that implements :class:`BLineCine` trains and validates the
B-line networks the same way; :class:`lus_pacs.training.simulated.SimulatedCine` does too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
from pydicom.errors import InvalidDicomError

from lus_pacs.domain import Cine
from lus_pacs.errors import AnnotationError
from lus_pacs.imaging.decode import read_cine
from lus_pacs.settings import DEFAULT_ZONE_RULES, ZoneRule
from lus_pacs.training.annotations import read_via


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
