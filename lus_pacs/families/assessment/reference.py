"""``lus-pacs fit assessment``: the lung measurements of the clips the heads were fitted on, as
the assessment's reference for "out of range".

The B-line and severity heads read a cine's 32 clip measurements
(:data:`~lus_pacs.inference.lung_features.CLIP_FEATURES`) standardised by those of the real
trainable clips. A cine whose measurements lie far outside them (a sector drawn in a strip at
the bottom of its frame: one measurement 357 standard deviations out, read as a certain
"no B-lines, score 0") is a cine the heads never saw: the assessment calls it not assessable.
The reference is the mean and standard deviation of each measurement over the trainable clips
(:data:`~lus_pacs.training.real.TRAINABLE`); no evaluation-only clip is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lus_pacs.inference.bundle import INFERENCE
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION
from lus_pacs.training.bundle_files import write_json
from lus_pacs.training.real import TRAINABLE, measure, real_clips


def fit_reference(data_root: Path, cache_dir: Path, bundle: Path) -> dict[str, Any]:
    """Measure the trainable clips and write their reference into ``bundle``'s
    ``configs/inference.json`` (its other settings kept); what was written."""
    clips = [c for c in real_clips(data_root) if c.dataset == TRAINABLE]
    measured = measure(clips, data_root, cache_dir)
    features = measured.features.astype(np.float64)
    reference = {
        "feature_version": FEATURE_VERSION,
        "clips": len(features),
        "features": list(CLIP_FEATURES),
        "mean": [round(float(v), 6) for v in features.mean(axis=0)],
        "std": [round(float(v), 6) for v in features.std(axis=0)],
    }
    path = bundle / INFERENCE
    config = json.loads(path.read_text())
    config["measurement_reference"] = reference
    write_json(path, config)
    return reference
