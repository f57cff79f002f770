"""Source cines for the encode tests: a simulated exam (zones known) and a real vendor cine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file

from lus_pacs.domain import (
    BLineFindings,
    Findings,
    KeyFrame,
    KeyFrameFindings,
    KeyFrameReason,
    ModelInfo,
    PoorReason,
    Quality,
    SourceRef,
)
from lus_pacs.imaging.metadata import lung_zone
from lus_pacs.synth.exam import SynthOptions, synthesize

MODEL = ModelInfo(name="b_lines", version="0.3.1", title="B-line attention (paper 001)")
B_LINE_FRAMES = (3, 4, 5, 6, 7)
B_LINE_KEY_FRAME = 5
KEY_FRAME_MODEL = ModelInfo(
    name="key_frames", version="0.2.0", title="ResNet-18 frame selection (paper 004)"
)
BEST_FRAME = 9


@dataclass(frozen=True)
class Source:
    """A cine on disk and its header, as the node would hold them."""

    path: Path
    header: Dataset

    @property
    def n_frames(self) -> int:
        return int(self.header.NumberOfFrames)

    def ref(self) -> SourceRef:
        h = self.header
        return SourceRef(
            sop_instance_uid=h.SOPInstanceUID,
            sop_class_uid=h.SOPClassUID,
            series_instance_uid=h.SeriesInstanceUID,
            study_instance_uid=h.StudyInstanceUID,
            patient_id=h.PatientID,
            zone=lung_zone(h),
            path=str(self.path),
        )

    def findings(
        self,
        *,
        b_lines: bool = True,
        present: bool = True,
        key_frames: tuple[KeyFrame, ...] = (),
        key_frame_model: KeyFrameFindings | None = None,
    ) -> Findings:
        found = None
        if b_lines:
            found = BLineFindings(
                present=present,
                probability=0.87 if present else 0.12,
                frames=B_LINE_FRAMES if present else (),
                key_frame=B_LINE_KEY_FRAME if present else None,
                frame_scores=tuple(1.0 / (1 + abs(i - 5)) for i in range(1, self.n_frames + 1)),
                model=MODEL,
            )
        by_family = {"b_lines": found, "key_frames": key_frame_model}
        return Findings(
            source=self.ref(),
            n_frames=self.n_frames,
            fps=30.0,
            key_frames=key_frames,
            by_family={k: v for k, v in by_family.items() if v is not None},
        )

    def key_frame_model(self, reasons: tuple[PoorReason, ...] | None = None) -> KeyFrameFindings:
        """The key-frame model's view of the cine: usable with frame :data:`BEST_FRAME` kept
        at p = 0.93, or, with ``reasons`` (even none), poor with that frame at p = 0.31."""
        peak = 0.93 if reasons is None else 0.31
        n = self.n_frames
        return KeyFrameFindings(
            best_frame=BEST_FRAME,
            frame_scores=tuple(peak * (1 - abs(i - BEST_FRAME) / n) for i in range(1, n + 1)),
            quality=Quality.USABLE if reasons is None else Quality.POOR,
            reasons=reasons or (),
            model=KEY_FRAME_MODEL,
        )


KEY_FRAMES = (
    KeyFrame(B_LINE_KEY_FRAME, KeyFrameReason.B_LINES),
    KeyFrame(9, KeyFrameReason.BEST),
    KeyFrame(B_LINE_KEY_FRAME, KeyFrameReason.SEVERITY),
)
"""Frame 5 is chosen twice: the KOS references it once, then frame 9."""
POOR_REASONS = (PoorReason.RIB_SHADOW, PoorReason.NO_CONTACT)
"""Strongest first, which is not the enum's order."""


def _source(path: Path) -> Source:
    return Source(path, pydicom.dcmread(path, stop_before_pixels=True))


@pytest.fixture(scope="session")
def synth_exam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated patient: six 12-frame zones, R1..R3 and L1..L3."""
    out = tmp_path_factory.mktemp("encode-synth")
    synthesize(out, SynthOptions(patients=1, seed=4, frames=12, zones=6))
    return out


@pytest.fixture(scope="session")
def right_cine(synth_exam: Path) -> Source:
    return _source(next(synth_exam.glob("*/R2.dcm")))


@pytest.fixture(scope="session")
def left_cine(synth_exam: Path) -> Source:
    return _source(next(synth_exam.glob("*/L1.dcm")))


@pytest.fixture(scope="session")
def vendor_cine() -> Source:
    """pydicom-data's 120-frame JPEG Baseline SonoSite cine: no zone, no BodyPartExamined."""
    path = get_testdata_file("color3d_jpeg_baseline.dcm")
    if path is None:
        pytest.skip("pydicom-data's color3d_jpeg_baseline.dcm is not installed")
    return _source(Path(path))


@pytest.fixture(params=["right_cine", "vendor_cine"])
def cine(request: pytest.FixtureRequest) -> Source:
    """Each kind of source: simulated with a zone, real without one."""
    source: Source = request.getfixturevalue(request.param)
    return source
