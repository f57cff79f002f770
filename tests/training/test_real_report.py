"""The real-data evaluation's metric code on small cases computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lus_pacs.training.metrics import (
    binary_metrics,
    bootstrap_interval,
    quadratic_kappa,
    roc_auc,
    source_bootstrap_interval,
    within_group_auc,
)
from lus_pacs.training.real_report import binary_row, calibration, markdown, roc_curve, severity_row
from tests.tools import POCUS_HEADER


def test_binary_metrics_at_the_threshold_match_the_hand_count() -> None:
    # Scores of 3 positives and 3 negatives. At 0.5: TP 2 (0.9, 0.6), FN 1 (0.3), FP 1 (0.7), TN 2.
    scores = [0.9, 0.6, 0.3, 0.7, 0.2, 0.1]
    labels = [1, 1, 1, 0, 0, 0]
    m = binary_metrics(scores, labels, 0.5)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    # Pairs (positive, negative) ranked right: 0.9 beats 3, 0.6 beats 2, 0.3 beats 2 -> 7 of 9.
    assert m["auc"] == pytest.approx(7 / 9)


def test_auc_within_sources_counts_only_pairs_of_one_source() -> None:
    # Source a: positive 0.9 against negatives 0.5 (right) and 0.95 (wrong): 1 of 2 pairs.
    # Source b: positives 0.2 and 0.3 against negative 0.1: 2 of 2. Source c: negatives only.
    # Within sources (1 + 2) / 4; pooled, the positives beat 5 of 12 negatives.
    scores = [0.9, 0.5, 0.95, 0.2, 0.3, 0.1, 0.4]
    labels = [1, 0, 0, 1, 1, 0, 0]
    groups = ["a", "a", "a", "b", "b", "b", "c"]
    assert within_group_auc(scores, labels, groups) == pytest.approx(0.75)
    assert roc_auc(scores, labels) == pytest.approx(5 / 12)
    assert math.isnan(within_group_auc([0.1, 0.2], [1, 0], ["a", "b"]))
    row = binary_row("b_lines", "B-lines", "external", scores, labels, 0.5, groups=groups)
    assert row.metrics["auc_within_source"].value == pytest.approx(0.75)
    assert row.metrics["auc"].value == pytest.approx(5 / 12)
    assert "auc_within_source" in markdown([row]).splitlines()[0]
    with pytest.raises(ValueError, match="2 groups for 7 clips"):
        binary_row("b_lines", "B-lines", "external", scores, labels, 0.5, groups=["a", "b"])


def test_quadratic_kappa_matches_the_hand_computation() -> None:
    # Truth 0,0,1,2 predicted 0,1,1,1 with 3 classes: weights (i-j)^2/4.
    # Observed disagreement: (0,1) w 0.25 and (2,1) w 0.25 -> 0.5.
    # Expected: row sums [2,1,1], column sums [1,3,0], n 4 -> E = outer / 4;
    # sum w*E = (2*1*0 + 2*3*.25 + 1*1*.25 + 1*3*0 + 1*1*1 + 1*3*.25) / 4 = 3.5 / 4 = 0.875.
    assert quadratic_kappa([0, 0, 1, 2], [0, 1, 1, 1], 3) == pytest.approx(1 - 0.5 / 0.875)
    assert quadratic_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == pytest.approx(1.0)
    assert math.isnan(quadratic_kappa([1, 1], [1, 1], 4))


def test_bootstrap_interval_brackets_the_statistic_and_narrows_with_more_cases() -> None:
    rng = np.random.default_rng(1)
    small = rng.random(20) < 0.5
    large = rng.random(2000) < 0.5
    low_s, high_s = bootstrap_interval(lambda i: float(small[i].mean()), 20, rounds=400)
    low_l, high_l = bootstrap_interval(lambda i: float(large[i].mean()), 2000, rounds=400)
    assert low_s <= small.mean() <= high_s
    assert low_l <= large.mean() <= high_l
    assert high_l - low_l < (high_s - low_s) / 3


def test_roc_curve_and_calibration_of_a_small_case() -> None:
    fpr, tpr = roc_curve([0.9, 0.8, 0.4, 0.3], [1, 0, 1, 0])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    # Bins of 0.2: 0.1 and 0.15 in the first (one positive of two), 0.95 in the last.
    assert calibration([0.1, 0.15, 0.95], [1, 0, 1]) == [
        (pytest.approx(0.125), 0.5, 2),
        (pytest.approx(0.95), 1.0, 1),
    ]


def test_rows_and_table() -> None:
    b = binary_row("b_lines", "B-lines", "external", [0.9, 0.2, 0.7, 0.4], [1, 0, 1, 0], 0.5)
    assert b.metrics["auc"].value == 1.0
    assert "auc_within_source" not in b.metrics  # no sources given
    assert b.metrics["f1"].value == 1.0
    s = severity_row("severity", "leave-source-out", [0, 1, 2, 3, 3], [0, 1, 2, 3, 2])
    assert s.metrics["accuracy"].value == pytest.approx(0.8)
    assert s.extra["confusion"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1]]
    table = markdown([b, s])
    assert table.splitlines()[0].startswith("| family | task | protocol | clips | positives | auc")
    assert "| severity | severity 0-3 | leave-source-out | 5 |" in table


def test_evaluate_real_names_the_families_it_knows(tmp_path: Path) -> None:
    from lus_pacs.training.real_evaluation import EVALUATED_FAMILIES, evaluate_real

    with pytest.raises(ValueError, match="no family b-lines; choose from key_frames") as caught:
        evaluate_real(tmp_path / "data", tmp_path / "cache", tmp_path / "out", families=["b-lines"])
    assert all(name in str(caught.value) for name in EVALUATED_FAMILIES)
    assert not (tmp_path / "out").exists()  # refused before anything ran


def _external_rows(n_butterfly: int, n_convex: int, n_linear: int) -> list[str]:
    def row(file: str, probe: str, device: str) -> str:
        return f"{file},regular,{probe},{device},site,None,20,200x200,0,,,,,,,0"

    return (
        [row(f"videos/convex/Reg_Butterfly_{i}.avi", "convex", "Butterfly iQ")
         for i in range(n_butterfly)]
        + [row(f"videos/convex/Reg-web-{i}.mp4", "convex", "") for i in range(n_convex)]
        + [row(f"videos/linear/Reg-lin-{i}.mp4", "linear", "") for i in range(n_linear)]
    )  # fmt: skip


def _data_with_external(root: Path, rows: list[str]) -> Path:
    header = POCUS_HEADER.replace("probe,", "probe,device,")
    (root / "pocus").mkdir(parents=True)
    (root / "pocus" / "labels.csv").write_text(
        POCUS_HEADER + "\nvideos/Reg-a-1.mp4,regular,convex,site,CC BY 4.0,20,200x200,0,,,,,,,0\n"
    )
    (root / "pocus-extra").mkdir()
    (root / "pocus-extra" / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_external_rows_come_again_per_probe_and_named_scanner(tmp_path: Path) -> None:
    from lus_pacs.training.real import real_clips
    from lus_pacs.training.real_evaluation import MIN_SUBSET, external_subsets

    data = _data_with_external(tmp_path / "a", _external_rows(12, 3, 11))
    parts = {
        name: {c.clip.file for c in chosen} for name, chosen in external_subsets(real_clips(data))
    }
    assert sorted(parts) == [
        "shipped, external, Butterfly iQ",
        "shipped, external, convex probe",
        "shipped, external, linear probe",
    ]
    assert len(parts["shipped, external, convex probe"]) == 15
    assert all("Butterfly" in f for f in parts["shipped, external, Butterfly iQ"])
    assert all("/linear/" in f for f in parts["shipped, external, linear probe"])
    # No trainable clip in any part.
    assert not any("Reg-a-1" in f for files in parts.values() for f in files)

    # A scanner with too few clips, and a probe that is the whole external set, get no rows.
    data = _data_with_external(tmp_path / "b", _external_rows(MIN_SUBSET - 1, 4, 0))
    assert external_subsets(real_clips(data)) == []


def test_the_b_line_recipe_is_scored_at_its_operating_point_fitted_without_the_source(
    tmp_path: Path,
) -> None:
    from lus_pacs.families.measurements import held_out_logits
    from lus_pacs.inference.lung_features import CLIP_FEATURES
    from lus_pacs.training.real import Measured, RealClip, real_clips
    from lus_pacs.training.real_evaluation import leave_source_out
    from tests.tools import measured_pocus

    # Six sites, each with its own level of the one telling measurement (a device's gain).
    rng = np.random.default_rng(5)
    rows, names, features = [], [], []
    for site in range(6):
        level = rng.normal()
        for i in range(25):
            positive = bool(rng.random() < 0.4)
            file = f"videos/Cov-site{site}-{i}.mp4"
            rows.append(f"{file},COVID-19,convex,site{site},CC BY 4.0,20,200x200,{int(positive)}")
            names.append(f"pocus/{file}")
            x = rng.normal(size=len(CLIP_FEATURES))
            x[0] += 1.5 * positive + level
            features.append(x)
    data, _ = measured_pocus(tmp_path, [r + ",,,,,,," for r in rows], names, np.array(features))
    clips = tuple(real_clips(data))
    assert [c.name for c in clips] == names
    measured = Measured(clips, np.array(features, np.float32), ())

    def label(clip: RealClip) -> bool | None:
        return clip.clip.b_lines

    plain, y, groups = leave_source_out(measured, label, l2=1.0)
    at_point, _, _ = leave_source_out(measured, label, l2=1.0, sensitivity=0.8)
    expected = held_out_logits(measured.features, y, groups, l2=1.0, sensitivity=0.8)
    np.testing.assert_allclose(at_point, 1 / (1 + np.exp(-expected)))
    assert (at_point[y] >= 0.5).mean() > (plain[y] >= 0.5).mean()
    # All B-line clips in one site: no fold can fit its operating point; no clip is scored
    # (NaN, left out of the row: 0.5 was a positive call at the threshold).
    keep = np.array([c.group == "site0" or not c.clip.b_lines for c in clips])
    only = Measured(
        tuple(c for c, k in zip(clips, keep, strict=True) if k), measured.features[keep], ()
    )
    scores, labels, _ = leave_source_out(only, label, sensitivity=0.8)
    assert labels.any()
    assert np.isnan(scores).all()


def test_the_severity_recipe_is_scored_at_its_operating_point_fitted_without_the_source(
    tmp_path: Path,
) -> None:
    from lus_pacs.families.severity.measured import OPERATING_SHARE, fit_recipe, operating_shift
    from lus_pacs.inference.lung_features import CLIP_FEATURES
    from lus_pacs.training.metrics import confusion
    from lus_pacs.training.real import Measured, real_clips
    from lus_pacs.training.real_evaluation import evaluate_real, severity_leave_source_out
    from tests.tools import measured_pocus

    # Five sites, each with its own level of the two telling measurements (a device's gain);
    # a clip's score is 0 (neither finding), 1 (B-lines), 2 (consolidation) or 3 (both).
    rng = np.random.default_rng(6)
    rows, names, features = [], [], []
    for site in range(5):
        level = rng.normal()
        for i in range(24):
            b, c = bool(rng.random() < 0.5), bool(rng.random() < 0.3)
            file = f"videos/Cov-site{site}-{i}.mp4"
            rows.append(
                f"{file},COVID-19,convex,site{site},CC BY 4.0,20,200x200,{int(b)},{int(c)},"
                f"{i % 2},,,,,{int(b) + 2 * int(c)}"
            )
            names.append(f"pocus/{file}")
            x = rng.normal(size=len(CLIP_FEATURES))
            x[0] += 1.5 * b + level
            x[1] += 1.5 * c + level
            features.append(x)
    data, cache = measured_pocus(tmp_path, rows, names, np.array(features))
    clips = tuple(real_clips(data))
    measured = Measured(clips, np.array(features, np.float32), ())

    plain, truth, groups = severity_leave_source_out(measured)
    at_point, again, _ = severity_leave_source_out(measured, share=0.8)
    np.testing.assert_array_equal(again, truth)
    measures = measured.features
    for source in sorted(set(groups)):
        rest = [i for i, clip in enumerate(clips) if clip.group != source]
        labels = (
            [clips[i].group for i in rest],
            [clips[i].clip.b_lines for i in rest],
            [clips[i].clip.consolidations for i in rest],
            [clips[i].severity for i in rest],
        )
        recipe = fit_recipe(measures[rest], *labels)
        shift = operating_shift(measures[rest], *labels, share=0.8)
        held = measures[[i for i, clip in enumerate(clips) if clip.group == source]]
        mine = np.array(groups) == source
        np.testing.assert_array_equal(at_point[mine], recipe.clip_scores(held, shift)[0])
        np.testing.assert_array_equal(plain[mine], recipe.clip_scores(held)[0])
    severe = truth >= 2
    assert (at_point[severe] >= 2).mean() > (plain[severe] >= 2).mean()
    # The evaluation's severity row is the recipe at its shipped operating point.
    evaluation = evaluate_real(data, cache, tmp_path / "out", shipped=False, rounds=10)
    (row,) = [r for r in evaluation.rows if r.family == "severity (measurement recipe)"]
    shipped_point, _, _ = severity_leave_source_out(measured, share=OPERATING_SHARE)
    assert row.extra["confusion"] == confusion(truth, shipped_point, 4).tolist()


def test_the_interval_by_source_resamples_whole_sources() -> None:
    """Clips of one source are alike: resampling them one by one gave intervals too narrow
    for another device (external F1 [0.70, 0.87] printed, [0.52, 0.87] by source)."""
    rng = np.random.default_rng(2)
    groups = np.repeat([f"s{k}" for k in range(6)], 30)
    level = np.repeat(rng.random(6), 30)  # each source its own rate: clips alike within it
    flags = rng.random(180) < level
    clip_low, clip_high = bootstrap_interval(lambda i: float(flags[i].mean()), 180, rounds=400)
    low, high = source_bootstrap_interval(lambda i, _: float(flags[i].mean()), groups, rounds=400)
    assert low <= flags.mean() <= high
    assert high - low > 2 * (clip_high - clip_low)
    # Drawn by source: each draw holds whole sources, so one source's clips come together.
    drawn: list[np.ndarray] = []

    def kept(indices: np.ndarray, _sources: np.ndarray) -> float:
        drawn.append(indices)
        return 0.0

    source_bootstrap_interval(kept, groups, rounds=3)
    for indices in drawn:
        counts = np.bincount(indices, minlength=180)
        for k in range(6):
            assert len(set(counts[groups == f"s{k}"])) == 1
    assert np.isnan(source_bootstrap_interval(lambda i, _: 0.0, ["one"] * 5)[0])
    row = binary_row(
        "b_lines", "b_lines", "external", level + rng.normal(scale=0.1, size=180), flags, 0.5,
        groups=list(groups), rounds=200,
    )  # fmt: skip
    assert "(by source" in markdown([row])
    assert np.isfinite(row.metrics["f1"].source_low)


def test_a_proportion_at_zero_or_one_gets_the_interval_its_count_allows() -> None:
    """Every resample agrees at 0 or 1: 0 of 4 B-line clips found printed sensitivity
    0.00 [0.00, 0.00], and 7 of 7 specificity 1.00 [1.00, 1.00]."""
    from lus_pacs.training.metrics import exact_interval
    from lus_pacs.training.real_report import share_row

    low, high = exact_interval(0, 4)
    assert (low, round(high, 2)) == (0.0, 0.60)
    low, high = exact_interval(7, 7)
    assert (round(low, 2), high) == (0.59, 1.0)
    low, high = exact_interval(5, 10)  # symmetric about a half
    assert low == pytest.approx(1 - high)
    row = binary_row(
        "b_lines", "b_lines", "external", [0.1] * 4 + [0.2] * 7, [1] * 4 + [0] * 7, 0.5,
        rounds=200,
    )  # fmt: skip
    assert str(row.metrics["sensitivity"]) == "0.00 [0.00, 0.60]"
    assert str(row.metrics["specificity"]) == "1.00 [0.59, 1.00]"
    assert str(share_row("key_frames", "usable", "x", [True] * 130).metrics["share"]) == (
        "1.00 [0.97, 1.00]"
    )
    mixed = binary_row("b", "b", "x", [0.9, 0.2, 0.7, 0.4, 0.6], [1, 0, 1, 0, 0], 0.5)
    specificity = mixed.metrics["specificity"]  # 2 of 3: the bootstrap's interval stays
    assert specificity.low < specificity.value < specificity.high


def test_the_interval_by_source_of_a_proportion_at_zero_is_the_exact_one_too() -> None:
    row = binary_row(
        "b", "b", "external", [0.1] * 4 + [0.2] * 4, [1] * 4 + [0] * 4, 0.5,
        groups=list("abcdabcd"), rounds=200,
    )  # fmt: skip
    assert str(row.metrics["sensitivity"]) == "0.00 [0.00, 0.60] (by source 0.00, 0.60)"


def test_a_source_drawn_twice_counts_as_two_sources_within_sources() -> None:
    """Drawn as one source, a source's copies multiplied its pairs by four, not two: with
    sources ordered perfectly, reversed and perfectly (AUC 1, 0, 1; one pair each), a draw of
    A, A, B gave 0.8 within sources where two A sources and one B give 2/3; the by-source
    interval of the B-line recipe printed an upper bound of 0.89 for 0.84."""
    from lus_pacs.training.metrics import within_group_auc

    scores = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    labels = np.array([True, False, True, False, True, False])
    groups = np.array(["A", "A", "B", "B", "C", "C"])
    assert within_group_auc(scores, labels, groups) == pytest.approx(2 / 3)
    found: set[float] = set()

    def within(indices: np.ndarray, sources: np.ndarray) -> float:
        value = within_group_auc(scores[indices], labels[indices], sources)
        found.add(round(value, 4))
        return value

    source_bootstrap_interval(within, groups, rounds=60)
    # Three sources drawn, each a pair: the mean of three AUCs of 0 or 1.
    thirds = {round(k / 3, 4) for k in range(4)}
    assert found <= thirds, found
    assert len(found) >= 3
