"""``lus-pacs fit severity``: the recipe (B-line and consolidation heads, an ordinal head on
their logits) is fitted on the trainable clips' measurements, stratified by source, and written
beside the network's unchanged frame scorer; the node's severity model then scores clips by it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lus_pacs.errors import ModelError
from lus_pacs.families.severity.inference import SeverityModel
from lus_pacs.families.severity.measured import (
    OPERATING_SHARE,
    MeasuredSeverity,
    operating_shift,
)
from lus_pacs.families.severity.real_head import VERSION, fit_real_severity
from lus_pacs.imaging.decode import read_cine
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION, cine_features
from lus_pacs.training.metrics import quadratic_kappa
from tests.tools import measured_pocus

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "severity"
B_LINES = CLIP_FEATURES.index("p90_streak_contrast")
CONSOLIDATION = CLIP_FEATURES.index("mean_subpleural_texture")
LOOK = CLIP_FEATURES.index("mean_deep_brightness")


def _clips(rng: np.random.Generator, sites: dict[str, float], n: int) -> tuple:
    """Rows of labels.csv, clip names, measurements and scores: a clip's score is 0 (neither
    finding), 1 (B-lines), 2 (consolidation) or 3 (both); within a site one measurement tells
    each finding; ``LOOK`` tells the sites apart, and the sites differ in how ill their
    patients are."""
    rows, names, features, scores = [], [], [], []
    for offset, (site, ill) in enumerate(sites.items()):
        for i in range(n):
            b_lines, consolidation = bool(rng.random() < ill), bool(rng.random() < ill * 0.7)
            score = int(b_lines) + 2 * int(consolidation)
            file = f"videos/Cov-{site}-{i}.mp4"
            rows.append(
                f"{file},COVID-19,convex,{site},CC BY 4.0,20,200x200,{int(b_lines)},"
                f"{int(consolidation)},,,,,,{score}"
            )
            names.append(f"pocus/{file}")
            x = rng.normal(size=len(CLIP_FEATURES))
            x[B_LINES] += 3.0 * b_lines
            x[CONSOLIDATION] += 3.0 * consolidation
            x[LOOK] += 3.0 * offset
            features.append(x)
            scores.append(score)
    return rows, names, np.array(features, np.float32), np.array(scores)


def test_fit_writes_the_recipe_beside_the_unchanged_frame_scorer(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    rows, names, features, scores = _clips(rng, {"alpha": 0.8, "beta": 0.5, "gamma": 0.2}, 60)
    data, cache = measured_pocus(tmp_path, rows, names, features)
    out = tmp_path / "out"

    fit = fit_real_severity(SHIPPED, data, cache, out)

    model = SeverityModel.load(out)
    assert isinstance(model.network, MeasuredSeverity)
    assert model.model.version == VERSION
    before = SeverityModel.load(SHIPPED).paper_network
    for key, value in before.state_dict().items():
        torch.testing.assert_close(model.network.scorer.state_dict()[key], value)
    for head, signal in (
        (model.network.b_lines, B_LINES),
        (model.network.consolidation, CONSOLIDATION),
    ):
        weights = head.linear.weight[0].detach().numpy()
        assert int(np.argmax(np.abs(weights))) == signal
        assert abs(weights[LOOK]) < 0.25 * weights[signal]  # the sites' look is not learned
    # A new site: the scores follow the findings.
    _, _, new, truth = _clips(rng, {"delta": 0.5}, 200)
    predicted, probabilities = model.network.clip_scores(new)
    assert quadratic_kappa(truth, predicted, 4) > 0.7
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert fit["sources"] == ["alpha", "beta", "gamma"]
    # The cuts sit at the operating point: the fitted ones moved down by the shift at which
    # recipes fitted without each site score 80 % of its severe clips severe.
    sites = [name.split("-")[1] for name in names]
    b_lines = [bool(s % 2) for s in scores]
    consolidation = [s >= 2 for s in scores]
    shift = operating_shift(features, sites, b_lines, consolidation, scores.tolist())
    assert abs(shift) > 0.01  # a point of its own, not the fitted cuts
    point = fit["operating_point"]
    assert point["severe_scored_severe_leave_source_out"] == OPERATING_SHARE
    assert point["eta_shift"] == pytest.approx(shift, abs=1e-6)
    cuts = model.network.ordinal.cuts.double().numpy()
    np.testing.assert_allclose(cuts, np.array(point["fitted_cuts"]) - shift, atol=1e-4)
    assert fit["data"].startswith("pocus: 180 clips with a B-line label")
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    assert metadata["training"]["real_recipe"] == fit
    assert VERSION in metadata["changelog"]
    # Fitting again over the measured bundle keeps the same frame scorer.
    fit_real_severity(out, data, cache, out)
    again = SeverityModel.load(out).network
    assert isinstance(again, MeasuredSeverity)
    for key, value in before.state_dict().items():
        torch.testing.assert_close(again.scorer.state_dict()[key], value)


def test_the_shipped_bundle_scores_a_cine_by_its_measurements(synth_exams: Path) -> None:
    model = SeverityModel.load(SHIPPED)
    assert isinstance(model.network, MeasuredSeverity)
    cine = read_cine(sorted(synth_exams.glob("*/*.dcm"))[0])
    found = model.predict(cine)
    score, probabilities = model.network.clip_scores(cine_features(cine)[1][None])
    assert found.score == int(score[0])
    assert found.probabilities == pytest.approx(tuple(probabilities[0]), abs=1e-4)
    assert len(found.frame_scores) == cine.n_frames
    assert found.clip_from_measurements
    # The key frame is the one the frame scorer finds most like the clip score reported (it
    # was the scorer's own highest: a key frame labelled 0 under a cine scored 3).
    frame_probabilities, _ = model.frame_outputs(cine)
    like = frame_probabilities[:, found.score].numpy()
    assert found.top_frame == int(np.argmax(like)) + 1


def test_a_recipe_of_other_measurements_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "severity"
    shutil.copytree(SHIPPED, bundle)
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    assert config["feature_version"] == FEATURE_VERSION
    config["feature_version"] = FEATURE_VERSION + 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="fit it again with `lus-pacs fit severity`"):
        SeverityModel.load(bundle)
