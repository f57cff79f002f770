"""``lus-pacs fit b-lines``: the shipped B-line bundle's clip decision, fitted on real clips.

Paper 001's network trained on simulated cines and a few real ones ranks real clips from other
devices near chance, while a logistic head on the lung measurements
(:mod:`lus_pacs.inference.lung_features`), fitted stratified by source
(:func:`~lus_pacs.families.measurements.fit_head` with ``groups``), carries to other devices
(see the model card). :func:`fit_real_head` fits that head on the trainable real clips' B-line
labels, moves its intercept to the operating point :data:`OPERATING_SENSITIVITY` and writes
a bundle whose network is :class:`~lus_pacs.families.b_lines.network.MeasuredBLines`: the head
says whether, the given bundle's network says where. The network's weights are kept as they
are; no clip outside the trainable set (:data:`~lus_pacs.training.real.TRAINABLE`) is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lus_pacs.errors import ModelError
from lus_pacs.families.b_lines.network import ARCHITECTURES, MeasuredBLines
from lus_pacs.families.measurements import (
    HEAD_L2,
    MeasurementHead,
    fit_head,
    operating_shift,
)
from lus_pacs.inference.bundle import load_bundle
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION
from lus_pacs.training.bundle_files import write_bundle
from lus_pacs.training.real import TRAINABLE, measure, real_clips

VERSION = "0.4.0"
CHANGE = (
    "the head's intercept moved to the operating point at which, on sources it was not fitted "
    "on, it finds 80 % of the B-line clips (0.3.0: classes balanced on the training sources, "
    "which called 2 of 13 B-line clips of a handheld scanner present); weights unchanged"
)
OPERATING_SENSITIVITY = 0.80
"""Share of B-line clips the shipped head finds on sources it was not fitted on (leave-source-
out on the trainable clips): its intercept is moved to that operating point
(:func:`~lus_pacs.families.measurements.operating_shift`). A new device's level is unknown and
a missed B-line cine costs more than one a reader dismisses; a site that labels its own cines
sets its level with ``lus-pacs calibrate`` (classes balanced at the site)."""


def fit_real_head(
    localiser: Path, data_root: Path, cache_dir: Path, out: Path, l2: float = HEAD_L2
) -> dict[str, Any]:
    """Fit the head on the trainable clips under ``data_root`` and write the combined bundle
    into ``out`` (which may be ``localiser`` itself); returns what the metadata records of the fit.

    Raises
    ------
    ModelError
        ``localiser`` is not a B-line bundle.
    ValueError
        The trainable clips hold one class only.
    """
    bundle = load_bundle(localiser, (*ARCHITECTURES.values(), MeasuredBLines))
    config = dict(bundle.config)
    network = bundle.network
    localiser_def = config["network_def"]
    if isinstance(network, MeasuredBLines):
        network, localiser_def = network.localiser, localiser_def["localiser"]
    if not isinstance(network, tuple(ARCHITECTURES.values())):
        raise ModelError(f"{localiser}: no paper-001 network to localise with.")

    clips = [c for c in real_clips(data_root) if c.dataset == TRAINABLE]
    measured = measure(clips, data_root, cache_dir)
    chosen = [i for i, c in enumerate(measured.clips) if c.clip.b_lines is not None]
    labels = np.array([bool(measured.clips[i].clip.b_lines) for i in chosen])
    groups = [measured.clips[i].group for i in chosen]
    head = fit_head(measured.features[chosen], labels, l2, groups=groups)
    shift = operating_shift(measured.features[chosen], labels, groups, OPERATING_SENSITIVITY, l2)
    with torch.no_grad():
        head.linear.bias.add_(shift)
    combined = MeasuredBLines(network, head)

    fit = {
        "data": f"{TRAINABLE}: {len(chosen)} clips with a B-line label, {int(labels.sum())} "
        f"positive, {len(set(groups))} sources",
        "sources": sorted(set(groups)),
        "refused": [name for name, _ in measured.refused],
        "measurements": f"lus_pacs.inference.lung_features version {FEATURE_VERSION}",
        "fit": "logistic, classes balanced, stratified by source (an intercept per source), "
        "then one balanced intercept with the weights fixed, moved to the operating point",
        "l2": l2,
        "operating_point": {
            "sensitivity_leave_source_out": OPERATING_SENSITIVITY,
            "logit_shift": round(shift, 6),
            "rule": "intercept moved by the smallest shift at which the heads fitted without "
            "each source find this share of its B-line clips (pooled over sources)",
        },
    }
    metadata = dict(bundle.metadata)
    metadata["version"] = VERSION
    metadata["changelog"] = {VERSION: CHANGE, **metadata.get("changelog", {})}
    metadata["name"] = "B-line detection: measurement head (real clips) + paper 001's network"
    metadata["description"] = (
        "Clip probability of B-lines from a logistic head on lung-ultrasound measurements "
        "(lus_pacs.inference.lung_features), fitted on real clips stratified by source; the "
        "B-line frames and key frame from paper 001's CNN + bidirectional LSTM + temporal "
        "attention over 1-second windows. Research use only; not a medical device."
    )
    metadata["training"] = {**metadata.get("training", {}), "real_head": fit}
    config["feature_version"] = FEATURE_VERSION
    config["network_def"] = {
        "_target_": f"{MeasuredBLines.__module__}.{MeasuredBLines.__name__}",
        "localiser": localiser_def,
        "head": {
            "_target_": f"{MeasurementHead.__module__}.{MeasurementHead.__name__}",
            "n_features": len(CLIP_FEATURES),
        },
    }
    write_bundle(out, combined, config, metadata)
    return fit
