"""Paper 004's frame similarity: brightness, local-brightness matrix, CNN encoder, cosine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lus_pacs.domain import Cine, FrameTiming, Region, RegionSource, SourceRef
from lus_pacs.errors import ModelError
from lus_pacs.families.key_frames.similarity import (
    CnnEncoder,
    cosine_similarity,
    local_brightness,
    masked_tissue,
    mean_brightness,
    tissue_mask,
    window_size,
)
from lus_pacs.inference.transforms import b_line_windows

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "b_lines"


def _cine(
    frames: np.ndarray, region: Region | None = None, overlay: np.ndarray | None = None
) -> Cine:
    _, rows, cols = frames.shape
    return Cine(
        frames=frames,
        timing=FrameTiming(30.0, "test"),
        region=region or Region(0, 0, cols, rows, RegionSource.WHOLE),
        source=SourceRef("1.2.3.4", "1.2.840.10008.5.1.4.1.1.3.1", "1.2.3", "1.2", "P1", None),
        overlay_mask=overlay,
    )


def _scene(seed: int, frames: int = 3, rows: int = 90, cols: int = 120) -> np.ndarray:
    """Frames with structure: smooth blobs plus speckle, different per frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols]
    out = []
    for _ in range(frames):
        cy, cx = rng.uniform(0, rows), rng.uniform(0, cols)
        blob = 200 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * (rows / 5) ** 2))
        out.append(np.clip(blob + rng.uniform(0, 40, (rows, cols)), 0, 255))
    return np.asarray(out, np.uint8)


@pytest.fixture(scope="module")
def encoder() -> CnnEncoder:
    return CnnEncoder.load(BUNDLE)


@pytest.fixture
def with_overlay() -> Cine:
    """Two flat frames (100 and 40) in a region surrounded by 255, with a 255 text block over
    part of the region."""
    frames = np.full((2, 40, 60), 255, np.uint8)
    frames[0, 5:35, 10:50] = 100
    frames[1, 5:35, 10:50] = 40
    overlay = np.zeros((40, 60), bool)
    overlay[6:12, 12:30] = True
    frames[:, overlay] = 255
    return _cine(frames, Region(10, 5, 50, 35, RegionSource.IMAGE), overlay)


def test_mean_brightness_is_over_tissue_only(with_overlay: Cine) -> None:
    np.testing.assert_allclose(mean_brightness(with_overlay), [100.0, 40.0])
    assert tissue_mask(with_overlay).sum() == 30 * 40 - 6 * 18
    assert (masked_tissue(with_overlay)[:, 1:7, 2:20] == 0).all()


