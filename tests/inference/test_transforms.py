"""Model inputs from a Cine: shapes, ranges, geometry and the way back to the source image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lus_pacs.domain import Cine, FrameTiming, Region, RegionSource, SourceRef
from lus_pacs.inference import transforms
from lus_pacs.inference.transforms import (
    SEVERITY_SIZE,
    CropTissue,
    CropTissued,
    FitAndPad,
    FitAndPadd,
    TemporalWindows,
    b_line_windows,
    box_to_source,
    severity_frames,
    to_source_geometry,
)

SOURCE = SourceRef(
    sop_instance_uid="1.2.3.4",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1",
    series_instance_uid="1.2.3",
    study_instance_uid="1.2",
    patient_id="TEST",
    zone="R1",
)


def _cine(frames: np.ndarray, region: Region | None = None, fps: float | None = 30.0) -> Cine:
    rows, cols = frames.shape[1:]
    return Cine(
        frames=frames,
        timing=FrameTiming(fps, "FrameTime" if fps else "none"),
        region=region or Region(0, 0, cols, rows, RegionSource.WHOLE),
        source=SOURCE,
    )


def _numbered(n: int, rows: int = 40, cols: int = 50) -> np.ndarray:
    """Frames whose every pixel holds the frame's 0-based index."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, rows, cols)).copy()


def test_crop_tissue_is_the_region_in_unit_range() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 48, 64), dtype=np.uint8)
    cine = _cine(frames, Region(8, 4, 40, 44, RegionSource.IMAGE))
    out = CropTissue()(cine)
    assert out.shape == (1, 5, 40, 32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], frames[:, 4:44, 8:40] / 255, rtol=1e-6)
    chosen = CropTissue(frames=[3, 1])(cine)
    np.testing.assert_array_equal(chosen[0], out[0, [2, 0]])
    assert CropTissued(keys="image")({"image": cine})["image"].shape == (1, 5, 40, 32)


@pytest.mark.parametrize("frames", [[0], [6], []])
def test_frame_numbers_are_one_based(frames: list[int]) -> None:
    cine = _cine(_numbered(5))
    with pytest.raises(ValueError, match="Frame"):
        CropTissue(frames)(cine)


def test_windows_cover_every_frame_and_overlap_by_a_fifth() -> None:
    windows, starts = TemporalWindows(fps=30)(_numbered(90, 4, 4)[None].astype(np.float32))
    assert windows.shape == (4, 1, 30, 4, 4)
    assert starts == [0, 24, 48, 60]  # stride 24 = 30 - 20 %, the last aligned to the end
    for window, start in zip(windows, starts, strict=True):
        assert window[0, :, 0, 0].tolist() == list(range(start, start + 30))
    covered = set().union(*(range(s, s + 30) for s in starts))
    assert covered == set(range(90))


@pytest.mark.parametrize(("n", "fps", "expected"), [(30, 30.0, [0]), (31, 30.0, [0, 1])])
def test_window_starts_at_the_edges(n: int, fps: float, expected: list[int]) -> None:
    assert TemporalWindows(fps).starts(n) == expected


def test_short_clip_repeats_its_last_frame() -> None:
    windows, starts = TemporalWindows(fps=30)(_numbered(12, 4, 4)[None].astype(np.float32))
    assert windows.shape == (1, 1, 30, 4, 4)
    assert starts == [0]
    assert windows[0, 0, :, 0, 0].tolist() == list(range(12)) + [11] * 18


@pytest.mark.parametrize(("fps", "overlap"), [(0.0, 0.2), (30.0, 1.0), (30.0, -0.1)])
def test_windows_refuse_impossible_settings(fps: float, overlap: float) -> None:
    with pytest.raises(ValueError, match="TemporalWindows"):
        TemporalWindows(fps, overlap=overlap)


def test_b_line_windows() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (90, 120, 160), dtype=np.uint8)
    windows, starts = b_line_windows(_cine(frames), default_fps=10.0)
    assert isinstance(windows, torch.Tensor)
    assert windows.shape == (4, 1, 30, 64, 64)
    assert windows.dtype == torch.float32
    assert 0.0 <= float(windows.min()) <= float(windows.max()) <= 1.0
    assert starts == [1, 25, 49, 61]  # 1-based frame numbers
    # Without a frame rate in the file the default sets the window length.
    windows, starts = b_line_windows(_cine(frames, fps=None), default_fps=10.0)
    assert windows.shape == (11, 1, 10, 64, 64)
    assert starts[-1] == 81


