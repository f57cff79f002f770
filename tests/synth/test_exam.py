"""The simulator: valid DICOM, deterministic pixels, and truth that matches what is drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from lus_pacs.imaging.writer import CineSyntax
from lus_pacs.synth.exam import SynthOptions, synthesize
from lus_pacs.synth.render import BACKGROUND
from tests.tools import dciodvfy_errors


def _grey(path: Path, step: int = 1) -> np.ndarray:
    """Reference luminance with pydicom alone (independent of the project's reader), of every
    ``step``-th frame."""
    ds = pydicom.dcmread(path)
    rgb = ds.pixel_array[::step].astype(np.float32)
    return np.rint(rgb @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)


def _cines(root: Path) -> list[tuple[Path, dict]]:
    return [
        (p.with_name(p.name.replace(".truth.json", ".dcm")), json.loads(p.read_text()))
        for p in sorted(root.glob("*/*.truth.json"))
    ]


def test_three_studies_of_six_zones_pass_dciodvfy(synth_exams: Path) -> None:
    files = sorted(synth_exams.glob("*/*.dcm"))
    assert len(files) == 18
    studies = {pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID for f in files}
    assert len(studies) == 3
    for f in files:
        assert dciodvfy_errors(f) == [], f


def test_written_as_a_scanner_would(synth_exams: Path) -> None:
    ds = pydicom.dcmread(next(synth_exams.glob("*/R1.dcm")))
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.SOPClassUID == pydicom.uid.UltrasoundMultiFrameImageStorage
    assert float(ds.FrameTime) == pytest.approx(1000 / 30, rel=1e-4)
    assert ds.SeriesDescription == "Lung R1"
    region = ds.SequenceOfUltrasoundRegions[0]
    assert (region.RegionSpatialFormat, region.RegionDataType) == (1, 1)
    # Burned-in text and scale lie outside the tissue region.
    frame = _grey(next(synth_exams.glob("*/R1.dcm")))[0]
    outside = np.ones_like(frame, bool)
    outside[
        region.RegionLocationMinY0 : region.RegionLocationMaxY1 + 1,
        region.RegionLocationMinX0 : region.RegionLocationMaxX1 + 1,
    ] = False
    assert (frame[outside] > 100).sum() > 200


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path: Path) -> None:
    def make(folder: str, seed: int) -> list[np.ndarray]:
        opts = SynthOptions(patients=1, seed=seed, frames=6, syntax=CineSyntax.RLE)
        records = synthesize(tmp_path / folder, opts)
        return [pydicom.dcmread(r.dicom).pixel_array for r in records]

    a, b, c = make("a", 5), make("b", 5), make("c", 6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_b_line_frames_brighter_in_vertical_bands_below_pleura(linear_exams: Path) -> None:
    contrast: dict[bool, list[float]] = {True: [], False: []}
    for dicom, truth in _cines(linear_exams):
        frames = _grey(dicom)
        r, cmpp = truth["region"], truth["cm_per_pixel"]
        # Rows from 1 cm below the pleura to the bottom: only B-lines cross them vertically.
        top = r["y0"] + round((truth["pleura_depth_cm"] + 1.0) / cmpp)
        for f in truth["frames"]:
            if f["severity"] is None or f["consolidation_boxes"] or f["effusion_box"]:
                continue
            band = frames[f["frame"] - 1, top : r["y1"], r["x0"] : r["x1"]].astype(np.float32)
            columns = np.convolve(band.mean(axis=0), np.ones(5) / 5, mode="valid")
            lit = columns[columns > 8]  # columns outside rib shadows
            if lit.size:
                contrast[f["b_line_count"] > 0].append(float(lit.max() - np.median(lit)))
    assert len(contrast[True]) > 10
    assert len(contrast[False]) > 10
    assert np.median(contrast[True]) > 2 * np.median(contrast[False])
    # Frame by frame: a B-line frame's band stands out more than nearly every free frame's.
    threshold = np.percentile(contrast[False], 90)
    assert np.mean(np.array(contrast[True]) > threshold) > 0.8


def test_masks_line_up_with_drawn_structures(synth_exams: Path) -> None:
    means: dict[int, list[float]] = {c: [] for c in range(5)}
    for dicom, truth in _cines(synth_exams):
        frames = _grey(dicom, step=10)  # the frames compared below
        masks = np.load(dicom.with_name(truth["mask_file"]))["masks"]
        assert masks.shape == (truth["n_frames"], *frames.shape[1:])
        assert pydicom.dcmread(dicom, stop_before_pixels=True).NumberOfFrames == len(masks)
        r = truth["region"]
        outside = np.ones(masks.shape[1:], bool)
        outside[r["y0"] : r["y1"], r["x0"] : r["x1"]] = False
        assert (masks[:, outside] == BACKGROUND).all()
        cmpp = truth["cm_per_pixel"]
        lung_top = r["y0"] + round((truth["pleura_depth_cm"] + 0.3) / cmpp)
        for i, k in enumerate(range(0, len(masks), 10)):
            for c in range(4):
                sel = masks[k] == c
                if sel.sum() > 50:
                    means[c].append(frames[i][sel].mean())
            lung_bg = (masks[k] == BACKGROUND) & (frames[i] > 0)
            lung_bg[:lung_top] = False
            means[BACKGROUND].append(frames[i][lung_bg].mean())
            for x0, y0, x1, y1 in truth["frames"][k]["consolidation_boxes"]:
                inside = masks[k, y0:y1, x0:x1]
                assert np.isin(inside, (2, 3)).mean() > 0.3
    background = np.mean(means[BACKGROUND])
    # Pleura and A-lines, B-lines and white lung are brighter than the air below the pleura.
    assert np.mean(means[0]) > background + 25
    assert np.mean(means[1]) > background + 25
    assert np.mean(means[3]) > background + 25
    # Consolidation is tissue, not air and not artefact: brighter than air, darker than B-lines.
    assert background + 10 < np.mean(means[2]) < np.mean(means[1]) - 10


def test_truth_is_consistent(synth_exams: Path) -> None:
    for _dicom, truth in _cines(synth_exams):
        frames = truth["frames"]
        assert [f["frame"] for f in frames] == list(range(1, truth["n_frames"] + 1))
        scores = [f["severity"] for f in frames if f["severity"] is not None]
        assert truth["clip"]["severity"] == max(scores)
        assert truth["clip"]["b_lines"] == any(f["b_line_count"] for f in frames)
        best = frames[truth["best_frame"] - 1]
        assert best["high_value"] or not any(f["high_value"] for f in frames)
        for f in frames:
            if f["high_value"]:
                assert f["contact"]
                assert not f["rib_shadow_over_pleura"]


def test_montage_has_a_row_per_severity(synth_exams: Path) -> None:
    sheet = np.asarray(Image.open(synth_exams / "montage.png"))
    assert sheet.shape[0] == 4 * 240
    rows = sheet.reshape(4, 240, *sheet.shape[1:])
    assert all(row.mean() > 5 for row in rows[:3])


def test_the_sample_cine_is_the_patients_most_severe_zone(tmp_path: Path) -> None:
    from lus_pacs.synth.exam import sample_cine

    path = sample_cine(tmp_path, frames=12)
    truth = json.loads(path.with_name(path.stem + ".truth.json").read_text())
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(ds.NumberOfFrames) == 12
    # The default patient's most severe zone shows what every model family looks for.
    assert truth["clip"]["severity"] == 3
    assert truth["clip"]["b_lines"]
    assert truth["clip"]["consolidation"]
    assert dciodvfy_errors(path) == []