def test_overlay_pixels_change_nothing_but_tissue_pixels_do(
    with_overlay: Cine, encoder: CnnEncoder
) -> None:
    def measures(cine: Cine) -> list[np.ndarray]:
        return [mean_brightness(cine), local_brightness(cine, 10), encoder(cine)]

    before = measures(with_overlay)
    text = with_overlay.frames.copy()
    text[:, 8, 15:25] = 7  # another overlay glyph
    for a, b in zip(
        before, measures(_cine(text, with_overlay.region, with_overlay.overlay_mask)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    tissue = with_overlay.frames.copy()
    tissue[:, 25:30, 15:25] = 7
    changed = measures(_cine(tissue, with_overlay.region, with_overlay.overlay_mask))
    for a, b in zip(before, changed, strict=True):
        assert not np.array_equal(a, b)


def test_window_scales_the_papers_200_pixels() -> None:
    assert window_size(1080, 792) == 200
    assert window_size(370, 485) == 92  # the simulated convex probe's region
    assert window_size(3, 3) == 2
    for rows, cols in ((480, 640), (101, 333), (57, 1000)):
        assert window_size(rows, cols) % 2 == 0


def test_paper_image_gives_ten_by_seven_windows() -> None:
    cine = _cine(np.zeros((1, 1080, 792), np.uint8))
    assert local_brightness(cine, 200).shape == (1, 10, 7)


def test_local_brightness_is_each_windows_tissue_mean() -> None:
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (2, 37, 53), dtype=np.uint8)
    overlay = rng.random((37, 53)) < 0.1
    cine = _cine(frames, overlay=overlay)
    n, step = 10, 5
    got = local_brightness(cine, n)
    starts_y, starts_x = range(0, 37 - step, step), range(0, 53 - step, step)
    assert got.shape == (2, len(starts_y), len(starts_x))
    for i, y in enumerate(starts_y):
        for j, x in enumerate(starts_x):
            keep = ~overlay[y : y + n, x : x + n]
            want = frames[:, y : y + n, x : x + n][:, keep].mean(axis=1)
            np.testing.assert_allclose(got[:, i, j], want)


def test_local_brightness_refuses_odd_windows() -> None:
    with pytest.raises(ValueError, match="even"):
        local_brightness(_cine(np.zeros((1, 20, 20), np.uint8)), 7)


def test_overlay_over_the_whole_region_is_not_believed(caplog: pytest.LogCaptureFixture) -> None:
    """A still, bright image under a declared region looks like overlay everywhere: the region
    is then used unmasked, with a warning, rather than failing the cine."""
    frames = np.full((2, 8, 8), 200, np.uint8)
    frames[1, 0, 0] = 100
    cine = _cine(frames, overlay=np.ones((8, 8), bool))
    with caplog.at_level("WARNING"):
        brightness = mean_brightness(cine)
    assert brightness[0] == 200
    assert brightness[1] == pytest.approx((200 * 63 + 100) / 64)
    assert (masked_tissue(cine) == frames).all()
    assert "covers its whole tissue region" in caplog.text


def test_cosine_similarity() -> None:
    encodings = np.array([[1.0, 2.0], [2.0, 4.0], [-2.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    got = cosine_similarity(encodings[0], encodings)
    np.testing.assert_allclose(got, [1.0, 1.0, 0.0, 0.0, 1 / np.sqrt(5)])
    np.testing.assert_allclose(cosine_similarity(encodings[3], encodings), [0, 0, 0, 1, 0])
    matrices = np.arange(24, dtype=float).reshape(2, 3, 4)
    assert cosine_similarity(matrices[1], matrices)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="reference"):
        cosine_similarity(encodings[0, :1], encodings)


def test_identical_frames_are_similar_1_by_both_encodings(encoder: CnnEncoder) -> None:
    frames = _scene(5)
    frames[2] = frames[0]
    cine = _cine(frames)
    for encoded in (local_brightness(cine), encoder(cine)):
        similarity = cosine_similarity(encoded[0], encoded)
        assert similarity[2] == pytest.approx(1.0, abs=1e-6)
        assert similarity[1] < 0.999


def test_cnn_encoder_is_frozen_and_pooled_to_4x4(encoder: CnnEncoder) -> None:
    network_def = json.loads((BUNDLE / "configs" / "inference.json").read_text())["network_def"]
    channels = network_def["localiser"]["channels"][-1]  # the shipped bundle's network
    cine = _cine(_scene(6, frames=70))  # more than one batch
    encoded = encoder(cine)
    assert encoded.shape == (70, channels * 16)
    assert encoded.dtype == np.float32
    np.testing.assert_array_equal(encoded, encoder(cine))
    assert not any(p.requires_grad for p in encoder.network.parameters())
    assert not encoder.network.training
    assert encoder.model.name == "b_lines"


def test_a_bundle_without_a_frame_cnn_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "c3d"
    shutil.copytree(BUNDLE, bundle)
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["network_def"] = {"_target_": "lus_pacs.families.b_lines.network.C3DAttention"}
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match="C3DAttention"):
        CnnEncoder.load(bundle)


def test_cnn_encoder_sees_frames_as_the_b_line_model_does(encoder: CnnEncoder) -> None:
    cine = _cine(_scene(7, frames=30))
    windows, _ = b_line_windows(cine, 30.0)
    with torch.inference_mode():
        expected = encoder.network(windows[0, 0, :, None]).numpy()
    np.testing.assert_allclose(encoder(cine), expected, atol=1e-6)
