"""``lus-pacs fit severity``: the shipped severity bundle's clip score, fitted on real clips.

The recipe of :mod:`lus_pacs.families.severity.measured` (B-line and consolidation heads on the
lung measurements, an ordinal head on their logits, all stratified by source) is fitted on the
trainable real clips (:data:`~lus_pacs.training.real.TRAINABLE`) and written beside the given
bundle's paper-003 network, whose weights are kept as they are; no evaluation-only clip is read.
The ordinal head's cuts are then moved to the operating point
(:func:`~lus_pacs.families.severity.measured.operating_shift`): on sources the recipe was not
fitted on, it scores :data:`~lus_pacs.families.severity.measured.OPERATING_SHARE` of the severe
clips severe. A new device's level is unknown, and a severe lung scored mild costs more than a
mild one scored severe; a site that scores its own cines sets its level with ``lus-pacs
calibrate`` (fitted against these cuts, it replaces the operating point).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lus_pacs.errors import ModelError
from lus_pacs.families.measurements import ORDINAL_L2, MeasurementHead, OrdinalHead
from lus_pacs.families.severity.measured import (
    FINDINGS,
    OPERATING_SHARE,
    SEVERE,
    MeasuredSeverity,
    fit_recipe,
    operating_shift,
)
from lus_pacs.families.severity.network import SeverityNet
from lus_pacs.inference.bundle import load_bundle
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION
from lus_pacs.training.bundle_files import write_bundle
from lus_pacs.training.real import TRAINABLE, measure, real_clips

VERSION = "0.3.0"
CHANGE = (
    "the recipe's cuts moved to the operating point at which, on sources it was not fitted on, "
    "it scores 80 % of the clips of score 2 or 3 at 2 or more (0.2.0: scores balanced on the "
    "training sources, which scored the severe clips of a handheld scanner mostly 1); weights "
    "unchanged"
)


def fit_real_severity(network: Path, data_root: Path, cache_dir: Path, out: Path) -> dict[str, Any]:
    """Fit the recipe on the trainable clips under ``data_root`` and write the combined bundle
    into ``out`` (which may be ``network`` itself); returns what the metadata records of the fit.

    Raises
    ------
    ModelError
        ``network`` is not a severity bundle.
    ValueError
        A finding's labelled clips hold one class only, or the scored clips one score.
    """
    bundle = load_bundle(network, (SeverityNet, MeasuredSeverity))
    config = dict(bundle.config)
    scorer = bundle.network
    scorer_def = config["network_def"]
    if isinstance(scorer, MeasuredSeverity):
        scorer, scorer_def = scorer.scorer, scorer_def["scorer"]
    if not isinstance(scorer, SeverityNet):
        raise ModelError(f"{network}: no paper-003 network to score frames with.")

    clips = [c for c in real_clips(data_root) if c.dataset == TRAINABLE]
    measured = measure(clips, data_root, cache_dir)
    groups = [c.group for c in measured.clips]
    b_lines = [c.clip.b_lines for c in measured.clips]
    consolidation = [c.clip.consolidations for c in measured.clips]
    severity = [c.severity for c in measured.clips]
    recipe = fit_recipe(measured.features, groups, b_lines, consolidation, severity)
    fitted_cuts = [round(float(c), 4) for c in recipe.ordinal.cuts]
    shift = operating_shift(measured.features, groups, b_lines, consolidation, severity)
    with torch.no_grad():
        recipe.ordinal.cuts.sub_(shift)
    combined = MeasuredSeverity(scorer, recipe.b_lines, recipe.consolidation, recipe.ordinal)

    def counted(labels: list[bool | None], what: str) -> str:
        known = [v for v in labels if v is not None]
        return f"{len(known)} clips with {what} ({sum(known)} positive)"

    scores = [v for v in severity if v is not None]
    fit = {
        "data": f"{TRAINABLE}: {counted(b_lines, 'a B-line label')}, "
        f"{counted(consolidation, 'a consolidation label')}, {len(scores)} clips with a "
        f"severity score (scores 0-3: {', '.join(str(scores.count(k)) for k in range(4))}), "
        f"{len(set(groups))} sources",
        "sources": sorted(set(groups)),
        "refused": [name for name, _ in measured.refused],
        "measurements": f"lus_pacs.inference.lung_features version {FEATURE_VERSION}",
        "fit": "a logistic head per finding (classes balanced) and a cumulative-logit head on "
        "their logits (scores balanced), each stratified by source (an offset per source), "
        "then the intercept or cuts refitted with the weights fixed; the cuts then moved to the "
        "operating point",
        "ordinal_l2": ORDINAL_L2,
        "ordinal_weights": [round(float(w), 4) for w in recipe.ordinal.weight],
        "ordinal_cuts": [round(float(c), 4) for c in recipe.ordinal.cuts],
        "operating_point": {
            "severe_from_score": SEVERE,
            "severe_scored_severe_leave_source_out": OPERATING_SHARE,
            "eta_shift": round(shift, 6),
            "fitted_cuts": fitted_cuts,
            "rule": "eta_shift subtracted from the cuts: the smallest shift at which the recipes "
            "fitted without each source score this share of its severe clips severe (pooled "
            "over sources)",
        },
    }
    metadata = dict(bundle.metadata)
    metadata["version"] = VERSION
    metadata["changelog"] = {VERSION: CHANGE, **metadata.get("changelog", {})}
    metadata["name"] = (
        "Lung-ultrasound severity score 0-3: measurement recipe (real clips) + paper 003's network"
    )
    metadata["description"] = (
        "Clip score 0-3 and its probabilities from a cumulative-logit head on two logistic "
        "heads (B-lines, consolidation) over lung-ultrasound measurements "
        "(lus_pacs.inference.lung_features), all fitted on real clips stratified by source; "
        "frame scores, the top frame and its box from paper 003's Reg-STN frame scorer. "
        "Research use only; not a medical device."
    )
    metadata["data_source"] = (
        "Recipe: the trainable real POCUS clips (see docs/README.md); frame scorer: simulated "
        "lung-ultrasound exams made with `lus-pacs synth` (no patient data)"
    )
    metadata["training"] = {**metadata.get("training", {}), "real_recipe": fit}
    config["feature_version"] = FEATURE_VERSION
    head = {
        "_target_": f"{MeasurementHead.__module__}.{MeasurementHead.__name__}",
        "n_features": len(CLIP_FEATURES),
    }
    config["network_def"] = {
        "_target_": f"{MeasuredSeverity.__module__}.{MeasuredSeverity.__name__}",
        "scorer": scorer_def,
        "b_lines": head,
        "consolidation": head,
        "ordinal": {
            "_target_": f"{OrdinalHead.__module__}.{OrdinalHead.__name__}",
            "n_inputs": len(FINDINGS),
        },
    }
    write_bundle(out, combined, config, metadata)
    return fit
