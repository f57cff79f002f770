"""Write the key-frame bundle: the classifier's state dict, the inference config (thresholds)
and MONAI metadata with the held-out scores."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lus_pacs.families.key_frames.network import INPUT_SIZE, OUTPUTS, KeyFrameNet
from lus_pacs.training.bundle_files import (
    INTENDED_USE,
    finite,
    versions_and_authors,
    write_json,
    write_weights_and_config,
)

BUNDLE_VERSION = "0.2.0"
CHANGELOG = {
    "0.2.0": "real POCUS clips of the training publishers join as usable frames (weak labels)",
    "0.1.0": "first version: simulated exams with poor zones",
}
PAPER_004 = (
    "Müller N., Eccel F., Robert A. Selecting high-value frames from lung ultrasound videos "
    "(paper 004 of this project's seeds)."
)


def write_key_frames_bundle(
    out_dir: Path,
    model: KeyFrameNet,
    held_out: Mapping[str, float],
    training: dict[str, Any],
    threshold: float = 0.5,
    reason_threshold: float = 0.5,
) -> None:
    """Write ``models/model.pt`` and ``configs/*.json`` into ``out_dir``; leave ``docs/``."""
    write_weights_and_config(
        out_dir, model, {"threshold": threshold, "reason_threshold": reason_threshold}
    )
    metadata = {
        **versions_and_authors(),
        "version": BUNDLE_VERSION,
        "changelog": CHANGELOG,
        "name": "Key frames and cine quality, ResNet-18 (paper 004)",
        "task": "Per frame: would a clinician keep it, and if not, why (contact, rib, pleura)",
        "description": (
            "A quarter-width ResNet-18 (lus_pacs.families.key_frames.network) trained from "
            "scratch on simulated frames labelled by the simulator's truth and real POCUS frames "
            "taken as usable. Research use only; not a medical device; trained largely on "
            "simulated data."
        ),
        "data_source": "Simulated lung-ultrasound exams (`lus-pacs synth --poor-share`) and, as "
        "usable frames, public POCUS clips; see docs/README.md",
        "data_type": "dicom",
        "image_classes": f"single channel: one frame's tissue region, overlay black, fitted "
        f"into 256 x 256, centre crop {INPUT_SIZE} x {INPUT_SIZE}, [0, 1]",
        "label_classes": ", ".join(o.value for o in OUTPUTS),
        "pred_classes": "one logit per label (apply a sigmoid)",
        "eval_metrics": finite(dict(held_out)),
        "intended_use": INTENDED_USE,
        "references": [PAPER_004],
        "training": training,
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "US",
                    "num_channels": 1,
                    "spatial_shape": [INPUT_SIZE, INPUT_SIZE],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "B-mode luminance of one frame"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(OUTPUTS),
                    "spatial_shape": [len(OUTPUTS)],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(i): o.value for i, o in enumerate(OUTPUTS)},
                }
            },
        },
    }
    write_json(out_dir / "configs" / "metadata.json", metadata)
