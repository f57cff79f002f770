"""Write the segmentation bundle: one state dict of :class:`SegmentationEnsemble` (the three
networks), the inference config naming its members and the Monte-Carlo dropout default, and
MONAI metadata with the validation Table IV."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lus_pacs.families.segmentation.network import CLASSES, SegmentationEnsemble
from lus_pacs.training.bundle_files import (
    INTENDED_USE,
    PAPER_003,
    finite,
    paper_003_frame_input,
    save_weights,
    versions_and_authors,
    write_json,
)

BUNDLE_VERSION = "0.1.0"
CLASS_NAMES = ("score 0", "score 1", "score 2", "score 3", "background")


def write_segmentation_bundle(
    out_dir: Path,
    ensemble: SegmentationEnsemble,
    validation: Mapping[str, Mapping[str, float]],
    training: dict[str, Any],
    mc_samples: int,
) -> None:
    """Write ``models/model.pt`` and ``configs/*.json`` into ``out_dir``; leave ``docs/``."""
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    save_weights(ensemble, out_dir)
    members = list(ensemble.members)
    inference = {
        "imports": [],
        "network_def": {
            "_target_": "lus_pacs.families.segmentation.network.SegmentationEnsemble",
            "members": members,
        },
        "mc_samples": mc_samples,
    }
    write_json(out_dir / "configs" / "inference.json", inference)
    metadata = {
        **versions_and_authors(),
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "first version, trained on simulated exams only"},
        "name": "Lung-ultrasound score masks, U-Net / U-Net++ / DeepLabv3+ ensemble (paper 003)",
        "task": "Pixel labels of ICLUS scores 0-3 and background in lung-ultrasound frames, "
        "with Monte-Carlo dropout uncertainty",
        "description": (
            f"Ensemble of {', '.join(members)} (lus_pacs.families.segmentation.network) on "
            "frames fitted into 200 x 260 and scaled to [-1, 1]; the unweighted mean of their "
            "softmax gives each pixel's class, Monte-Carlo dropout on their deepest features its "
            "uncertainty. "
            "Research use only; not a medical device."
        ),
        "data_source": (
            "Simulated lung-ultrasound exams made with `lus-pacs synth` (no patient data); "
            "see docs/README.md"
        ),
        "data_type": "dicom",
        "image_classes": "single channel: one frame's tissue fitted into 200 x 260, [-1, 1]",
        "label_classes": "per pixel: score 0 (pleura, A-lines), 1, 2, 3, background",
        "pred_classes": "per pixel: probabilities of " + ", ".join(CLASS_NAMES),
        "eval_metrics": finite(
            {f"{name}_{k}": v for name, row in validation.items() for k, v in row.items()}
        ),
        "intended_use": INTENDED_USE,
        "references": [PAPER_003],
        "training": training,
        "network_data_format": {
            "inputs": paper_003_frame_input(),
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "segmentation",
                    "num_channels": CLASSES,
                    "spatial_shape": [200, 260],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(k): name for k, name in enumerate(CLASS_NAMES)},
                }
            },
        },
    }
    write_json(out_dir / "configs" / "metadata.json", metadata)