def test_severity_frames_shape_range_and_padding() -> None:
    frames = np.random.default_rng(2).integers(10, 256, (6, 160, 200), dtype=np.uint8)
    cine = _cine(frames, Region(20, 10, 150, 140, RegionSource.IMAGE))  # 130 x 130 tissue
    out = severity_frames(cine)
    assert out.shape == (6, 1, *SEVERITY_SIZE)
    assert out.dtype == torch.float32
    assert -1.0 <= float(out.min()) <= float(out.max()) <= 1.0
    # The square tissue fills 200 x 200, centred: 30 padded columns each side, at -1.
    assert torch.all(out[..., :30] == -1)
    assert torch.all(out[..., 230:] == -1)
    assert torch.all(out[..., 1:-1, 31:229] > -1)  # the content is never black
    torch.testing.assert_close(severity_frames(cine, [5, 2]), out[[4, 1]])


def test_severity_frames_keep_the_aspect_ratio() -> None:
    frames = np.zeros((1, 120, 240), np.uint8)
    frames[0, 40:80, 100:140] = 255
    out = severity_frames(_cine(frames))[0, 0]
    ys, xs = torch.nonzero(out > 0, as_tuple=True)
    height = int(ys.max() - ys.min()) + 1
    width = int(xs.max() - xs.min()) + 1
    assert abs(height - width) <= 1
    assert height == pytest.approx(40 * 260 / 240, abs=2)  # scaled by the limiting side


