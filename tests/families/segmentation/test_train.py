"""Segmentation data, training, evaluation and inference end to end on a tiny simulated set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lus_pacs.errors import AnnotationError
from lus_pacs.families.segmentation.data import (
    UNSCORED,
    augment_batch,
    augmentations,
    balanced_weights,
    load_masked_frames,
    read_labelme_cines,
    simulated_masked_cines,
)
from lus_pacs.families.segmentation.evaluate import (
    border_and_inside_uncertainty,
    pixel_confusion,
    structure_borders,
    table_iv,
)
from lus_pacs.families.segmentation.inference import SegmentationModel, frames_to_segment
from lus_pacs.families.segmentation.network import BACKGROUND, CLASSES, DeepLabV3Plus
from lus_pacs.families.segmentation.train import class_weights, fit_class_bias
from lus_pacs.inference.transforms import fit_label_maps, to_source_geometry
from lus_pacs.training.simulated import find_simulated
from tests.tools import run_cli

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "segmentation"


@pytest.fixture(scope="module")
def exams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two patients of 12-frame cines, with LabelMe files every 10th frame."""
    out = tmp_path_factory.mktemp("seg-exams")
    run_cli(
        "synth", "--out", str(out), "--patients", "2", "--seed", "11",
        "--frames", "12", "--fps", "10", "--workers", "2",
    )  # fmt: skip
    return out


def test_labelme_polygons_load_as_the_simulated_masks(exams: Path) -> None:
    drawn = read_labelme_cines(exams / "annotations" / "labelme")
    sims = {s.dicom.resolve(): s for s in find_simulated(exams)}
    assert {c.dicom for c in drawn} == set(sims)
    for cine in drawn:
        sim = sims[cine.dicom]
        assert cine.patient_id == sim.patient_id
        assert cine.frames == (1, 11)
        truth = sim.masks()[[f - 1 for f in cine.frames]]
        # Polygons lose holes and one-pixel slivers; everything else is the truth.
        assert (cine.load_masks() == truth).mean() > 0.99


def test_frames_and_masks_share_the_model_geometry(exams: Path) -> None:
    (sim,) = [s for s in find_simulated(exams) if s.severity and s.severity >= 1][:1]
    frames = load_masked_frames(simulated_masked_cines([sim], every=4), progress=False)
    assert frames.x.shape == (3, 1, 200, 260)
    assert frames.y.shape == (3, 200, 260)
    padding = frames.y == BACKGROUND
    assert (frames.x[:, 0][padding].float() < -0.5).float().mean() > 0.9  # black where nothing
    # Back in source geometry the fitted mask is the truth except for resampling at edges.
    cine = sim.load()
    fitted = fit_label_maps(sim.masks()[:1], cine, BACKGROUND)
    back = to_source_geometry(fitted[0], cine, background=BACKGROUND)
    assert (back == sim.masks()[0]).mean() > 0.99


def test_batches_balance_scores_then_patients() -> None:
    patients = ["a", "a", "a", "b", "a", "b"]
    scores = [0, 0, 0, 0, 3, UNSCORED]
    w = balanced_weights(patients, scores).numpy()
    assert w.sum() == pytest.approx(1.0)
    by_score = {s: sum(w[i] for i in range(6) if scores[i] == s) for s in set(scores)}
    assert all(v == pytest.approx(1 / 3) for v in by_score.values())
    # Score 0: patient a's three frames together weigh as much as patient b's one frame.
    assert w[0] * 3 == pytest.approx(w[3])


def test_augmentations_pad_labels_with_background() -> None:
    transform = augmentations(probability=1.0)
    transform.set_random_state(3)
    x = torch.zeros(4, 1, 200, 260)
    y = torch.zeros(4, 200, 260, dtype=torch.uint8)  # score 0 everywhere
    xa, ya = augment_batch(transform, x, y)
    assert xa.shape == x.shape
    assert ya.shape == (4, 200, 260)
    assert set(ya.unique().tolist()) <= {0, BACKGROUND}
    assert (ya == BACKGROUND).any()  # moved-in borders are background, not score 0
    assert xa.min() >= -1
    assert xa.max() <= 1


