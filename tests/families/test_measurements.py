"""The measurement head: a balanced logistic fit that ships as a bundle network, and the B-line
model's measured path on a cine."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from lus_pacs.domain import Cine
from lus_pacs.families.b_lines.inference import BLineModel
from lus_pacs.families.measurements import (
    MeasurementHead,
    fit_head,
    fit_ordinal,
    held_out_logits,
    operating_shift,
)
from lus_pacs.imaging.decode import read_cine
from lus_pacs.inference.lung_features import CLIP_FEATURES, FEATURE_VERSION, cine_features
from lus_pacs.training.bundle_files import save_weights
from lus_pacs.training.metrics import roc_auc


def test_the_head_separates_what_one_measurement_separates() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = x[:, 2] + 0.3 * rng.normal(size=200) > 1.0  # rare positives (about 16 %)
    head = fit_head(x, y, l2=1.0)
    assert roc_auc(head.probability(x), y) > 0.95
    np.testing.assert_allclose(1 / (1 + np.exp(-head.logits(x))), head.probability(x), atol=1e-6)
    # Classes weigh equally: the decision at 0.5 is not pulled towards the majority.
    called = head.probability(x) >= 0.5
    assert called[y].mean() > 0.8
    assert (~called[~y]).mean() > 0.8
    with pytest.raises(ValueError, match="both classes"):
        fit_head(x, np.zeros(200, bool))


def test_a_measured_b_line_bundle_loads_and_scores_every_frame(tmp_path: Path) -> None:
    from tests.tools import run_cli

    args = ["--patients", "1", "--seed", "5", "--frames", "12", "--fps", "10", "--workers", "1"]
    run_cli("synth", "--out", str(tmp_path / "exam"), *args)
    cines = sorted((tmp_path / "exam").glob("*/*.dcm"))[:4]
    features = np.stack([cine_features(read_cine(p))[1] for p in cines])
    head = fit_head(features, np.array([True, False, True, False]), l2=10.0)
    bundle = tmp_path / "b_lines"
    (bundle / "configs").mkdir(parents=True)
    save_weights(head, bundle)  # with the checksum, as `lus-pacs fit` writes
    target = "lus_pacs.families.measurements.MeasurementHead"
    (bundle / "configs" / "inference.json").write_text(
        json.dumps(
            {
                "network_def": {"_target_": target, "n_features": len(CLIP_FEATURES)},
                "threshold": 0.0,
                "attention_threshold": 0.9,
                "feature_version": FEATURE_VERSION,
            }
        )
    )
    (bundle / "configs" / "metadata.json").write_text(
        json.dumps({"version": "9.9.9", "name": "test"})
    )
    model = BLineModel.load(bundle)
    assert isinstance(model.network, MeasurementHead)
    cine = read_cine(cines[0])
    found = model.predict(cine, 30.0)
    assert found.present  # threshold 0: every clip is positive
    assert len(found.frame_scores) == cine.n_frames
    assert max(found.frame_scores) == pytest.approx(1.0)
    assert found.key_frame in found.frames
    assert all(found.frame_scores[f - 1] >= 0.9 for f in found.frames)
    expected = head.probability(cine_features(cine)[1][None])[0]
    assert found.probability == pytest.approx(expected, abs=1e-6)
    # A damaged frame is no B-line frame and scores nothing.
    damaged = {f: "cut short" for f in range(1, cine.n_frames + 1, 2)}
    found = model.predict(dataclasses.replace(cine, damaged=damaged), 30.0)
    assert found.frames
    assert not set(found.frames) & set(damaged)
    assert all(found.frame_scores[f - 1] == 0 for f in damaged)


def test_a_stratified_fit_learns_within_sources_not_which_source() -> None:
    # Two sources: one looks brighter (column 0, which also varies within a source) and holds
    # most positives; within each source only column 1 tells positives from negatives.
    rng = np.random.default_rng(1)
    groups = np.repeat(["bright", "dark"], 150)
    y = rng.random(300) < np.where(groups == "bright", 0.8, 0.1)
    x = np.c_[2.0 * (groups == "bright") + rng.normal(size=300), y + 0.8 * rng.normal(size=300)]
    pooled = fit_head(x, y, l2=1.0)
    stratified = fit_head(x, y, l2=1.0, groups=list(groups))
    pooled_w, stratified_w = (h.linear.weight[0].detach().numpy() for h in (pooled, stratified))
    assert pooled_w[0] > 0.5 * pooled_w[1]  # the plain fit reads the source
    assert abs(stratified_w[0]) < 0.2 * stratified_w[1]
    # Two new sources, the same clips but for their look: the plain head calls the bright one
    # positive far more often; the stratified head calls both alike.
    within = rng.normal(size=500)
    looks = [np.c_[np.full(500, level), within] for level in (2.0, 0.0)]
    pooled_calls = [float((pooled.probability(v) >= 0.5).mean()) for v in looks]
    stratified_calls = [float((stratified.probability(v) >= 0.5).mean()) for v in looks]
    assert pooled_calls[0] - pooled_calls[1] > 0.25
    assert abs(stratified_calls[0] - stratified_calls[1]) < 0.15
    # The intercept balances the classes over all clips.
    called = stratified.probability(x) >= 0.5
    assert called[y].mean() > 0.6
    assert (~called[~y]).mean() > 0.6
    with pytest.raises(ValueError, match="groups"):
        fit_head(x, y, groups=["a"])


def _devices(
    rng: np.random.Generator, sources: int, clips: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clips of ``sources`` devices, each with its own level of the one telling measurement
    (column 0: a device's gain moves it for both classes); 40 % positive."""
    groups = np.repeat([f"device-{i}" for i in range(sources)], clips)
    level = np.repeat(rng.normal(0.0, 1.0, sources), clips)
    y = rng.random(len(groups)) < 0.4
    x = np.c_[1.5 * y + level + rng.normal(size=len(groups)), rng.normal(size=len(groups))]
    return x, y, [str(g) for g in groups]


