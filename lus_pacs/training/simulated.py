"""Simulated exams (``lus-pacs synth``) as training and validation data.

Each cine is a DICOM file read the way the node reads scanner data, plus its ground truth from
the sidecar JSON. Split by :attr:`SimulatedCine.patient_id`, never by frame or cine: the zones
of one patient share the patient's disease state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from lus_pacs.domain import Cine
from lus_pacs.errors import AnnotationError
from lus_pacs.imaging.decode import read_cine
from lus_pacs.settings import DEFAULT_ZONE_RULES, ZoneRule
from lus_pacs.synth.exam import TRUTH_SCHEMA

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) image pixels, ends exclusive."""


@dataclass(frozen=True)
class FrameLabels:
    """The truth of one frame; ``frame`` is 1-based."""

    frame: int
    b_line_count: int
    severity: int | None
    """ICLUS score 0-3 of what is visible; None when the probe is off the skin."""
    high_value: bool
    consolidation_boxes: tuple[Box, ...]
    contact: bool = True
    """The probe's face (90 % of it) is on the skin."""
    pleura_visible_fraction: float = 1.0
    """Share of the beams that see the pleura (not lifted off, not under a rib)."""
    rib_shadow_over_pleura: bool = False
    """A rib shadow covers the centre of the pleura."""


@dataclass(frozen=True)
class SimulatedCine:
    """One simulated cine and its truth."""

    dicom: Path
    truth: Path
    patient_id: str
    zone: str
    probe: str
    fps: float
    severity: int | None
    """Clip score: the highest frame score."""
    b_lines: bool
    consolidation: bool
    effusion: bool
    best_frame: int
    frames: tuple[FrameLabels, ...]
    mask_file: Path

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def b_line_frames(self) -> tuple[int, ...]:
        return tuple(f.frame for f in self.frames if f.b_line_count > 0)

    def load(self, zone_rules: Iterable[ZoneRule] = DEFAULT_ZONE_RULES) -> Cine:
        """The cine as the node decodes it."""
        return read_cine(self.dicom, zone_rules=zone_rules)

    def masks(self) -> npt.NDArray[np.uint8]:
        """Class masks (frames, rows, columns): scores 0..3, background 4."""
        with np.load(self.mask_file) as data:
            return np.asarray(data["masks"], np.uint8)


def find_simulated(root: Path) -> list[SimulatedCine]:
    """Every simulated cine under ``root`` (``<root>/<patient>/<zone>.truth.json``), sorted.

    Raises
    ------
    AnnotationError
        A sidecar is not JSON, has another schema, or its DICOM file is missing.
    """
    return [_read(path) for path in sorted(root.glob("*/*.truth.json"))]


def _read(path: Path) -> SimulatedCine:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AnnotationError(f"{path}: not a readable truth JSON ({exc})") from exc
    if doc.get("schema") != TRUTH_SCHEMA:
        raise AnnotationError(
            f"{path}: schema {doc.get('schema')!r} is not {TRUTH_SCHEMA!r}; "
            "write the set again with this version's `lus-pacs synth`"
        )
    dicom = path.with_name(doc["file"])
    if not dicom.is_file():
        raise AnnotationError(f"{path}: its cine {dicom.name} is missing")
    clip = doc["clip"]
    return SimulatedCine(
        dicom=dicom,
        truth=path,
        patient_id=doc["patient_id"],
        zone=doc["zone"],
        probe=doc["probe"],
        fps=float(doc["fps"]),
        severity=clip["severity"],
        b_lines=bool(clip["b_lines"]),
        consolidation=bool(clip["consolidation"]),
        effusion=bool(clip["effusion"]),
        best_frame=int(doc["best_frame"]),
        frames=tuple(
            FrameLabels(
                frame=int(f["frame"]),
                b_line_count=int(f["b_line_count"]),
                severity=f["severity"],
                high_value=bool(f["high_value"]),
                consolidation_boxes=tuple(tuple(b) for b in f["consolidation_boxes"]),
                contact=bool(f["contact"]),
                pleura_visible_fraction=float(f["pleura_visible_fraction"]),
                rib_shadow_over_pleura=bool(f["rib_shadow_over_pleura"]),
            )
            for f in doc["frames"]
        ),
        mask_file=path.with_name(doc["mask_file"]),
    )
