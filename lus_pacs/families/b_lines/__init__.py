"""B-lines (paper 001): CNN + bidirectional LSTM + temporal attention over 1-second windows;
clip-level presence, the B-line frames and a representative key frame."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lus_pacs.domain import BLineFindings, KeyFrame, KeyFrameReason
from lus_pacs.families.family import Family, Runner
from lus_pacs.records import BLinesRecord

if TYPE_CHECKING:
    from lus_pacs.settings import Settings


def _load(folder: Path, settings: Settings) -> Runner:
    from lus_pacs.families.b_lines.inference import BLineModel
    from lus_pacs.families.calibration import site_offset

    model = BLineModel.load(folder)
    site = site_offset(FAMILY.name, model.model.version, settings.calibration)
    if site is not None:
        model.calibrate(*site)
    return Runner(model.model.version, lambda cine, _: model.predict(cine, settings.default_fps))


def _key_frames(found: BLineFindings) -> tuple[KeyFrame, ...]:
    if found.present and found.key_frame is not None:
        return (KeyFrame(found.key_frame, KeyFrameReason.B_LINES),)
    if found.frame_scores:
        # Every cine gets a frame to review: the model's own choice, labelled as such.
        most = max(range(len(found.frame_scores)), key=found.frame_scores.__getitem__)
        return (KeyFrame(most + 1, KeyFrameReason.ATTENTION),)
    return ()


FAMILY = Family(
    name="b_lines",
    load=_load,
    findings=BLineFindings,
    record=BLinesRecord.of,
    record_type=BLinesRecord,
    key_frames=_key_frames,
    commands="lus_pacs.families.b_lines.commands",
    lung_finding=True,
    temporal=True,
)
