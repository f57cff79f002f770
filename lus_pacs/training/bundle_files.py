"""Helpers shared by the bundle writers of every model family."""

from __future__ import annotations

import json
import math
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch

from lus_pacs import __version__


def finite(doc: Any) -> Any:
    """``doc`` with every NaN replaced by None, recursively (JSON has no NaN)."""
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite(v) for v in doc]
    if isinstance(doc, float) and math.isnan(doc):
        return None
    return doc


def save_weights(network: torch.nn.Module, out_dir: Path) -> None:
    """``models/model.pt`` (the state dict) and its SHA-256 beside it, which loading checks."""
    from lus_pacs.inference.bundle import CHECKSUM, WEIGHTS, weights_digest

    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), out_dir / WEIGHTS)
    (out_dir / CHECKSUM).write_text(f"{weights_digest(out_dir / WEIGHTS)}  model.pt\n")


def write_weights_and_config(
    out_dir: Path, network: torch.nn.Module, config: dict[str, Any]
) -> None:
    """``models/model.pt`` (the state dict) and ``configs/inference.json`` (``network_def``
    pointing at the network's class, then ``config``) into ``out_dir``."""
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    save_weights(network, out_dir)
    target = f"{type(network).__module__}.{type(network).__qualname__}"
    write_json(
        out_dir / "configs" / "inference.json",
        {"imports": [], "network_def": {"_target_": target}, **config},
    )


def write_bundle(
    out_dir: Path,
    network: torch.nn.Module,
    inference: dict[str, Any],
    metadata: dict[str, Any],
) -> None:
    """A whole bundle into ``out_dir``: ``models/model.pt`` (the state dict) and
    ``configs/inference.json`` and ``configs/metadata.json`` as given."""
    (out_dir / "models").mkdir(parents=True, exist_ok=True)
    (out_dir / "configs").mkdir(parents=True, exist_ok=True)
    save_weights(network, out_dir)
    write_json(out_dir / "configs" / "inference.json", inference)
    write_json(out_dir / "configs" / "metadata.json", metadata)


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` indented, with a final newline (the bundles are read by people too)."""
    path.write_text(json.dumps(doc, indent=4) + "\n")


def versions_and_authors() -> dict[str, Any]:
    """The MONAI metadata keys every bundle shares: schema, software versions, authorship."""
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {
            "lus-pacs": __version__,
            "pydicom": package_version("pydicom"),
        },
        "authors": "lus-pacs contributors",
        "copyright": "Copyright (c) lus-pacs contributors",
    }


INTENDED_USE = "Research only. Not a medical device; not validated on real patients."
PAPER_003 = (
    "Roy S. et al. Deep learning for classification and localization of COVID-19 "
    "markers in point-of-care lung ultrasound. IEEE TMI 39(8), 2020."
)


def paper_003_frame_input() -> dict[str, Any]:
    """MONAI ``network_data_format`` of paper 003's input: one frame fitted into 200 x 260."""
    return {
        "image": {
            "type": "image",
            "format": "magnitude",
            "modality": "US",
            "num_channels": 1,
            "spatial_shape": [200, 260],
            "dtype": "float32",
            "value_range": [-1, 1],
            "is_patch_data": False,
            "channel_def": {"0": "B-mode luminance of one frame, zero padded (-1)"},
        }
    }


def grey_clip_input(spatial_shape: list[Any], description: str) -> dict[str, Any]:
    """MONAI ``network_data_format`` of a grey clip (frames x rows x columns) in [0, 1]."""
    return {
        "image": {
            "type": "image",
            "format": "magnitude",
            "modality": "US",
            "num_channels": 1,
            "spatial_shape": spatial_shape,
            "dtype": "float32",
            "value_range": [0, 1],
            "is_patch_data": False,
            "channel_def": {"0": description},
        }
    }


def logit_output(description: str) -> dict[str, Any]:
    """MONAI ``network_data_format`` of one clip-level logit."""
    return {
        "type": "probabilities",
        "format": "classes",
        "num_channels": 1,
        "spatial_shape": [1],
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": False,
        "channel_def": {"0": description},
    }
