"""Key frames and cine quality (paper 004): the frame a clinician would keep, and whether the
cine holds one at all (with the reasons when it does not)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lus_pacs.domain import KeyFrame, KeyFrameFindings, KeyFrameReason
from lus_pacs.families.family import Family, Runner
from lus_pacs.records import QualityRecord

if TYPE_CHECKING:
    from lus_pacs.settings import Settings


def _load(folder: Path, settings: Settings) -> Runner:
    from lus_pacs.families.key_frames.inference import KeyFrameModel

    model = KeyFrameModel.load(folder, settings.runtime)
    return Runner(model.model.version, lambda cine, _: model.predict(cine))


def _key_frames(found: KeyFrameFindings) -> tuple[KeyFrame, ...]:
    # The frame a clinician would keep comes first, even in a poor cine (flagged as such).
    return (KeyFrame(found.best_frame, KeyFrameReason.BEST),)


FAMILY = Family(
    name="key_frames",
    load=_load,
    findings=KeyFrameFindings,
    record=QualityRecord.of,
    record_type=QualityRecord,
    record_key="quality",
    key_frames=_key_frames,
    commands="lus_pacs.families.key_frames.commands",
)