def test_label_map_round_trip_to_the_source_image() -> None:
    rows, cols = 220, 340
    region = Region(30, 12, 330, 162, RegionSource.IMAGE)  # 150 x 300 tissue
    cine = _cine(np.zeros((1, rows, cols), np.uint8), region)
    y, x = np.mgrid[0 : region.height, 0 : region.width]
    labels = ((y // 16 + x // 16) % 4).astype(np.uint8)
    fitted = FitAndPad(SEVERITY_SIZE, mode="nearest-exact")(labels[None])
    assert fitted.shape == (1, *SEVERITY_SIZE)
    back = to_source_geometry(fitted[0].numpy().astype(np.uint8), cine, background=4)
    assert back.shape == (rows, cols)
    assert back.dtype == np.uint8
    inside = back[region.y0 : region.y1, region.x0 : region.x1]
    assert (inside == labels).mean() > 0.95
    outside = np.ones((rows, cols), bool)
    outside[region.y0 : region.y1, region.x0 : region.x1] = False
    assert np.all(back[outside] == 4)


def test_round_trip_keeps_wide_label_dtypes() -> None:
    cine = _cine(np.zeros((1, 90, 70), np.uint8))
    mask = np.full(SEVERITY_SIZE, 7, np.int64)
    back = to_source_geometry(mask, cine)
    assert back.dtype == np.int64
    assert back.shape == (90, 70)
    assert np.all(back == 7)


def test_dictionary_fit_moves_image_and_label_together() -> None:
    image = np.random.default_rng(3).random((1, 100, 50)).astype(np.float32)
    label = np.zeros((1, 100, 50), np.uint8)
    label[0, 20:60, 10:30] = 2
    out = FitAndPadd(["image", "label"], SEVERITY_SIZE, mode=("bilinear", "nearest-exact"))(
        {"image": image, "label": label}
    )
    assert out["image"].shape == out["label"].shape == (1, *SEVERITY_SIZE)
    assert set(torch.unique(out["label"]).tolist()) == {0, 2}
    # 100 x 50 fits as 200 x 100: 80 padded columns each side.
    assert torch.all(out["image"][..., :80] == 0)
    assert torch.all(out["image"][..., 180:] == 0)


def test_a_box_in_model_geometry_maps_onto_the_same_source_pixels() -> None:
    rows, cols = 300, 400
    region = Region(50, 20, 350, 280, RegionSource.IMAGE)  # 300 wide, 260 high
    frame = np.zeros((rows, cols), np.uint8)
    frame[100:160, 150:250] = 255  # a bright block inside the tissue
    cine = _cine(frame[None], region)
    fitted = severity_frames(cine)[0, 0].numpy()
    ys, xs = np.nonzero(fitted > 0.0)
    box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    x0, y0, x1, y1 = box_to_source(box, cine)
    assert abs(x0 - 150) <= 2
    assert abs(x1 - 250) <= 2
    assert abs(y0 - 100) <= 2
    assert abs(y1 - 160) <= 2
    # The whole model frame is the whole tissue region.
    assert box_to_source((0, 0, 260, 200), cine) == (50, 20, 350, 280)


def test_pre_processing_in_chunks_of_frames_equals_the_whole_cine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks bound the memory of a long cine (issue 19, case 5); the models' input is the same.
    frames = np.random.default_rng(5).integers(0, 256, (37, 90, 120), dtype=np.uint8)
    cine = _cine(frames, Region(10, 5, 110, 85, RegionSource.IMAGE))
    monkeypatch.setattr(transforms, "CHUNK_FRAMES", 1000)
    windows = transforms.b_line_windows(cine, 30.0)
    monkeypatch.setattr(transforms, "CHUNK_FRAMES", 4)
    assert len(transforms.frame_chunks(cine.n_frames)) == 10
    chunked = transforms.b_line_windows(cine, 30.0)
    assert chunked[1] == windows[1]
    torch.testing.assert_close(chunked[0], windows[0], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "region"),
    [
        ((12, 480, 640), Region(40, 30, 600, 470, RegionSource.IMAGE)),  # shrunk, padded rows
        ((3, 90, 120), Region(10, 5, 110, 85, RegionSource.IMAGE)),  # enlarged
        ((2, 700, 301), None),  # narrow: padded columns, an odd remainder
    ],
)
def test_paper_003_input_is_the_monai_transform_chain(
    shape: tuple[int, int, int], region: Region | None
) -> None:
    """severity_frames writes out CropTissue, FitAndPad and ScaleIntensityRange frame by frame:
    the same numbers as the chain of MONAI transforms."""
    from monai.transforms import Compose, ScaleIntensityRange, SqueezeDim

    frames = np.random.default_rng(9).integers(0, 256, shape, dtype=np.uint8)
    cine = _cine(frames, region)
    wanted = [shape[0], 1, shape[0], *range(1, shape[0] + 1)]
    chain = Compose(
        [
            CropTissue(wanted),
            SqueezeDim(dim=0),
            FitAndPad(SEVERITY_SIZE),
            ScaleIntensityRange(a_min=0.0, a_max=1.0, b_min=-1.0, b_max=1.0),
        ]
    )
    reference = torch.as_tensor(chain(cine), dtype=torch.float32)[:, None]
    torch.testing.assert_close(severity_frames(cine, wanted), reference, rtol=0, atol=0)
    torch.testing.assert_close(severity_frames(cine), reference[3:], rtol=0, atol=0)


@pytest.mark.parametrize(
    ("shape", "size"),
    [
        ((1, 480, 640), (195, 260)),  # a 640 x 480 cine into paper 003's input
        ((2, 1080, 1920), (146, 260)),  # HD, two frames as channels
        ((1, 480, 300), (200, 125)),  # narrow: rows shrink more than columns
        ((1, 150, 640), (61, 260)),  # columns shrink more
        ((1, 100, 130), (200, 260)),  # enlarged: no smoothing
    ],
)
def test_the_fast_anti_aliased_resize_is_monais(
    shape: tuple[int, int, int], size: tuple[int, int]
) -> None:
    """anti_aliased_resize gives MONAI's Resize(bilinear, anti_aliasing) within 1e-5."""
    from monai.transforms import Resize

    image = torch.from_numpy(np.random.default_rng(3).random(shape, dtype=np.float32))
    reference = torch.as_tensor(Resize(size, mode="bilinear", anti_aliasing=True)(image))
    fast = transforms.anti_aliased_resize(image, size)
    assert fast.shape == reference.shape
    assert float((fast - reference).abs().max()) < 1e-5


@pytest.mark.parametrize(
    ("shape", "region"),
    [
        ((5, 480, 640), Region(40, 30, 600, 470, RegionSource.IMAGE)),  # shrunk
        ((3, 50, 40), None),  # enlarged
        ((2, 700, 301), None),  # narrow
    ],
)
def test_paper_001_input_is_the_monai_transform_chain(
    shape: tuple[int, int, int], region: Region | None
) -> None:
    """b_line_windows writes out CropTissue and an area Resize to 64 x 64: the same numbers as
    the chain of MONAI transforms."""
    from monai.transforms import Compose, Resize

    frames = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)
    cine = _cine(frames, region, fps=2.0)
    chain = Compose([CropTissue(), Resize((-1, 64, 64), mode="area")])
    reference = torch.as_tensor(chain(cine), dtype=torch.float32)
    windows, starts = b_line_windows(cine, 30.0)
    expected, expected_starts = TemporalWindows(2.0)(reference)
    assert starts == [s + 1 for s in expected_starts]
    torch.testing.assert_close(windows, torch.as_tensor(expected), rtol=0, atol=0)
