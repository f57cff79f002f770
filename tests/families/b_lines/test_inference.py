from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lus_pacs.domain import BLineFindings, ModelInfo
from lus_pacs.errors import ModelError
from lus_pacs.families.b_lines.evaluate import auc
from lus_pacs.families.b_lines.inference import BLineModel, findings_from_windows
from lus_pacs.families.b_lines.network import MeasuredBLines
from lus_pacs.synth.exam import SynthOptions, synthesize
from lus_pacs.training.simulated import SimulatedCine, find_simulated

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "b_lines"
INFO = ModelInfo("b_lines", "0.1.0", "test")


@pytest.fixture(scope="module")
def model() -> BLineModel:
    return BLineModel.load(BUNDLE)


@pytest.fixture(scope="module")
def predictions(
    model: BLineModel, tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[SimulatedCine, BLineFindings]]:
    out = tmp_path_factory.mktemp("b-lines")
    synthesize(out, SynthOptions(patients=2, seed=99, frames=30, workers=2))
    return [(sim, model.predict(sim.load(), default_fps=30.0)) for sim in find_simulated(out)]


def test_shipped_bundle_loads(model: BLineModel) -> None:
    assert model.model.name == "b_lines"
    from lus_pacs.families.b_lines.real_head import VERSION

    assert model.model.version == VERSION  # the bundle `lus-pacs fit b-lines` writes
    assert isinstance(model.network, MeasuredBLines)
    assert "paper 001" in model.model.title
    assert 0 < model.threshold < 1
    assert not model.network.training
    assert (BUNDLE / "models" / "model.pt").stat().st_size < 5_000_000


def test_predictions_are_well_formed(
    predictions: list[tuple[SimulatedCine, BLineFindings]],
) -> None:
    for sim, findings in predictions:
        assert 0.0 <= findings.probability <= 1.0
        assert len(findings.frame_scores) == sim.n_frames
        assert max(findings.frame_scores) == pytest.approx(1.0)
        assert all(1 <= f <= sim.n_frames for f in findings.frames)
        assert list(findings.frames) == sorted(set(findings.frames))
        assert findings.present == (findings.key_frame is not None)
        if findings.present:
            assert findings.key_frame in findings.frames
        else:
            assert findings.frames == ()
        assert findings.model.name == "b_lines"


def test_better_than_chance(predictions: list[tuple[SimulatedCine, BLineFindings]]) -> None:
    truth = np.array([sim.b_lines for sim, _ in predictions])
    probability = np.array([f.probability for _, f in predictions])
    assert truth.any(), "the test set needs cines with B-lines"
    assert not truth.all(), "the test set needs cines without B-lines"
    score = auc(truth, probability)
    assert score > 0.85, f"clip AUC {score:.3f} on {len(truth)} simulated cines"
    key_hits = [f.key_frame in sim.b_line_frames for sim, f in predictions if sim.b_lines]
    assert np.mean(key_hits) > 0.7, f"key frame is a B-line frame in {key_hits}"


def test_merging_windows() -> None:
    # Two windows of 4 frames over 6 frames (starts 1 and 3): frames 3-4 are in both.
    attention = np.array([[0.1, 0.1, 0.2, 0.6], [0.7, 0.1, 0.1, 0.1]])
    findings = findings_from_windows(
        np.array([0.9, 0.2]),
        attention,
        [1, 3],
        6,
        threshold=0.5,
        attention_threshold=0.5,
        model=INFO,
    )
    # Each position divided by its mean over the windows (0.4, 0.1, 0.15, 0.35), each window
    # made to sum 1 again, then each frame's mean over the windows holding it; frames 5-6 are
    # only in the negative window.
    shared = attention / attention.mean(axis=0)
    shared /= shared.sum(axis=1, keepdims=True)
    (w1, w2) = shared
    means = np.array([w1[0], w1[1], (w1[2] + w2[0]) / 2, (w1[3] + w2[1]) / 2, w2[2], w2[3]])
    np.testing.assert_allclose(findings.frame_scores, means / means.max())
    assert findings.probability == pytest.approx(0.9)
    assert findings.key_frame == 3
    assert findings.frames == (2, 3, 4)  # frame 1 at 0.15 of frame 3, frame 2 at 0.59