def test_class_weights_favour_rare_classes() -> None:
    labels = torch.full((100,), BACKGROUND)
    labels[:10] = 0
    labels[10] = 2
    assert class_weights(labels, 0.0) is None
    w = class_weights(labels, 0.5)
    assert w is not None
    assert w.shape == (CLASSES,)
    frequency = torch.bincount(labels, minlength=CLASSES).float() / 100
    assert float((w * frequency).sum()) == pytest.approx(1.0)
    assert w[2] > w[0] > w[BACKGROUND]
    assert w[1] == w.max()  # absent from these labels


def test_table_iv_counts_by_hand() -> None:
    truth = np.array([[4, 4, 1, 1], [0, 0, 2, 3]])
    predicted = np.array([[4, 1, 1, 4], [0, 4, 3, 3]])
    row = table_iv(pixel_confusion(predicted, truth))
    assert row["accuracy"] == pytest.approx(4 / 8)
    # Pathological pixels: truth {(0,2),(0,3),(1,2),(1,3)}, predicted {(0,1),(0,2),(1,2),(1,3)}.
    assert row["union_dice"] == pytest.approx(2 * 3 / 8)
    assert row["dice_0"] == pytest.approx(2 * 1 / 3)
    assert row["dice_2"] == 0.0
    assert row["dice_3"] == pytest.approx(2 * 1 / 3)
    assert row["categorical_dice"] == pytest.approx((2 / 3 + 0 + 2 / 3) / 3)


def test_borders_ring_structures_and_insides_are_away_from_them() -> None:
    truth = np.full((30, 30), BACKGROUND, np.uint8)
    truth[5:25, 5:25] = 3
    truth[5:25, 15:25] = 1  # two scores side by side: their edge is not a structure border
    border, inside = structure_borders(truth)
    assert not border[15, 15]
    assert border[5, 10]
    assert border[4, 10]
    assert not border[15, 15]
    assert inside[15, 15]
    assert not inside[6, 10]
    assert not inside[2, 2]


def test_frame_choices() -> None:
    assert frames_to_segment("all", 4) == (1, 2, 3, 4)
    assert frames_to_segment("every", 25, every=10) == (1, 11, 21)
    assert frames_to_segment("key", 30, key_frames=[7, 3, 7, 99]) == (3, 7)
    assert frames_to_segment("key", 30) == (15,)
    assert frames_to_segment("best", 30, key_frames=[7, 3, 99]) == (7,)
    assert frames_to_segment("best", 30, key_frames=[99, 3]) == (3,)
    assert frames_to_segment("best", 30) == (15,)
    with pytest.raises(ValueError, match="best, key, all, every"):
        frames_to_segment("some", 4)