def test_the_operating_shift_keeps_the_sensitivity_on_devices_never_seen() -> None:
    rng = np.random.default_rng(1)
    x, y, groups = _devices(rng, 12, 30)
    shift = operating_shift(x, y, groups, 0.8, l2=1.0)
    # On the held-out logits it is the smallest shift that finds 80 % of the positives.
    held = held_out_logits(x, y, groups, l2=1.0)[y]
    assert (held + shift >= 0).mean() >= 0.8
    assert (held + shift - 1e-6 >= 0).mean() < 0.8
    # Thirty new devices: the balanced head misses a third of their positives, the shifted
    # one finds close to the share it was set to.
    head = fit_head(x, y, l2=1.0, groups=groups)
    new_x, new_y, _ = _devices(rng, 30, 100)
    balanced = float((head.logits(new_x)[new_y] >= 0).mean())
    shifted = float((head.logits(new_x)[new_y] + shift >= 0).mean())
    assert balanced < 0.7
    assert 0.72 <= shifted <= 0.9
    assert shift > 0
    for wrong in (0.0, 1.5):
        with pytest.raises(ValueError, match="sensitivity"):
            operating_shift(x, y, groups, wrong)


def test_held_out_logits_at_an_operating_point_never_see_the_source_they_score() -> None:
    rng = np.random.default_rng(2)
    x, y, groups = _devices(rng, 5, 30)
    plain = held_out_logits(x, y, groups, l2=1.0)
    shifted = held_out_logits(x, y, groups, l2=1.0, sensitivity=0.8)
    names = np.array(groups)
    for group in sorted(set(groups)):
        held = names == group
        rest = [g for g in groups if g != group]
        own = operating_shift(x[~held], y[~held], rest, 0.8, l2=1.0)
        np.testing.assert_allclose(shifted[held], plain[held] + own)
        head = fit_head(x[~held], y[~held], l2=1.0, groups=rest)
        np.testing.assert_allclose(plain[held], head.logits(x[held]))
    # A source whose others hold one class has no held-out logit.
    one_class = y.copy()
    one_class[names != "device-0"] = False
    assert np.isnan(held_out_logits(x, one_class, groups)[names == "device-0"]).all()
    # All positives in one source: no fold can fit its own operating point, none fails.
    at_point = held_out_logits(x, one_class, groups, sensitivity=0.8)
    assert np.isnan(at_point).all()
    assert not np.isnan(held_out_logits(x, one_class, groups)[names != "device-0"]).any()
    with pytest.raises(ValueError, match="sensitivity"):
        held_out_logits(x, y, groups, sensitivity=0.0)