def test_the_first_position_of_every_window_does_not_make_the_key_frame() -> None:
    """The network gives a window's first position more attention whatever it shows; frame 1,
    seen only there, was the key frame of a fifth of the real clips called positive. Three
    windows over 10 frames with that bias; the B-lines at frame 3 of the first."""
    bias = np.array([0.55, 0.15, 0.15, 0.15])
    first = np.array([0.55, 0.15, 0.35, 0.15]) / 1.2
    findings = findings_from_windows(
        np.array([0.9, 0.6, 0.2]),
        np.stack([first, bias, bias]),
        [1, 4, 7],
        10,
        threshold=0.5,
        attention_threshold=0.5,
        model=INFO,
    )
    assert findings.key_frame == 3  # frame 1 before (0.46 against 0.29 of its attention)
    scores = findings.frame_scores
    assert scores[2] == 1.0
    assert scores[0] < 0.6  # 1.0 before


def test_merging_without_b_lines() -> None:
    findings = findings_from_windows(
        np.array([0.1]),
        np.full((1, 4), 0.25),
        [1],
        3,
        threshold=0.5,
        attention_threshold=0.5,
        model=INFO,
    )
    assert not findings.present
    assert findings.key_frame is None
    assert findings.frames == ()
    assert findings.frame_scores == (1.0, 1.0, 1.0)  # the padded 4th position is frame 3's


def test_incomplete_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "b_lines"
    shutil.copytree(BUNDLE, bundle)
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(ModelError, match=r"b_lines is incomplete: models/model.pt is missing"):
        BLineModel.load(bundle)


def test_network_def_outside_the_package(tmp_path: Path) -> None:
    bundle = tmp_path / "b_lines"
    shutil.copytree(BUNDLE, bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["_target_"] = "os.system"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="must be a mapping whose _target_ names a class"):
        BLineModel.load(bundle)


def test_weights_of_another_network(tmp_path: Path) -> None:
    bundle = tmp_path / "b_lines"
    shutil.copytree(BUNDLE, bundle)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["localiser"]["hidden_size"] = 8
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not a state dict that fits"):
        BLineModel.load(bundle)


@pytest.mark.parametrize("arch", ["c2d_att", "c2d_lstm"])
def test_a_baseline_bundle_runs_in_the_node(arch: str, tmp_path: Path) -> None:
    import json
    import shutil

    import numpy as np
    import torch

    from lus_pacs.domain import Cine, FrameTiming, Region, RegionSource, SourceRef
    from lus_pacs.families.b_lines.inference import BLineModel
    from lus_pacs.families.b_lines.network import ARCHITECTURES
    from lus_pacs.families.b_lines.train import network_args
    from lus_pacs.training.bundle_files import save_weights

    shipped = Path(__file__).resolve().parents[3] / "models" / "b_lines"
    bundle = tmp_path / arch
    shutil.copytree(shipped / "configs", bundle / "configs")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    cls = ARCHITECTURES[arch]
    config["network_def"] = {"_target_": f"{cls.__module__}.{cls.__name__}", **network_args(arch)}
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    save_weights(cls(**network_args(arch)), bundle)  # with the checksum, as training writes

    model = BLineModel.load(bundle)
    frames = np.random.default_rng(0).integers(0, 255, (40, 96, 128), dtype=np.uint8)
    cine = Cine(
        frames,
        FrameTiming(30.0, "FrameTime"),
        Region(0, 0, 128, 96, RegionSource.WHOLE),
        SourceRef("1.2.3", "1.2.840.10008.5.1.4.1.1.3.1", "1.2", "1", "P", "R1"),
    )
    findings = model.predict(cine, default_fps=30.0)
    assert len(findings.frame_scores) == 40
    assert 0.0 <= findings.probability <= 1.0


def test_the_head_decides_and_the_network_says_where(
    model: BLineModel, predictions: list[tuple[SimulatedCine, BLineFindings]]
) -> None:
    from lus_pacs.inference.lung_features import cine_features

    assert isinstance(model.network, MeasuredBLines)
    plain = BLineModel(
        model.network.localiser, model.model, model.threshold, model.attention_threshold
    )
    compared = 0
    for sim, found in predictions[:6]:
        cine = sim.load()
        head = model.network.head.probability(cine_features(cine)[1][None])[0]
        assert found.probability == pytest.approx(head, abs=1e-6)
        assert found.present == (head >= model.threshold)
        where = plain.predict(cine, default_fps=30.0)
        assert found.frame_scores == where.frame_scores
        if not found.present:
            assert (found.key_frame, found.frames) == (None, ())
        elif where.present:
            assert (found.key_frame, found.frames) == (where.key_frame, where.frames)
            compared += 1
    assert compared > 0, "no cine that both call positive: the test set needs B-lines"