def test_train_load_segment_evaluate(exams: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    run_cli(
        "train", "segmentation",
        "--data", str(exams), "--labelme", str(exams / "annotations" / "labelme"),
        "--out", str(bundle), "--steps", "2", "--seed", "0", "--every", "6", "--folds", "2",
        "--networks", "deeplabv3_plus", "--batch-size", "2", "--mc-samples", "3",
    )  # fmt: skip
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert 0 <= metadata["eval_metrics"]["ensemble_accuracy"] <= 1
    assert metadata["training"]["data"] == [exams.name, "labelme"]

    model = SegmentationModel.load(bundle)
    assert model.samples == 3
    assert list(model.ensemble.members) == ["deeplabv3_plus"]
    assert isinstance(model.ensemble.members["deeplabv3_plus"], DeepLabV3Plus)
    sim = find_simulated(exams)[0]
    cine = sim.load()
    found = model.predict(cine, (2, 9))
    assert found.frames == (2, 9)
    assert found.samples == 3
    assert found.masks.shape == (2, *cine.frames.shape[1:3])
    assert found.uncertainty is not None
    assert found.uncertainty.shape == found.masks.shape
    assert set(np.unique(found.masks).tolist()) <= set(range(CLASSES))
    for c in found.classes:
        assert c.pixels == int((found.masks == c.score).sum())
        assert c.uncertainty_max is not None
        assert c.uncertainty_max >= (c.uncertainty_mean or 0)
    again = model.predict(cine, (2, 9))  # dropout seeded by the cine: the same result again
    np.testing.assert_array_equal(again.masks, found.masks)
    np.testing.assert_array_equal(again.uncertainty, found.uncertainty)
    plain = SegmentationModel.load(bundle, samples=0).predict(cine, (2,))
    assert plain.uncertainty is None
    assert all(c.uncertainty_mean is None for c in plain.classes)

    figure, result = tmp_path / "fig6.png", tmp_path / "seg.json"
    run_cli(
        "evaluate", "segmentation",
        "--bundle", str(bundle), "--data", str(exams), "--every", "6", "--samples", "2",
        "--uncertainty-frames", "2", "--figure", str(figure), "--json", str(result),
    )  # fmt: skip
    measured = json.loads(result.read_text())
    assert set(measured["table_iv"]) == {"deeplabv3_plus", "ensemble", "ensemble_without_bias"}
    assert measured["frames"] == 2 * 6 * 2  # frames 1 and 7 of each of 12 cines
    assert Image.open(figure).size[0] == 5 * 260 + 4 * 6


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no shipped segmentation bundle")
def test_shipped_ensemble_is_least_sure_of_extent_at_structure_borders(synth_exams: Path) -> None:
    model = SegmentationModel.load(SHIPPED)
    cines = simulated_masked_cines(
        [s for s in find_simulated(synth_exams) if s.severity and s.severity >= 2], every=20
    )
    frames = load_masked_frames(cines[:2], progress=False)
    measured = border_and_inside_uncertainty(model.ensemble, frames, samples=10, progress=False)
    assert measured["border_pixels"] > 100
    assert measured["inside_pixels"] > 100
    assert measured["extent_inside"] > 0  # dropout does vary the output
    assert measured["extent_border"] > 1.3 * measured["extent_inside"]


def test_class_bias_recovers_a_class_the_argmax_misses() -> None:
    truth = torch.full((2, 20, 20), BACKGROUND, dtype=torch.uint8)
    truth[:, 5:10, 5:10] = 2
    truth[:, 12:16, 2:18] = 0
    log_p = torch.full((2, CLASSES, 20, 20), -8.0)
    log_p[:, BACKGROUND] = -0.1
    log_p[:, 0][truth == 0] = 0.0  # score 0 is found
    log_p[:, 2][truth == 2] = -0.8  # score 2 is always second to the background
    log_p[:, 2][truth == BACKGROUND] = -3.0  # ... and far behind elsewhere
    plain = table_iv(pixel_confusion(log_p.argmax(dim=1).numpy(), truth.numpy()))
    assert plain["dice_2"] == 0.0
    bias = fit_class_bias(log_p.half(), truth)
    assert 0.7 < float(bias[2]) < 2.9
    assert float(bias[BACKGROUND]) == 0.0
    fitted = table_iv(
        pixel_confusion((log_p + bias.view(1, -1, 1, 1)).argmax(dim=1).numpy(), truth.numpy())
    )
    assert fitted["dice_2"] == 1.0
    assert fitted["dice_0"] == 1.0


def test_labelme_frames_are_one_based(exams: Path, tmp_path: Path) -> None:
    source = next((exams / "annotations" / "labelme").rglob("*.json"))
    doc = json.loads(source.read_text())
    doc["imagePath"] = str((source.parent / doc["imagePath"]).resolve())
    doc["frame"] = 0
    (tmp_path / "zero.json").write_text(json.dumps(doc))
    with pytest.raises(AnnotationError, match="1-based"):
        read_labelme_cines(tmp_path)
