"""The tissue region found from pixels: against the simulator's declared region and real clips."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from lus_pacs.domain import RegionSource
from lus_pacs.imaging.region import find_tissue_region
from lus_pacs.imaging.writer import CineSyntax
from lus_pacs.ingest.video import read_video
from lus_pacs.synth.exam import SynthOptions, synthesize
from lus_pacs.synth.geometry import Probe, ProbeGeometry

Box = tuple[int, int, int, int]
"""x0, y0, x1, y1, ends exclusive."""


@dataclass(frozen=True)
class Simulated:
    grey: np.ndarray
    region: Box
    """As the simulator declares it (SequenceOfUltrasoundRegions)."""
    sector: np.ndarray
    """The field of view: where the tissue is drawn."""


def _iou(a: Box, b: Box) -> float:
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / (area - inter)


def _box(frames: np.ndarray, moving: bool) -> tuple[Box, RegionSource, np.ndarray]:
    region, overlay, seen_moving = find_tissue_region(frames)
    assert seen_moving is moving
    assert region.cm_per_pixel_x is None
    assert region.cm_per_pixel_y is None
    assert overlay.shape == frames.shape[1:]
    assert overlay.dtype == np.bool_
    return (region.x0, region.y0, region.x1, region.y1), region.source, overlay


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb])


@pytest.fixture(
    scope="module",
    params=[
        (Probe.CONVEX, CineSyntax.EXPLICIT),
        (Probe.LINEAR, CineSyntax.EXPLICIT),
        (Probe.CONVEX, CineSyntax.JPEG),
    ],
    ids=lambda p: f"{p[0].value}-{p[1].value}",
)
def simulated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[Simulated]:
    probe, syntax = request.param
    out = tmp_path_factory.mktemp(f"region-{probe.value}")
    options = SynthOptions(patients=1, seed=3, frames=20, syntax=syntax, probe=probe)
    cines = []
    for record in synthesize(out, options):
        truth = json.loads(record.truth.read_text())
        grey = _grey(pydicom.dcmread(record.dicom).pixel_array)
        r = truth["region"]
        geom = ProbeGeometry.make(probe, truth["rows"], truth["cols"], truth["depth_cm"])
        cines.append(Simulated(grey, (r["x0"], r["y0"], r["x1"], r["y1"]), geom.fov_mask))
    return cines


def test_region_matches_the_declared_one(simulated: list[Simulated]) -> None:
    for cine in simulated:
        box, source, _ = _box(cine.grey, moving=True)
        assert source is RegionSource.IMAGE
        assert _iou(box, cine.region) > 0.9, (box, cine.region)


def test_overlay_mask_is_the_burned_in_text(simulated: list[Simulated]) -> None:
    for cine in simulated:
        _, _, overlay = _box(cine.grey, moving=True)
        x0, y0, x1, y1 = cine.region
        outside = np.ones_like(overlay)
        outside[y0:y1, x0:x1] = False
        drawn = (cine.grey[0] > 100) & outside
        n_drawn, n_sector = int(drawn.sum()), int(cine.sector.sum())
        assert n_drawn > 200  # the text is there to be found
        assert int((overlay & drawn).sum()) > 0.9 * n_drawn
        assert int((overlay & cine.sector).sum()) < 0.001 * n_sector


def test_single_frame_gives_the_bright_sector(simulated: list[Simulated]) -> None:
    for cine in simulated:
        box, source, overlay = _box(cine.grey[:1], moving=False)
        assert source is RegionSource.IMAGE
        assert _iou(box, cine.region) > 0.9, (box, cine.region)
        assert not overlay.any()  # one frame cannot tell text from tissue


def test_frozen_loop_falls_back_to_the_bright_sector(simulated: list[Simulated]) -> None:
    cine = simulated[0]
    box, source, overlay = _box(np.repeat(cine.grey[:1], 12, axis=0), moving=False)
    assert source is RegionSource.IMAGE
    assert _iou(box, cine.region) > 0.9
    assert not overlay.any()


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_or_constant_cine_is_the_whole_image(level: int) -> None:
    frames = np.full((10, 48, 64), level, np.uint8)
    box, source, overlay = _box(frames, moving=False)
    assert source is RegionSource.WHOLE
    assert box == (0, 0, 64, 48)
    assert not overlay.any()


def test_small_moving_spot_is_not_a_region() -> None:
    rng = np.random.default_rng(0)
    frames = np.zeros((10, 100, 100), np.uint8)
    frames[:, 40:60, 40:60] = rng.integers(0, 255, (10, 20, 20), dtype=np.uint8)  # 4 % of it
    _, source, _ = _box(frames, moving=False)
    assert source is RegionSource.WHOLE


def test_rejects_frames_that_are_not_grey_uint8() -> None:
    with pytest.raises(ValueError, match="uint8 frames of shape"):
        find_tissue_region(np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8 frames of shape"):
        find_tissue_region(np.zeros((3, 48, 64), np.float32))


def test_fast_on_a_long_vga_cine(simulated: list[Simulated]) -> None:
    frames = np.concatenate([simulated[0].grey] * 6)  # 120 x 480 x 640
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        find_tissue_region(frames)
        best = min(best, time.perf_counter() - start)
    assert best < 0.1


# Real clips: dark far fields, an anechoic band splitting the image, GIF palettes, a linear probe.
POCUS_CLIPS = (
    "Cov-Atlas-Day+3.gif",
    "Cov_combatting_Image2.mp4",
    "Pneu_northumbria_0409_set1_vid1.avi",
    "Reg_pat3Image_135128.mpeg",
    "Reg_Image_181206_crop.mp4",
    "Vir_liftl_H1N1_case2_clip1.mp4",
)


def _on_a_screen(grey: np.ndarray, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
    """The clip on a black scanner screen with burned-in text and a depth scale; the text."""
    n, rows, cols = grey.shape
    layer = np.zeros((rows + top + 40, cols + left + 60), np.uint8)
    for i, line in enumerate(["POCUS  Lung", "C5-2  3.5MHz", "D 16cm  G 52", "MI 0.9 TIs 0.1"]):
        cv2.putText(layer, line, (4, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 230, 1)
    for tick in range(top, top + rows, 20):
        cv2.line(layer, (left + cols + 10, tick), (left + cols + 18, tick), 200, 1)
    screen = np.repeat(layer[None], n, axis=0)
    screen[:, top : top + rows, left : left + cols] = grey
    return screen, layer > 100


@pytest.mark.pocus
@pytest.mark.parametrize("name", POCUS_CLIPS)
def test_real_clip_region(pocus_dir: Path, name: str) -> None:
    grey = _grey(read_video(pocus_dir / "videos" / name).frames)
    _, rows, cols = grey.shape
    box, source, overlay = _box(grey, moving=True)
    assert source is RegionSource.IMAGE
    area = (box[2] - box[0]) * (box[3] - box[1])
    assert 0.15 * rows * cols <= area <= rows * cols
    # Whatever the clip shows that stays put is a sliver of the region, not the region.
    assert overlay[box[1] : box[3], box[0] : box[2]].sum() < 0.02 * area

    # The same clip as a scanner screen shows it: the region moves with it, the text is overlay.
    top, left = 80, 150
    screen, text = _on_a_screen(grey, top, left)
    on_screen, source, overlay = _box(screen, moving=True)
    assert source is RegionSource.IMAGE
    shifted = (box[0] + left, box[1] + top, box[2] + left, box[3] + top)
    assert _iou(on_screen, shifted) > 0.9, (on_screen, shifted)
    assert (overlay & text).sum() > 0.9 * text.sum()
    x0, y0, x1, y1 = on_screen
    assert not text[y0:y1, x0:x1].any()
