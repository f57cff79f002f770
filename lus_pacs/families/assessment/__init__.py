"""Assessment: whether the lung models may read a cine at all. A still image, a view that is
not lung ultrasound (a cardiac sector) or a cine without a frame a clinician would read gets no
B-line, consolidation, severity or segmentation finding: "not assessable", with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lus_pacs.domain import AssessmentFindings
from lus_pacs.families.family import Family, Found, Runner
from lus_pacs.records import AssessmentRecord

if TYPE_CHECKING:
    from lus_pacs.domain import Cine
    from lus_pacs.settings import Settings


def _load(folder: Path, settings: Settings) -> Runner:
    from lus_pacs.families.assessment.inference import Assessor

    assessor = Assessor.load(folder)

    def predict(cine: Cine, found: Found) -> AssessmentFindings:
        return assessor.assess(cine, found.by_family.get("key_frames"))

    return Runner(assessor.model.version, predict)


FAMILY = Family(
    name="assessment",
    load=_load,
    findings=AssessmentFindings,
    record=AssessmentRecord.of,
    record_type=AssessmentRecord,
    needs=("key_frames",),
    gate=True,
    commands="lus_pacs.families.assessment.commands",
)
