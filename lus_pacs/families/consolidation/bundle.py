"""Write the consolidation bundle: the classifier's state dict, the inference config (threshold,
saliency frames) and MONAI metadata with the held-out scores."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lus_pacs.families.consolidation.network import CLIP_FRAMES, CLIP_SIZE, ConsolidationClassifier
from lus_pacs.training.bundle_files import (
    INTENDED_USE,
    finite,
    grey_clip_input,
    logit_output,
    versions_and_authors,
    write_json,
    write_weights_and_config,
)

BUNDLE_VERSION = "0.2.0"
CHANGELOG = {
    "0.2.0": "trained on scenes with consolidation independent of B-lines; Gaussian occlusion",
    "0.1.0": "first version: simulated exams (and POCUS clips)",
}
PAPER_002 = (
    "Chen L. et al. Contrastive self-supervised learning for spatio-temporal analysis of lung "
    "ultrasound videos. IEEE ISBI 2022."
)


def write_consolidation_bundle(
    out_dir: Path,
    model: ConsolidationClassifier,
    held_out: Mapping[str, Mapping[str, float]],
    training: dict[str, Any],
    threshold: float = 0.5,
    saliency_frames: int = 2,
) -> None:
    """Write ``models/model.pt`` and ``configs/*.json`` into ``out_dir``; leave ``docs/``."""
    write_weights_and_config(
        out_dir, model, {"threshold": threshold, "saliency_frames": saliency_frames}
    )
    metadata = {
        **versions_and_authors(),
        "version": BUNDLE_VERSION,
        "changelog": CHANGELOG,
        "name": "Lung consolidation, 3D Darknet with BYOL pre-training (paper 002)",
        "task": "Clip-level presence of lung consolidation, with occlusion-saliency boxes",
        "description": (
            "A 3D Darknet encoder (lus_pacs.families.consolidation.network) pre-trained by BYOL on "
            "unlabeled cines with the paper's spatio-temporal augmentations, fine-tuned with a "
            "linear head. Research use only; not a medical device."
        ),
        "data_source": "Simulated lung-ultrasound exams (`lus-pacs synth "
        "--decouple-consolidation`) and public POCUS clips; see docs/README.md",
        "data_type": "dicom",
        "image_classes": f"single channel: {CLIP_FRAMES} frames of the tissue region at "
        f"{CLIP_SIZE} x {CLIP_SIZE}, [0, 1]",
        "label_classes": "consolidation present (1) or absent (0)",
        "pred_classes": "logit of consolidation present",
        "eval_metrics": finite(
            {f"{name}_{k}": v for name, row in held_out.items() for k, v in row.items()}
        ),
        "intended_use": INTENDED_USE,
        "references": [PAPER_002],
        "training": training,
        "network_data_format": {
            "inputs": grey_clip_input(
                [CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE], "B-mode luminance over time"
            ),
            "outputs": {"pred": logit_output("consolidation present (logit; apply a sigmoid)")},
        },
    }
    write_json(out_dir / "configs" / "metadata.json", metadata)
