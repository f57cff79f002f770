"""Consolidation (paper 002): a 3D encoder pre-trained by contrastive self-supervision on
unlabelled cines, fine-tuned to classify; saliency boxes where it looked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lus_pacs.domain import ConsolidationFindings
from lus_pacs.families.family import Family, Runner
from lus_pacs.records import ConsolidationRecord

if TYPE_CHECKING:
    from lus_pacs.settings import Settings


def _load(folder: Path, settings: Settings) -> Runner:
    from lus_pacs.families.calibration import site_calibration
    from lus_pacs.families.consolidation.inference import ConsolidationModel

    chosen = settings.consolidation
    model = ConsolidationModel.load(folder, chosen.saliency_frames, chosen.saliency)
    calibration = site_calibration(settings.calibration)
    if calibration is not None:
        offset = calibration.offset(FAMILY.name, model.model.version)
        if offset is not None:
            model = model.calibrated(offset, calibration.version(FAMILY.name, model.model.version))
    # The saliency frames and method change the SR's boxes: part of the result identity.
    identity = f"s{model.saliency_frames}" + ("" if chosen.saliency == "gradient" else ",occlusion")
    return Runner(model.model.version, lambda cine, _: model.predict(cine), identity)


FAMILY = Family(
    name="consolidation",
    load=_load,
    findings=ConsolidationFindings,
    record=ConsolidationRecord.of,
    record_type=ConsolidationRecord,
    commands="lus_pacs.families.consolidation.commands",
    lung_finding=True,
    temporal=True,
)
