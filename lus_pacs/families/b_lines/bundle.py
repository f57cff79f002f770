"""Write the B-line bundle: the network's state dict, the inference config naming its class and
thresholds, and MONAI metadata with the validation metrics and the training recipe."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lus_pacs.families.b_lines.evaluate import ATTENTION_THRESHOLD, THRESHOLD
from lus_pacs.training.bundle_files import (
    INTENDED_USE,
    finite,
    grey_clip_input,
    logit_output,
    save_weights,
    versions_and_authors,
    write_json,
)

BUNDLE_VERSION = "0.2.0"
CHANGELOG = {
    "0.2.0": "trained on simulated exams and the public POCUS clips (clip labels)",
    "0.1.0": "first version, trained on simulated exams only",
}
TITLES = {
    "c2d_lstm_att": "CNN + bidirectional LSTM + temporal attention",
    "c2d_att": "CNN + temporal attention (baseline C2D+A)",
    "c3d_att": "3D CNN + temporal attention (baseline C3D+A)",
    "c2d_lstm": "CNN + bidirectional LSTM, no attention (baseline C2D+LSTM)",
}


def write_b_lines_bundle(
    out_dir: Path,
    network: nn.Module,
    network_args: Mapping[str, Any],
    metrics: dict[str, float],
    training: dict[str, Any],
    data: dict[str, Any],
) -> None:
    """Write ``models/model.pt`` and ``configs/*.json`` into ``out_dir``; leave ``docs/``.

    Parameters
    ----------
    network, network_args:
        The trained network and the constructor arguments that build it again.
    metrics:
        Validation metrics, the metadata's ``eval_metrics``.
    training, data:
        The recipe (``arch`` first) and the data sources and counts: the metadata's
        ``training``, ``data`` within it.
    """
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    save_weights(network, out_dir)
    inference = {
        "imports": [],
        "network_def": {
            "_target_": f"lus_pacs.families.b_lines.network.{type(network).__name__}",
            **network_args,
        },
        "threshold": THRESHOLD,
        "attention_threshold": ATTENTION_THRESHOLD,
    }
    write_json(out_dir / "configs" / "inference.json", inference)
    write_json(out_dir / "configs" / "metadata.json", _metadata(metrics, data, training))


def _metadata(
    metrics: dict[str, float], data: dict[str, Any], training: dict[str, Any]
) -> dict[str, Any]:
    sources = ["simulated lung-ultrasound exams made with `lus-pacs synth` (no patient data)"]
    if data.get("via"):
        sources.append(f"the site's VIA-annotated cines ({', '.join(data['via'])})")
    if data.get("pocus"):
        sources.append("the public POCUS lung-ultrasound clips (clip-level B-line labels)")
    return {
        **versions_and_authors(),
        "version": BUNDLE_VERSION,
        "changelog": CHANGELOG,
        "name": f"B-line detection, {TITLES[training['arch']]} (paper 001)",
        "task": "B-line detection and temporal localisation in lung-ultrasound cine loops",
        "description": (
            f"{TITLES[training['arch']]} (lus_pacs.families.b_lines.network, paper 001's Table 1), "
            "applied to 1-second windows of the tissue region "
            "resized to 64x64. Gives the probability that a window shows B-lines and the "
            "attention of each frame. Research use only; not a medical device."
        ),
        "data_source": "; ".join(sources) + "; see docs/README.md",
        "data_type": "dicom",
        "image_classes": (
            "single channel: the tissue region of 1 second of frames, resized to 64x64, "
            "intensity scaled to [0, 1]"
        ),
        "label_classes": "one value per window: 1 when any frame of the window shows a B-line",
        "pred_classes": (
            "logit: sigmoid gives the probability of B-lines in the window; attention: weight "
            "of each frame, summing to 1 over the window"
        ),
        "eval_metrics": finite(metrics),
        "intended_use": INTENDED_USE,
        "references": [
            "Kerdegari H. et al. Automatic detection of B-lines in lung ultrasound videos from "
            "severe dengue patients. IEEE ISBI 2021."
        ],
        "training": {**training, "data": data},
        "network_data_format": {
            "inputs": grey_clip_input(
                ["T", 64, 64], "B-mode luminance; T frames = 1 second of the cine"
            ),
            "outputs": {
                "logit": logit_output("B-lines present (logit; apply a sigmoid)"),
                "attention": {
                    "type": "series",
                    "format": "sequence",
                    "num_channels": 1,
                    "spatial_shape": ["T"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {"0": "temporal attention of each frame, sums to 1"},
                },
            },
        },
    }
