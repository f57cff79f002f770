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
    from lus_pacs.families.calibration import site_offset
    from lus_pacs.families.consolidation.inference import ConsolidationModel

    chosen = settings.consolidation
    model = ConsolidationModel.load(folder, chosen.saliency_frames, chosen.saliency)
    site = site_offset(FAMILY.name, model.model.version, settings.calibration)
    if site is not None:
        model = model.calibrated(*site)
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
