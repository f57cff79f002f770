"""Frame and clip severity scores (paper 003): a regularised spatial transformer scores each
frame 0-3 with a soft ordinal loss; a learned uninorm aggregates the frames into the clip's
score."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lus_pacs.domain import KeyFrame, KeyFrameReason, SeverityFindings
from lus_pacs.families.family import Family, Runner
from lus_pacs.records import SeverityRecord

if TYPE_CHECKING:
    from lus_pacs.settings import Settings


def _load(folder: Path, settings: Settings) -> Runner:
    from lus_pacs.families.calibration import site_offset
    from lus_pacs.families.severity.inference import SeverityModel

    model = SeverityModel.load(folder, settings.runtime)
    site = site_offset(FAMILY.name, model.model.version, settings.calibration)
    if site is not None:
        model.calibrate(*site)
    return Runner(model.model.version, lambda cine, _: model.predict(cine))


def _key_frames(found: SeverityFindings) -> tuple[KeyFrame, ...]:
    if found.score > 0:
        return (KeyFrame(found.top_frame, KeyFrameReason.SEVERITY),)
    return ()


FAMILY = Family(
    name="severity",
    load=_load,
    findings=SeverityFindings,
    record=SeverityRecord.of,
    record_type=SeverityRecord,
    key_frames=_key_frames,
    commands="lus_pacs.families.severity.commands",
    lung_finding=True,
    temporal=True,
)
