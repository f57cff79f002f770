"""Severity-score segmentation (paper 003): pixel masks of scores 0-3 by a U-Net / U-Net++ /
DeepLabv3+ ensemble, with Monte-Carlo dropout uncertainty, on the frames the other families
chose."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lus_pacs.domain import SegmentationFindings
from lus_pacs.families.family import Family, Found, Runner
from lus_pacs.records import SegmentationRecord

if TYPE_CHECKING:
    from lus_pacs.settings import Settings


def _load(folder: Path, settings: Settings) -> Runner:
    import numpy as np

    from lus_pacs.domain import Cine
    from lus_pacs.families.segmentation.inference import SegmentationModel, frames_to_segment

    chosen = settings.segmentation
    model = SegmentationModel.load(folder, chosen.mc_samples, settings.runtime)

    def predict(cine: Cine, found: Found) -> SegmentationFindings:
        key = [k.frame for k in found.key_frames]
        frames = frames_to_segment(chosen.frames, cine.n_frames, key, chosen.every)
        # Damaged frames are never segmented; the intact frame nearest the middle stands in
        # when every chosen one is damaged.
        intact = cine.intact()
        whole = tuple(f for f in frames if intact[f - 1])
        if not whole and intact.any():
            middle = (cine.n_frames - 1) / 2
            whole = (int(min(np.flatnonzero(intact), key=lambda i: abs(i - middle))) + 1,)
        return model.predict(cine, whole or frames)

    # The frames segmented and the dropout passes change its objects: part of the identity.
    frames = f"every-{chosen.every}" if chosen.frames == "every" else chosen.frames
    return Runner(model.model.version, predict, f"{frames},mc{model.samples}")


FAMILY = Family(
    name="segmentation",
    load=_load,
    findings=SegmentationFindings,
    record=SegmentationRecord.of,
    record_type=SegmentationRecord,
    needs=("b_lines", "severity", "key_frames"),
    commands="lus_pacs.families.segmentation.commands",
    lung_finding=True,
)
