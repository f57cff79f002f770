"""Write the severity bundle: one state dict of :class:`SeverityNet` (frame scorer + uninorm),
the inference config naming it, and MONAI metadata with the measured metrics."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from lus_pacs.families.severity.aggregation import UninormAggregator
from lus_pacs.families.severity.network import SeverityNet
from lus_pacs.training.bundle_files import (
    INTENDED_USE,
    PAPER_003,
    finite,
    paper_003_frame_input,
    save_weights,
    versions_and_authors,
    write_json,
)

if TYPE_CHECKING:
    from lus_pacs.families.severity.train import AggregatorStudy

BUNDLE_VERSION = "0.1.0"
TITLES = {
    "cnn_ce": "CNN, cross entropy",
    "cnn_sord": "CNN, SORD",
    "stn_sord": "STN + CNN, SORD",
    "cnn_random_crop_sord": "CNN + random crop, SORD",
    "reg_stn_sord": "Reg-STN + CNN, SORD",
}


def write_severity_bundle(
    out_dir: Path,
    variant: str,
    scorer: nn.Module,
    uninorm: UninormAggregator,
    frame: dict[str, float],
    study: AggregatorStudy,
    training: dict[str, Any],
) -> None:
    """Write ``models/model.pt`` and ``configs/*.json`` into ``out_dir``; leave ``docs/``."""
    network = SeverityNet(variant)
    network.scorer.load_state_dict(scorer.state_dict())
    network.aggregator.load_state_dict(uninorm.state_dict())
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    save_weights(network, out_dir)
    inference = {
        "imports": [],
        "network_def": {
            "_target_": "lus_pacs.families.severity.network.SeverityNet",
            "variant": variant,
        },
    }
    write_json(out_dir / "configs" / "inference.json", inference)
    metrics = {
        **{f"frame_{k}": v for k, v in frame.items()},
        **{f"clip_{name}_{k}": v for name, values in study.mean.items() for k, v in values.items()},
        **{
            f"clip_{name}_{k}_std": v
            for name, values in study.std.items()
            for k, v in values.items()
        },
    }
    neutral = [round(float(e), 4) for e in uninorm.neutral_elements.detach()]
    metadata = {
        **versions_and_authors(),
        "version": BUNDLE_VERSION,
        "changelog": {BUNDLE_VERSION: "first version, trained on simulated exams only"},
        "name": f"Lung-ultrasound severity score 0-3, {TITLES[variant]} + uninorm (paper 003)",
        "task": "ICLUS severity score of every frame and of the clip, in lung-ultrasound cines",
        "description": (
            f"{TITLES[variant]} frame scorer (lus_pacs.families.severity.network) on frames fitted "
            "into 200 x 260 and scaled to [-1, 1], giving the probability of scores 0-3 per frame; "
            "a learned min-uninorm layer (product t-norm and t-conorm, one neutral element per "
            "score) aggregates the frames into the clip's score probabilities. Research use "
            "only; not a medical device."
        ),
        "data_source": (
            "Simulated lung-ultrasound exams made with `lus-pacs synth` (no patient data); "
            "see docs/README.md"
        ),
        "data_type": "dicom",
        "image_classes": "single channel: one frame's tissue fitted into 200 x 260, [-1, 1]",
        "label_classes": "ICLUS score 0, 1, 2 or 3 per frame; per clip the highest frame score",
        "pred_classes": "logits of scores 0-3 per frame; clip probabilities of scores 0-3",
        "eval_metrics": finite(metrics),
        "aggregators": finite(study.summary()),
        "neutral_elements": neutral,
        "intended_use": INTENDED_USE,
        "references": [PAPER_003],
        "training": training,
        "network_data_format": {
            "inputs": paper_003_frame_input(),
            "outputs": {
                "logits": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": 4,
                    "spatial_shape": [4],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {str(k): f"score {k} (logit)" for k in range(4)},
                }
            },
        },
    }
    write_json(out_dir / "configs" / "metadata.json", metadata)
