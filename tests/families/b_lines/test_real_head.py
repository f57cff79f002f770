"""``lus-pacs fit b-lines``: the head is fitted on the trainable clips' measurements, stratified by
source, and written beside the localiser's unchanged network."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lus_pacs.errors import ModelError
from lus_pacs.families.b_lines.inference import BLineModel
from lus_pacs.families.b_lines.network import MeasuredBLines
from lus_pacs.families.b_lines.real_head import OPERATING_SENSITIVITY, VERSION, fit_real_head
from lus_pacs.families.measurements import fit_head, operating_shift
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION
from lus_pacs.training.metrics import roc_auc
from tests.tools import measured_pocus

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "b_lines"
SIGNAL = CLIP_FEATURES.index("p90_streak_contrast")
LOOK = CLIP_FEATURES.index("mean_deep_brightness")


def _clips(rng: np.random.Generator, prevalence: dict[str, float], n: int) -> tuple:
    """Rows of labels.csv, clip names and measurements: within a site only ``SIGNAL`` tells
    B-lines; ``LOOK`` tells the sites apart, and the sites differ in prevalence."""
    rows, names, features = [], [], []
    for offset, (site, share) in enumerate(prevalence.items()):
        for i in range(n):
            positive = bool(rng.random() < share)
            file = f"videos/Cov-{site}-{i}.mp4"
            rows.append(
                f"{file},COVID-19,convex,{site},CC BY 4.0,20,200x200,{int(positive)},,,,,,,"
            )
            names.append(f"pocus/{file}")
            x = rng.normal(size=len(CLIP_FEATURES))
            x[SIGNAL] += 2.5 * positive
            x[LOOK] += 3.0 * offset
            features.append(x)
    return rows, names, np.array(features, np.float32)


def test_fit_writes_the_head_beside_the_unchanged_network(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    rows, names, features = _clips(rng, {"alpha": 0.9, "beta": 0.5, "gamma": 0.1}, 40)
    data, cache = measured_pocus(tmp_path, rows, names, features)
    localiser = tmp_path / "localiser"
    shutil.copytree(SHIPPED, localiser)
    out = tmp_path / "out"

    fit = fit_real_head(localiser, data, cache, out)

    model = BLineModel.load(out)
    assert isinstance(model.network, MeasuredBLines)
    assert model.model.version == VERSION
    before = BLineModel.load(localiser).network
    assert isinstance(before, MeasuredBLines)
    for key, value in before.localiser.state_dict().items():
        torch.testing.assert_close(model.network.localiser.state_dict()[key], value)
    weights = model.network.head.linear.weight[0].detach().numpy()
    assert int(np.argmax(np.abs(weights))) == SIGNAL
    assert abs(weights[LOOK]) < 0.25 * weights[SIGNAL]  # the sites' look is not learned
    new_rows, _, new = _clips(rng, {"delta": 0.5}, 200)
    labels = np.array([row.split(",")[7] == "1" for row in new_rows])
    assert roc_auc(model.network.head.probability(new), labels) > 0.85
    # The intercept sits at the operating point: the balanced fit's, moved by the shift that
    # finds OPERATING_SENSITIVITY of the positives of sources held out.
    labels_fitted = np.array([row.split(",")[7] == "1" for row in rows])
    sites = [row.split(",")[3] for row in rows]
    shift = operating_shift(features, labels_fitted, sites, OPERATING_SENSITIVITY)
    assert fit["operating_point"]["logit_shift"] == pytest.approx(shift, abs=1e-4)
    assert fit["operating_point"]["sensitivity_leave_source_out"] == OPERATING_SENSITIVITY
    balanced = fit_head(features, labels_fitted, groups=sites).linear.bias
    assert float(model.network.head.linear.bias.detach()[0]) == pytest.approx(
        float(balanced.detach()[0]) + shift, abs=1e-4
    )
    assert abs(shift) > 0.05  # the move is not nothing
    assert fit["sources"] == ["alpha", "beta", "gamma"]
    assert fit["data"].startswith("pocus: 120 clips with a B-line label")
    metadata = json.loads((out / "configs" / "metadata.json").read_text())
    assert metadata["training"]["real_head"] == fit
    assert VERSION in metadata["changelog"]


def test_a_head_of_other_measurements_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b_lines"
    shutil.copytree(SHIPPED, bundle)
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    assert config["feature_version"] == FEATURE_VERSION
    config["feature_version"] = FEATURE_VERSION + 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="fit it again with `lus-pacs fit b-lines`"):
        BLineModel.load(bundle)
