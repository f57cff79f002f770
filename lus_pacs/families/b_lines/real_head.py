"""``lus-pacs fit b-lines``: the shipped B-line bundle's clip decision, fitted on real clips.

Paper 001's network trained on simulated cines and a few real ones ranks real clips from other
devices near chance, while a logistic head on the lung measurements
(:mod:`lus_pacs.inference.lung_features`), fitted stratified by source
(:func:`~lus_pacs.families.measurements.fit_head` with ``groups``), carries to other devices
(see the model card). :func:`fit_real_head` fits that head on the trainable real clips' B-line
labels and writes a bundle whose network is
:class:`~lus_pacs.families.b_lines.network.MeasuredBLines`: the head says whether, the given
bundle's network says where. The network's weights are kept as they are; no clip outside the
trainable set (:data:`~lus_pacs.training.real.TRAINABLE`) is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lus_pacs.errors import ModelError
from lus_pacs.families.b_lines.network import ARCHITECTURES, MeasuredBLines
from lus_pacs.families.measurements import HEAD_L2, MeasurementHead, fit_head
from lus_pacs.inference.bundle import load_bundle
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION
from lus_pacs.training.bundle_files import write_bundle
from lus_pacs.training.real import TRAINABLE, measure, real_clips

VERSION = "0.3.0"
CHANGE = (
    "clip probability from a measurement head fitted on the real POCUS clips, stratified by "
    "source; paper 001's network (0.2.0's weights) gives the B-line frames and the key frame"
)


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
    combined = MeasuredBLines(network, head)

    fit = {
        "data": f"{TRAINABLE}: {len(chosen)} clips with a B-line label, {int(labels.sum())} "
        f"positive, {len(set(groups))} sources",
        "sources": sorted(set(groups)),
        "refused": [name for name, _ in measured.refused],
        "measurements": f"lus_pacs.inference.lung_features version {FEATURE_VERSION}",
        "fit": "logistic, classes balanced, stratified by source (an intercept per source), "
        "then one balanced intercept with the weights fixed",
        "l2": l2,
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