def test_the_ordinal_head_orders_scores_by_what_separates_them() -> None:
    # Scores 0-3 cut from one latent measurement (column 1) with noise; few high scores.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(400, 3))
    latent = x[:, 1] + 0.3 * rng.normal(size=400)
    y = np.digitize(latent, [0.0, 1.0, 1.6])
    head = fit_ordinal(x, y, l2=1.0)
    weights = head.weight.numpy()
    assert int(np.argmax(np.abs(weights))) == 1
    assert weights[1] > 0
    assert np.all(np.diff(head.cuts.numpy()) > 0)
    scores, probabilities = head.predict(x)
    assert probabilities.shape == (400, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(probabilities >= 0)
    assert (scores == y).mean() > 0.6
    # Scores weigh equally: the rare top score is called for most of its clips.
    assert (scores[y == 3] == 3).mean() > 0.6
    # The score is the median of the distribution: monotone in the latent measurement.
    line = np.c_[np.zeros(50), np.linspace(-3, 3, 50), np.zeros(50)]
    assert np.all(np.diff(head.predict(line)[0]) >= 0)
    with pytest.raises(ValueError, match="two scores"):
        fit_ordinal(x, np.ones(400, int))
    with pytest.raises(ValueError, match="0 to 3"):
        fit_ordinal(x, y + 1)


def test_a_stratified_ordinal_fit_learns_within_sources_not_which_source() -> None:
    # As for the logistic head: one source looks brighter (column 0) and holds the high scores;
    # within each source only column 1 orders them.
    rng = np.random.default_rng(3)
    groups = np.repeat(["bright", "dark"], 200)
    base = np.where(groups == "bright", 1.5, 0.0)
    latent = base + rng.normal(size=400)
    y = np.digitize(latent, [0.5, 1.5, 2.5])
    x = np.c_[
        2.0 * (groups == "bright") + rng.normal(size=400),
        latent - base + 0.3 * rng.normal(size=400),
    ]
    pooled = fit_ordinal(x, y).weight.numpy()
    stratified = fit_ordinal(x, y, groups=list(groups)).weight.numpy()
    assert pooled[0] > 0.5 * pooled[1]
    assert abs(stratified[0]) < 0.2 * stratified[1]


def test_the_lung_view_is_made_once_per_cine_and_read_only(
    synth_exams: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lus_pacs.families.assessment.inference import apex_ratio
    from lus_pacs.inference import lung_features

    made = []
    real = lung_features.lung_view

    def counted(cine: Cine) -> lung_features.LungView:
        made.append(cine)
        return real(cine)

    monkeypatch.setattr(lung_features, "lung_view", counted)
    cine = read_cine(sorted(synth_exams.glob("*/*.dcm"))[0])
    apex_ratio(cine)  # the assessment, then the measurements, read one view
    view = cine_features(cine)[2]
    assert len(made) == 1
    assert lung_features.cine_view(cine) is view
    assert not view.frames.flags.writeable
    np.testing.assert_array_equal(view.frames, real(cine).frames)


def test_a_declared_region_with_black_margins_is_measured_as_the_tissue_inside_it(
    synth_exams: Path, tmp_path: Path
) -> None:
    """A scanner may declare a rectangle wider than its sector: the measurements (which the
    heads were fitted on with regions found from the pixels) must not move with the margin."""
    from lus_pacs.domain import RegionSource
    from lus_pacs.imaging.writer import UltrasoundRegion
    from lus_pacs.inference.lung_features import (
        clip_features,
        frame_features,
        lung_view,
        view_region,
    )
    from tests.tools import write_cine

    tissue = read_cine(sorted(synth_exams.glob("*/*.dcm"))[0]).tissue()
    n, rows, cols = tissue.shape
    margin_y, margin_x = rows // 4, cols // 4
    padded = np.zeros((n, rows + 2 * margin_y, cols + 2 * margin_x), np.uint8)
    padded[:, margin_y : margin_y + rows, margin_x : margin_x + cols] = tissue
    declared = UltrasoundRegion(0, 0, padded.shape[2] - 1, padded.shape[1] - 1, 0.02, 0.02)
    found_only = read_cine(write_cine(tmp_path / "found.dcm", tissue, "rle"))
    wide = read_cine(write_cine(tmp_path / "wide.dcm", padded, "rle", regions=[declared]))
    assert found_only.region.source is RegionSource.IMAGE
    assert wide.region.source is RegionSource.DICOM
    assert wide.region.width == padded.shape[2]
    assert wide.found_region is not None

    def measured(cine: Cine) -> np.ndarray:
        view = lung_view(cine)
        return clip_features(view, frame_features(view))

    expected = measured(found_only)
    np.testing.assert_allclose(measured(wide), expected, atol=1e-4)
    # The declared rectangle as it is would have moved them: what the narrowing is for.
    as_declared = measured(dataclasses.replace(wide, found_region=None))
    assert np.abs(as_declared - expected).max() > 0.05
    # One frame shows no moving tissue: the file's region is all there is to go by.
    still = read_cine(write_cine(tmp_path / "still.dcm", padded[:1], "rle", regions=[declared]))
    assert still.found_region is None
    assert view_region(still) == still.region


def test_the_view_keeps_a_found_region_and_a_declared_one_with_little_tissue_in_it() -> None:
    from lus_pacs.domain import FrameTiming, Region, RegionSource, SourceRef
    from lus_pacs.inference.lung_features import view_region

    def cine(region: Region, found: Region | None) -> Cine:
        frames = np.zeros((2, 100, 200), np.uint8)
        timing = FrameTiming(fps=None, source="none")
        ref = SourceRef("1.2", "1.2.840.10008.5.1.4.1.1.3.1", "1.3", "1.4", "P", None)
        return Cine(frames, timing, region, ref, found_region=found)

    declared = Region(0, 0, 200, 100, RegionSource.DICOM, 0.02, 0.03)
    sector = Region(50, 10, 150, 90, RegionSource.IMAGE)
    narrowed = view_region(cine(declared, sector))
    assert (narrowed.x0, narrowed.y0, narrowed.x1, narrowed.y1) == (50, 10, 150, 90)
    assert narrowed.cm_per_pixel_y == 0.03  # the file's calibration stays
    # A moving marker a tenth of the region wide is not the scan: the file's region stays.
    assert view_region(cine(declared, Region(90, 10, 110, 90, RegionSource.IMAGE))) == declared
    assert view_region(cine(sector, Region(60, 20, 120, 80, RegionSource.IMAGE))) == sector
    assert view_region(cine(declared, None)) == declared


def test_the_lung_view_leaves_damaged_frames_out(synth_exams: Path) -> None:
    """A frame read only in part (grey where its data ended) was measured as lung: the B-line
    and severity heads' clip measurements, and the B-line frames, took it in."""
    from dataclasses import replace

    from lus_pacs.inference.lung_features import lung_view

    cine = read_cine(sorted(synth_exams.glob("*/*.dcm"))[0])
    damaged = replace(cine, damaged={f: "cut short" for f in range(2, cine.n_frames + 1, 3)})
    picks = lung_view(damaged).picks
    assert len(picks)
    assert not set((picks + 1).tolist()) & set(damaged.damaged)
    n = cine.n_frames  # a cine without damage is picked as before
    expected = np.unique(np.linspace(0, n - 1, min(n, 32)).round().astype(int))
    np.testing.assert_array_equal(lung_view(cine).picks, expected)
